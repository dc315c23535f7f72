"""What a Python worker runs beside its operators: the event loop the inputs in flight run
on (:class:`WorkerLoop`) and the job's ``--env`` values (:func:`job_environment`)."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import Future
from typing import Any

from actionstate.durable.chain import ChainSettings
from actionstate.durable.threads import ActionThreads, SyncCommitter
from actionstate.stores.base import ActionStateStore

__all__ = ["WorkerLoop", "job_environment"]


class WorkerLoop:
    """A worker's event loop on a thread of its own: the inputs in flight run there
    (``def`` actions on a pool as large as the inputs in flight) while the operator's
    thread takes elements and timers."""

    def __init__(self, store: ActionStateStore, settings: ChainSettings,
                 concurrency: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="actionstate-flink-loop")
        self.thread.start()
        settings.threads = ActionThreads(concurrency)
        if store.durability == "sync" and not store.url.startswith("memory://"):
            settings.committer = self.call(self._committer(store)).result()
        self.settings = settings

    async def _committer(self, store: ActionStateStore) -> SyncCommitter:
        return SyncCommitter(store.flush_begin, asyncio.get_running_loop())

    def _stop(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.stop()

    def call(self, coroutine: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        settings = self.settings
        settings.lock.close()  # an input still running stops at its next durable step
        if settings.committer is not None:
            self.loop.call_soon_threadsafe(settings.committer.close)
        self.loop.call_soon_threadsafe(self._stop)
        self.thread.join(timeout=5)
        if settings.threads is not None:
            settings.threads.shutdown(wait=False)  # an abandoned call may hang
        if not self.thread.is_alive():
            self.loop.close()


_SET_BY_JOB: dict[str, str | None] = {}
"""What the last job's ``--env`` changed in this Python worker: name -> the value before."""


def job_environment(values: dict[str, str]) -> None:
    """Set a job's ``--env`` values in this worker, after undoing the last job's (a worker
    may serve several jobs: one job's keys or URLs must not reach the next)."""
    for name, before in _SET_BY_JOB.items():
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
    _SET_BY_JOB.clear()
    for name, value in values.items():
        _SET_BY_JOB[name] = os.environ.get(name)
        os.environ[name] = value
