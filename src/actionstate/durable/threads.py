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
import contextvars
import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

__all__ = ["ActionThreads", "EngineLock", "SyncCommitter", "in_thread"]

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


async def in_thread(threads: Executor | None, fn: Callable[..., Any], *args: Any,
                    **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on ``threads`` (the loop's default executor if None), with the
    caller's context variables (the running call), awaited without blocking the loop."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(threads, call)


_RUN_ENDED = "the run ended: this abandoned action stops here"


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
            raise asyncio.CancelledError(_RUN_ENDED)
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def close(self) -> None:
        """Wait for the step in progress, then refuse every later one."""
        with self._lock:
            self._closed = True


class SyncCommitter:
    """``sync`` durability with shared commits: a durable call's record is put into the
    store's buffer, and the caller waits (on its thread, or awaiting) until a commit
    covers it. A commit covers every record put so far, so concurrent calls share an
    fsync. It starts on the event loop's thread (``begin``, the store's
    :meth:`~actionstate.stores.base.ActionStateStore.flush_begin`: SQLite writes the
    rows into a transaction there) and what only waits for the medium (the COMMIT
    and its fsync) runs on a thread of its own, so the loop and the other keys go on
    meanwhile. (A whole commit on another thread waited for the interpreter lock at
    each of its statements: 8 ms instead of 0.2; the COMMIT alone waits once.) One
    commit at a time; the next starts when it ends, with every record put meanwhile.
    A call returns only once its record is durable. A failed commit fails every call
    it was to cover, and every later one.
    """

    def __init__(self, begin: Callable[[], Callable[[], None] | None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self._begin = begin
        self._loop = loop
        self._loop_thread = threading.get_ident()  # made on the loop's thread
        self._cond = threading.Condition()
        self._issued = 0  # records put so far (tickets handed out)
        self._durable = 0  # tickets a finished commit covered
        self._error: BaseException | None = None
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []
        self._scheduled = False  # a commit is scheduled or running
        self._running = False  # a commit is running (begun, not finished)
        self._closed = False
        self._thread = ActionThreads(1, name="actionstate-commit")
        self.commits = 0

    def ticket(self) -> int:
        """Call right after putting a record (under the engine lock): its ticket."""
        with self._cond:
            self._issued += 1
            ticket, schedule = self._issued, not self._scheduled
            self._scheduled = True
        if schedule:
            self._schedule()
        return ticket

    def _schedule(self) -> None:
        try:
            if threading.get_ident() == self._loop_thread:
                self._loop.call_soon(self._commit)
            else:
                self._loop.call_soon_threadsafe(self._commit)
        except RuntimeError:  # the loop is closed: the run is over
            pass

    def wait(self, ticket: int) -> None:
        """Block until the record of ``ticket`` is durable (raise the commit's error).
        On the loop's thread (a sync call inside an ``async def`` action) it commits
        there: the loop cannot run the commits it would wait for."""
        on_loop = threading.get_ident() == self._loop_thread
        with self._cond:
            while self._durable < ticket and not self._closed and self._error is None:
                if on_loop and not self._running:
                    self._cond.release()
                    try:
                        self._commit(inline=True)
                    finally:
                        self._cond.acquire()
                else:
                    self._cond.wait()
            self._check(ticket)

    async def wait_async(self, ticket: int) -> None:
        """:meth:`wait` for a coroutine: the event loop goes on meanwhile."""
        with self._cond:
            if self._durable < ticket and not self._closed and self._error is None:
                future = asyncio.get_running_loop().create_future()
                self._waiting.append((ticket, future))
            else:
                future = None
        if future is not None:
            await future
        with self._cond:
            self._check(ticket)

    def _check(self, ticket: int) -> None:
        if self._error is not None:
            raise self._error
        if self._durable < ticket:  # closed first: the run ended without this commit
            raise asyncio.CancelledError(_RUN_ENDED)

    def close(self) -> None:
        """At the run's end (on the loop's thread): no more commits; a caller still
        waiting is told the run ended."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            waiting, self._waiting = self._waiting, []
        _wake([future for _, future in waiting])
        self._thread.shutdown(wait=False)

    def _commit(self, inline: bool = False) -> None:
        """Start a commit on the loop's thread, covering every record put so far; its
        wait runs on the commit thread (``inline``: here)."""
        with self._cond:
            if self._running or self._closed or self._error is not None:
                return  # the running commit schedules the next one when it ends
            target = self._issued
            if target <= self._durable:  # an earlier commit covered them
                self._scheduled = False
                return
            self._running = True
        try:
            finish = self._begin()  # every record put so far: at least those of the tickets
        except BaseException as exc:  # handed to every caller it was to cover
            self._finished(target, exc)
            return
        if finish is None:
            self._finished(target, None)
        elif inline:
            self._finish(finish, target)
        else:
            try:
                self._thread.submit(self._finish, finish, target)
            except RuntimeError:  # closed meanwhile: the COMMIT still runs (it holds the store)
                self._finish(finish, target)

    def _finish(self, finish: Callable[[], None], target: int) -> None:
        error: BaseException | None = None
        try:
            finish()
        except BaseException as exc:
            error = exc
        self._finished(target, error)

    def _finished(self, target: int, error: BaseException | None) -> None:
        """A commit ended (on any thread): wake the callers it covered, start the next."""
        with self._cond:
            self.commits += 1
            self._running = False
            if error is not None and self._error is None:
                self._error = error
            self._durable = max(self._durable, target)
            if self._error is not None:  # every caller learns it
                ready, self._waiting = [f for _, f in self._waiting], []
            else:
                ready = [f for t, f in self._waiting if t <= self._durable]
                self._waiting = [(t, f) for t, f in self._waiting if t > self._durable]
            self._cond.notify_all()
            more = (self._issued > self._durable and self._error is None
                    and not self._closed)
            self._scheduled = more
        _wake(ready)
        if more:  # every record put meanwhile joins the next commit
            self._schedule()


def _wake(futures: list[asyncio.Future[None]]) -> None:
    """Complete ``futures`` on their event loops: one wake-up per loop, not per future
    (at once for those of the loop running on this thread)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for future in futures:
        by_loop.setdefault(future.get_loop(), []).append(future)
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:  # a commit thread, an action's thread
        running = None
    for loop, batch in by_loop.items():
        if loop is running:
            _set_done(batch)
            continue
        try:
            loop.call_soon_threadsafe(_set_done, batch)
        except RuntimeError:  # the loop is closed: nobody waits for them any more
            pass


def _set_done(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)
