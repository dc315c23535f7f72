"""How the local runner lets finished inputs' outputs and event log lines leave.

In ``sync`` durability (and on ``memory://``) at once; in ``group`` durability
held until the store commit that covers their recorded work. The store's flush
(a commit) is timed here too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actionstate.connectors.base import Sink
from actionstate.durable.chain import ChainSettings
from actionstate.stores.base import ActionStateStore

__all__ = ["Outputs"]


class Outputs:
    """The outputs and event log lines of finished inputs, on their way to the sink
    and the event log (``settings.event_log``), in order."""

    def __init__(self, store: ActionStateStore, sink: Sink, settings: ChainSettings) -> None:
        self._store, self._sink, self._settings = store, sink, settings
        self._stats = settings.stats
        # Finished inputs waiting for the next group commit, in order, and those of the
        # group commit in progress.
        self._held: list[_Finished] = []
        self._committing: list[_Finished] = []

    def emit(self, outputs: list[tuple[str, Any]], events: list[str]) -> None:
        """A finished input's ``(key, output)`` pairs and event log lines leave (in
        ``group`` durability once its records are durable)."""
        finished = _Finished(outputs, events)
        if self._store.durability == "group":
            self._held.append(finished)
        else:
            self._release([finished])

    def commit_group(self) -> None:
        """Make recorded work durable, then release the outputs that depend on it."""
        with self._settings.lock:
            self._flush()
        self._release(self._committing + self._held)
        self._committing, self._held = [], []

    async def commit_group_off_loop(self) -> None:
        """:meth:`commit_group` with the commit on a worker thread: the keys go on while
        it waits for the disk. The outputs held now wait for it; later ones, for the next."""
        self._committing, self._held = self._held, []
        finish = self.flush_begin(write_now=False)  # SQLite writes and commits off the loop
        if finish is not None:  # it must run: the store waits for it
            try:
                waiting = asyncio.get_running_loop().run_in_executor(None, finish)
            except RuntimeError:  # the default executor is shut down: wait here
                finish()
            else:
                # Shielded: cancelling the ticker must not cancel the COMMIT before a
                # thread takes it (the store would stay held, and the final flush wait).
                await asyncio.shield(waiting)  # puts go on meanwhile; a flush waits for it
        self._release(self._committing)
        self._committing = []

    def _release(self, inputs: list[_Finished]) -> None:
        """Write the outputs of finished inputs, then their event log lines, in order."""
        outputs = [pair for finished in inputs for pair in finished.outputs]
        if outputs:
            self._sink.write(outputs)
            self._stats.outputs += len(outputs)
        self._settings.event_log.write([line for finished in inputs for line in finished.events])

    def _flush(self) -> None:
        """The store's flush (a commit), timed."""
        started = time.perf_counter_ns()
        self._store.flush()
        self._stats.observe("store_flush_us", (time.perf_counter_ns() - started) // 1000)

    def flush_begin(self, *, write_now: bool = True) -> Callable[[], None] | None:
        """The store's flush in two parts (a commit's writes, then its wait), timed."""
        started = time.perf_counter_ns()
        finish = self._store.flush_begin(write_now=write_now)
        if finish is None:
            self._stats.observe("store_flush_us", (time.perf_counter_ns() - started) // 1000)
            return None

        def timed() -> None:
            try:
                finish()
            finally:
                self._stats.observe("store_flush_us",
                                    (time.perf_counter_ns() - started) // 1000)
        return timed


@dataclass(frozen=True, slots=True)
class _Finished:
    """A finished input's ``(key, output)`` pairs and event log lines, which leave
    together (in ``group`` durability, after the commit that covers them)."""

    outputs: list[tuple[str, Any]]
    events: list[str]
