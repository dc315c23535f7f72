"""The event loop the async Fluss client runs on: one daemon thread per process.

The client is async and the store API is sync: a put may come from a coroutine
of a running loop, so the client runs on its own loop, in its own thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import time
from collections.abc import Awaitable

__all__ = ["background_loop", "detach"]

_EXIT_GRACE_S = 0.05

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_PID = 0
_LOOP_LOCK = threading.Lock()
_DETACHED: set[asyncio.Future[None]] = set()  # tasks nothing awaits, kept referenced


def background_loop() -> asyncio.AbstractEventLoop:
    """The event loop (in a daemon thread) that every Fluss store of this process uses.

    A forked child gets a loop of its own; the loop is stopped at interpreter exit.
    """
    global _LOOP, _LOOP_PID
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP_PID != os.getpid():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="actionstate-fluss",
                                      daemon=True)
            thread.start()
            atexit.register(_stop_loop, loop, thread)
            _LOOP, _LOOP_PID = loop, os.getpid()
        return _LOOP


def detach(work: Awaitable[None]) -> None:
    """Run ``work`` on the current (background) loop without awaiting it."""
    task = asyncio.ensure_future(work)
    _DETACHED.add(task)
    task.add_done_callback(_DETACHED.discard)


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """At exit: stop the loop, then give the client's threads a moment to leave Python.

    pyfluss completes a future from one of its own threads, which calls back into
    Python; if the interpreter is already finalizing when that thread wants the GIL
    back, CPython ends the thread with ``pthread_exit`` and the process aborts.
    """
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(loop.stop)
    thread.join(1.0)
    time.sleep(_EXIT_GRACE_S)
