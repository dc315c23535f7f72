"""The local runner's asyncio plumbing: stop signals, a task group's first error."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

__all__ = ["first_error", "install_signals", "remove_signals"]


def install_signals(stop: Callable[[str], None]) -> list[signal.Signals]:
    """SIGTERM and Ctrl-C stop the run gracefully (when running in the main thread)."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop, sig.name)
        except (ValueError, RuntimeError, NotImplementedError):
            continue  # not the main thread: the caller stops the run with stop()
        installed.append(sig)
    return installed


def remove_signals(signals: list[signal.Signals]) -> None:
    """Undo :func:`install_signals`."""
    loop = asyncio.get_running_loop()
    for sig in signals:
        with contextlib.suppress(ValueError, RuntimeError):
            loop.remove_signal_handler(sig)


def first_error(group_error: BaseExceptionGroup[Any]) -> BaseException:
    """The first real error of a task group (not the cancellations it caused)."""
    for exc in group_error.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            found: BaseException = exc
            return found
    return group_error
