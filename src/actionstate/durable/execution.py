"""Call replay: matching durable calls against the record, and recording new ones.

One :class:`ActionContext` serves one action run. Each durable call takes the
next position. If the record has a call at that position with the same
function id and args digest, its outcome is returned (or its exception
raised) and the function is not called. A mismatch is non-determinism, handled
by the configured :data:`DivergencePolicy`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any, Literal, TypeVar, cast, get_args

from actionstate.context import RunnerContext
from actionstate.durable.calls import Step, function_id, function_info
from actionstate.durable.stats import RunStats
from actionstate.durable.threads import SyncCommitter, in_thread
from actionstate.errors import (
    ActionStateError,
    ConfigError,
    MemoryInCallError,
    NonDeterminismError,
)
from actionstate.events import Event
from actionstate.memory import MemoryObject
from actionstate.records.current import CURRENT_CALL
from actionstate.records.digests import args_digest
from actionstate.records.exceptions import decode_exception, encode_exception
from actionstate.records.state import (
    ActionState,
    CallRecord,
    CallResult,
    CallStatus,
    MemoryScope,
    MemoryUpdate,
    StateKey,
    TruncateRecord,
)
from actionstate.records.values import UnstorableValueError
from actionstate.retry import NO_RETRY, RetryPolicy
from actionstate.stores.base import ActionStateStore

__all__ = ["POLICIES", "ActionContext", "CallFailure", "DivergencePolicy"]

log = logging.getLogger("actionstate")
T = TypeVar("T")
DivergencePolicy = Literal["reexecute", "warn", "fail"]
RetryListener = Callable[[StateKey, int, str, int, BaseException, float], None]
"""Told of each retry: (state key, call position, function id, failed attempt, error, wait)."""
POLICIES: tuple[DivergencePolicy, ...] = get_args(DivergencePolicy)


@dataclass(frozen=True)
class CallFailure:
    """A durable call's failure raised to the action as the call's recorded outcome.

    Attributes:
        function_id: the call's function.
        exception: the exception raised to the action (the same object).
        retryable: recorded as retryable (a transient failure when the attempts ran
            out): the next run tries the call again. Else the next run replays it.
        attempts: how many attempts this run made; None when replayed from the record.
    """

    function_id: str
    exception: BaseException
    retryable: bool
    attempts: int | None = None

    def hint(self) -> str:
        """What a person can do about an action that let this failure propagate."""
        if self.retryable:
            tries = ("" if self.attempts is None else
                     f" after {self.attempts} attempt{'' if self.attempts == 1 else 's'}")
            return (f"call {self.function_id} failed transiently{tries} "
                    f"({type(self.exception).__name__}): run the same command again when "
                    "the service is back; it tries the call again and replays every call "
                    "that succeeded")
        return (f"this failure is call {self.function_id}'s recorded outcome (not retried): "
                "running the same command again replays it. To get past it, change the call "
                "(call another function or pass other arguments; with --divergence reexecute, "
                "the default, the changed call runs), catch the error in the action, or start "
                "over with a new --state")


class ActionContext(RunnerContext):
    """The engine's :class:`RunnerContext` for one action run."""

    def __init__(
        self,
        state_key: StateKey,
        state: ActionState | None,
        store: ActionStateStore,
        short_term: dict[str, Any],
        sensory: dict[str, Any],
        *,
        job: str,
        policy: DivergencePolicy = "reexecute",
        stats: RunStats | None = None,
        retry: RetryPolicy = NO_RETRY,
        on_retry: RetryListener | None = None,
        threads: Executor | None = None,
        lock: AbstractContextManager[Any] | None = None,
        committer: SyncCommitter | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"unknown divergence policy {policy!r}: use one of {POLICIES}")
        self._sk = state_key
        self._state = state
        self._store = store
        self._job = job
        self._policy = policy
        self.stats = stats if stats is not None else RunStats()
        self._put_us = self.stats.histograms["store_put_us"]
        self._retry = retry
        self._on_retry = on_retry
        self.sent: list[Event] = []
        self.memory_updates: list[MemoryUpdate] = []
        self._short_term = MemoryObject(short_term, MemoryScope.SHORT_TERM, self.memory_updates)
        self._sensory = MemoryObject(sensory, MemoryScope.SENSORY, self.memory_updates)
        self._next_position = 0
        self._threads = threads
        # The engine (store, index, counters) is shared by the event loop's thread and
        # the pool threads of ``def`` actions: each engine step holds this lock.
        self._lock = lock if lock is not None else threading.RLock()
        # In ``sync`` durability, a call's record is committed by the committer's thread,
        # shared with the other calls waiting then; the caller waits outside the lock.
        self._committer = committer
        self.store_failure: ActionStateError | None = None
        """A store write that failed during the action, even if the action caught it."""
        self.call_failure: CallFailure | None = None
        """The last failure of a durable call raised to the action as the call's recorded
        outcome (replayed, attempts ran out, or a result that cannot be stored)."""

    # -- RunnerContext -----------------------------------------------------

    @property
    def key(self) -> str:
        return self._sk.key

    @property
    def seq(self) -> int:
        return self._sk.seq

    def send_event(self, event: Event) -> None:
        if not isinstance(event, Event):
            raise TypeError(f"send_event needs an Event, got {type(event).__qualname__}")
        self.sent.append(event)

    @property
    def short_term_memory(self) -> MemoryObject:
        return self._short_term

    @property
    def sensory_memory(self) -> MemoryObject:
        return self._sensory

    @property
    def call_id(self) -> str | None:
        step = CURRENT_CALL.get()
        return None if step is None else step.call_id

    def durable_execute(
        self, fn: Callable[..., T], *args: Any, reconciler: Callable[[], T] | None = None,
        retry: RetryPolicy | None = None, **kwargs: Any,
    ) -> T:
        step, target, args, kwargs = self._start(fn, args, kwargs, reconciler, False)
        if step is None:  # replayed: args is the recorded result
            return cast(T, args)
        policy = retry or self._retry
        attempt = 1
        while True:
            # The call is current while it runs; a failure the policy takes is retried
            # after a wait, any other is recorded (by _after_failure) and propagates.
            token = CURRENT_CALL.set(step)
            try:
                result = target(*args, **kwargs)
                break
            except Exception as exc:
                wait = self._after_failure(step, policy, attempt, exc)
                if wait is None:
                    raise
            finally:
                CURRENT_CALL.reset(token)
            time.sleep(wait)  # a sync action holds its thread anyway
            attempt += 1
        ticket = self._succeeded(step, result)
        if ticket is not None:
            self._durable(ticket)
        return cast(T, result)

    async def durable_execute_async(
        self, fn: Callable[..., Any], *args: Any, reconciler: Callable[[], Any] | None = None,
        retry: RetryPolicy | None = None, **kwargs: Any,
    ) -> Any:
        step, target, args, kwargs = self._start(fn, args, kwargs, reconciler, True)
        if step is None:  # replayed: args is the recorded result
            return args
        policy = retry or self._retry
        coroutine = step.is_coroutine if target is fn else inspect.iscoroutinefunction(target)
        attempt = 1
        while True:
            token = CURRENT_CALL.set(step)
            try:
                if coroutine:
                    result = await target(*args, **kwargs)
                else:  # blocking: on a pool thread, with this call's context
                    result = await in_thread(self._threads, target, *args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                break
            except Exception as exc:
                wait = self._after_failure(step, policy, attempt, exc)
                if wait is None:
                    raise
            finally:
                CURRENT_CALL.reset(token)
            await asyncio.sleep(wait)  # a timer: the backoff before the next attempt
            attempt += 1
        ticket = self._succeeded(step, result)
        if ticket is not None:
            await self._durable_async(ticket)
        return result

    # -- the engine --------------------------------------------------------

    def _start(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        reconciler: Callable[[], Any] | None, in_async: bool,
    ) -> tuple[Step | None, Callable[..., Any], Any, dict[str, Any]]:
        """Take the call's position: the step and what to call (target, args, kwargs). A
        recorded outcome is served without a step: (None, ``fn``, the recorded result,
        ``kwargs``), or its exception raised.

        This and the other engine steps (:meth:`_succeeded`, :meth:`_after_failure`) hold
        the engine's lock: the caller may be a pool thread (a ``def`` action)."""
        with self._lock:
            position = self._next_position
            self._next_position = position + 1
            info = function_info(fn)
            fid = info[0]
            digest = args_digest(args, kwargs)
            recorded = self._state.calls.get(position) if self._state is not None else None
            if recorded is not None:
                if recorded.function_id != fid or recorded.args_digest != digest:
                    self._diverge(position, recorded, fid, digest)
                    recorded = None
                elif recorded.status is CallStatus.FAILED and recorded.retryable:
                    recorded = None  # the attempts ran out on an outage: try it again
                elif recorded.status is not CallStatus.PENDING:
                    return None, fn, self._replay(recorded), kwargs
            step = Step(position, info, digest, recorded, self._id_head)
            if step.is_coroutine and not in_async:
                raise TypeError(
                    f"{function_id(fn)} is a coroutine function: use "
                    "`await ctx.durable_execute_async(...)` for it"
                )
            target, args, kwargs = self._target(step, fn, args, kwargs, reconciler)
            return step, target, args, kwargs

    def _succeeded(self, step: Step, result: Any) -> int | None:
        """Record the call's result; with a committer, the ticket to wait for (outside
        the engine's lock) before the call returns."""
        with self._lock:
            if isinstance(result, dict):  # a model's reply with usage
                self.stats.add_tokens(result, replayed=False)
            return self._record(step, CallResult(step.fid, step.digest, CallStatus.SUCCEEDED,
                                                 result), shared=self._committer is not None)

    def _durable(self, ticket: int) -> None:
        assert self._committer is not None
        try:
            self._committer.wait(ticket)
        except ActionStateError as exc:  # the store's failure, even if the action catches it
            self.store_failure = exc
            raise

    async def _durable_async(self, ticket: int) -> None:
        assert self._committer is not None
        try:
            await self._committer.wait_async(ticket)
        except ActionStateError as exc:
            self.store_failure = exc
            raise

    def _id_head(self) -> list[Any]:
        """What every call id of this action run starts with (see :class:`Step`)."""
        sk = self._sk
        return [self._job, self._store.namespace, sk.key, sk.seq, sk.action, sk.event_id]

    def _diverge(self, position: int, recorded: CallResult, fid: str, args_digest: str) -> None:
        sk = self._sk
        message = (
            f"non-deterministic replay: key {sk.key!r} seq {sk.seq} action {sk.action!r} "
            f"call position {position}: recorded {recorded.function_id} "
            f"(args {recorded.args_digest}), now {fid} (args {args_digest})"
        )
        if self._policy == "fail":
            raise NonDeterminismError(
                message + "; make the action deterministic (see docs/determinism.md) or run "
                "with --divergence reexecute"
            )
        if self._policy == "warn":
            log.warning("%s; re-executing from this call", message)
        else:
            log.info("%s; re-executing from this call", message)
        self._put(TruncateRecord(sk, position), sync=True)
        self.stats.calls_truncated += 1

    def _target(
        self, step: Step, fn: Callable[..., Any], args: tuple[Any, ...],
        kwargs: dict[str, Any], reconciler: Callable[[], Any] | None,
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """What to call for a call that has no recorded outcome."""
        if step.recorded is not None and reconciler is not None:
            self.stats.call(step.fid, "reconciled")
            return reconciler, (), {}
        if reconciler is not None:
            pending = CallResult(step.fid, step.digest, CallStatus.PENDING)
            self._put(CallRecord(self._sk, step.position, pending), sync=True)
        if step.wants_key and "idempotency_key" not in kwargs:
            kwargs = {**kwargs, "idempotency_key": step.call_id}
        self.stats.call(step.fid, "executed")
        return fn, args, kwargs

    def _replay(self, recorded: CallResult) -> Any:
        if recorded.status is CallStatus.FAILED:
            self.stats.replayed(recorded.function_id, None)
            assert recorded.exception is not None
            error = decode_exception(recorded.exception)
            self.call_failure = CallFailure(recorded.function_id, error, recorded.retryable)
            raise error
        result = recorded.result
        self.stats.replayed(recorded.function_id, result)
        return result

    def _record(self, step: Step, result: CallResult, shared: bool = False) -> int | None:
        """Record the call's outcome. A result that cannot be stored is recorded as the
        call's failure, the error naming the type and the call, and raised: a replay
        raises the same error instead of running the call again. ``shared``: put it
        into the buffer and return the committer's ticket for it."""
        before = self.store_failure
        try:
            self._put(CallRecord(self._sk, step.position, result),
                      sync=False if shared else None)
        except UnstorableValueError as exc:
            if result.status is not CallStatus.SUCCEEDED:
                raise
            self.store_failure = before  # not the store's failure: the call's outcome
            self._put(CallRecord(self._sk, step.position, CallResult(
                step.fid, step.digest, CallStatus.FAILED, exception=encode_exception(exc))))
            self.call_failure = CallFailure(step.fid, exc, retryable=False)
            raise
        if shared:
            assert self._committer is not None
            return self._committer.ticket()
        return None

    def _put(self, record: CallRecord | TruncateRecord, sync: bool | None = None) -> None:
        try:
            started = perf_counter_ns()
            self._store.put(record, sync=sync)
            elapsed = (perf_counter_ns() - started) // 1000
            stats = self.stats
            self._put_us.add(elapsed)  # stats.observe("store_put_us", elapsed), inlined
            if stats.on_observe is not None:
                stats.on_observe("store_put_us", elapsed)
        except ActionStateError as exc:  # reported as the store's, even if the action catches it
            self.store_failure = exc
            raise

    def _after_failure(self, step: Step, policy: RetryPolicy, attempt: int,
                       exc: Exception) -> float | None:
        """Seconds to wait before another attempt, or None: the failure is the outcome
        (recorded, as retryable when the attempts ran out on a transient failure)."""
        with self._lock:
            if isinstance(exc, MemoryInCallError):
                return None  # a bug in the action, not the call's outcome: fixed, the call runs
            transient = policy.retryable(exc)
            if transient and attempt < policy.max_attempts:
                wait = policy.delay(attempt, exc)
                self.stats.call(step.fid, "retried")
                # the type only: an exception's text can carry the call's arguments (prompts,
                # customer data); the event log's call_retry record has it, redactable
                log.info("%s failed (%s), attempt %d of %d; again in %.2f s", step.fid,
                         type(exc).__name__, attempt, policy.max_attempts, wait)
                if self._on_retry is not None:
                    self._on_retry(self._sk, step.position, step.fid, attempt, exc, wait)
                return wait
            self._record(step, CallResult(step.fid, step.digest, CallStatus.FAILED,
                                          exception=encode_exception(exc), retryable=transient))
            self.call_failure = CallFailure(step.fid, exc, transient, attempt)
            return None
