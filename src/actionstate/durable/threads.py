"""Threads for blocking work: plain ``def`` actions and sync durable calls.

A ``def`` action that calls a model blocks its thread for the whole request.
The runner runs such actions on :class:`ActionThreads`, a pool as large as the
number of inputs it keeps in flight, so that one slow call holds one input,
not the event loop. The workers are daemon threads: an action abandoned at a
stop (a hung model) does not hold the process open at exit.

The store, its index and the counters are shared by those threads and the
event loop's thread: every use of them holds the run's :class:`EngineLock`.
When the run ends the lock is closed, so an abandoned action still running on
a thread stops at its next durable step instead of using a closed store.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

__all__ = ["ActionThreads", "EngineLock"]

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class ActionThreads(Executor):
    """An executor of up to ``size`` daemon threads, started as work needs them."""

    def __init__(self, size: int, name: str = "actionstate-action") -> None:
        if size < 1:
            raise ValueError(f"a thread pool needs at least one thread, got {size}")
        self._size, self._name = size, name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the action thread pool is shut down")
            if self._idle == 0 and len(self._threads) < self._size:
                thread = threading.Thread(target=self._serve, daemon=True,
                                          name=f"{self._name}-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
            else:
                self._idle -= 1  # this work takes an idle thread
        self._work.put((future, fn, args, kwargs))
        return future

    def _serve(self) -> None:
        while True:
            work = self._work.get()
            if work is None:
                return
            future, fn, args, kwargs = work
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # handed to whoever waits on the future
                    future.set_exception(exc)
            del work, future, fn, args, kwargs
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the threads once their current work is done; ``wait=False`` does not
        wait for work that may never end (an abandoned call to a hung service)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    work = self._work.get_nowait()
                except queue.Empty:
                    break
                if work is not None:
                    work[0].cancel()
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()


class EngineLock:
    """The lock every use of one run's engine holds (re-entrant); closed at the run's
    end, after which entering it raises :class:`asyncio.CancelledError`."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = False

    def __enter__(self) -> EngineLock:
        self._lock.acquire()
        if self._closed:
            self._lock.release()
            raise asyncio.CancelledError("the run ended: this abandoned action stops here")
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def close(self) -> None:
        """Wait for the step in progress, then refuse every later one."""
        with self._lock:
            self._closed = True
