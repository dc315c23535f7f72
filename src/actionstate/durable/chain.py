"""Processing one input: its chain of actions, with skip and replay.

Every runner calls :func:`process_input`; it is the whole of durable
execution as a runner sees it. Events sent by actions go back into the same
input's queue in process (the feedback channel); OutputEvents are returned.
"""

from __future__ import annotations

import inspect
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from actionstate.agent import Agent
from actionstate.durable.execution import ActionContext, DivergencePolicy
from actionstate.durable.stats import RunStats
from actionstate.durable.threads import EngineLock, SyncCommitter, in_thread
from actionstate.errors import ActionFailedError
from actionstate.eventlog import EventLogger
from actionstate.events import Event, InputEvent, OutputEvent
from actionstate.memory import apply_update
from actionstate.records.digests import event_id
from actionstate.records.state import (
    ActionState,
    CallStatus,
    CompleteRecord,
    MemoryScope,
    MemoryUpdate,
    StateKey,
)
from actionstate.retry import RetryPolicy
from actionstate.stores.base import ActionStateStore

__all__ = ["ChainSettings", "InputResult", "process_input"]


@dataclass
class ChainSettings:
    """What a runner hands to every chain."""

    job: str
    policy: DivergencePolicy = "reexecute"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """The run's default for durable calls (a call may pass its own ``retry=``)."""
    stats: RunStats = field(default_factory=RunStats)
    event_log: EventLogger = field(default_factory=lambda: EventLogger(None))
    threads: Executor | None = None
    """Where ``def`` actions and sync durable calls run (a runner sizes it to the inputs
    it keeps in flight); None runs ``def`` actions on the event loop's thread."""
    committer: SyncCommitter | None = None
    """In ``sync`` durability, commits durable calls' records on its own thread, shared
    by the calls waiting then (a runner sets it); None: each call commits itself."""
    lock: EngineLock = field(default_factory=EngineLock)
    """Held for every use of the store and the counters: ``def`` actions reach them
    from pool threads while the event loop's thread runs the rest."""


@dataclass
class InputResult:
    """What one input produced: its outputs, and its short-term memory writes in order
    (a runner applies them to the memory it checkpoints once the input is done)."""

    outputs: list[Any] = field(default_factory=list)
    memory_updates: list[MemoryUpdate] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    """Its event log records (JSON lines): the runner writes them with its outputs
    (:meth:`~actionstate.eventlog.EventLogger.write`)."""


async def process_input(
    agent: Agent, store: ActionStateStore, key: str, seq: int, record: Any,
    short_term: dict[str, Any], settings: ChainSettings,
) -> InputResult:
    """Run every action the input triggers, writing into ``short_term`` as they go."""
    sensory: dict[str, Any] = {}
    done = InputResult()
    outputs, updates = done.outputs, done.memory_updates
    log = settings.event_log.batch()
    done.events = log.lines
    queue: deque[tuple[Event, str | None, bool]] = deque([(InputEvent(input=record), None, False)])
    while queue:
        event, sender, replayed = queue.popleft()
        log.event(event, key, seq, sender, replayed)
        if isinstance(event, OutputEvent):
            outputs.append(event.output)
            continue
        for action_id, method in agent.actions_for(event):
            state_key = StateKey(key, seq, action_id, event_id(event))
            with settings.lock:
                state = store.get(state_key)
                if state is None and store.has_later(key, seq):
                    store.drop_after(key, seq)  # later seqs of this key did not happen
            if state is not None and state.completed:
                with settings.lock:
                    sent = _skip(state, short_term, sensory, settings)
                updates.extend(u for u in state.memory_updates if u.scope is MemoryScope.SHORT_TERM)
                queue.extend((e, action_id, True) for e in sent)
                log.action_run(key, seq, action_id, True, _calls(state))
                continue
            ctx = ActionContext(state_key, state, store, short_term, sensory,
                                job=settings.job, policy=settings.policy, stats=settings.stats,
                                retry=settings.retry, on_retry=log.retry,
                                threads=settings.threads, lock=settings.lock,
                                committer=settings.committer)
            try:
                await _run_action(method, event, ctx, settings.threads)
            except Exception as exc:
                if ctx.store_failure is not None:
                    raise ctx.store_failure from None
                if log.failure is not None:
                    raise log.failure from None
                failure = ctx.call_failure  # the action let a call's recorded outcome out
                hint = failure.hint() if failure is not None and failure.exception is exc \
                    else None
                raise ActionFailedError(key, seq, action_id, exc, hint) from exc
            if ctx.store_failure is not None:  # the action caught it: still the store's failure
                raise ctx.store_failure
            if log.failure is not None:  # the event log's redaction failed on a retry
                raise log.failure
            with settings.lock:
                settings.stats.actions_run += 1
                # A skip hint, not a call's outcome (without it a replay serves the
                # calls): it rides on the next durable write or the checkpoint's flush.
                store.put(CompleteRecord(state_key, event, tuple(ctx.sent),
                                         tuple(ctx.memory_updates)), sync=False)
            updates.extend(u for u in ctx.memory_updates if u.scope is MemoryScope.SHORT_TERM)
            queue.extend((e, action_id, False) for e in ctx.sent)
            if log.verbose:
                with settings.lock:
                    calls = _calls(store.get(state_key))
                log.action_run(key, seq, action_id, False, calls)
    return done


async def _run_action(method: Any, event: Event, ctx: ActionContext,
                      threads: Executor | None) -> None:
    """Run an action: ``async def`` on the loop, ``def`` on a pool thread (a blocking
    model call holds that thread, not every other key)."""
    if threads is None or inspect.iscoroutinefunction(method):
        result = method(event, ctx)
    else:
        result = await in_thread(threads, method, event, ctx)
    if inspect.isawaitable(result):
        await result


def _skip(state: ActionState, short_term: dict[str, Any], sensory: dict[str, Any],
          settings: ChainSettings) -> list[Event]:
    """Re-apply a completed action's memory writes; return the events it sent."""
    settings.stats.actions_skipped += 1
    for call in state.calls.values():
        settings.stats.replayed(call.function_id,
                                call.result if call.status is CallStatus.SUCCEEDED else None)
    for update in state.memory_updates:
        apply_update(short_term if update.scope is MemoryScope.SHORT_TERM else sensory,
                     update.path, update.value)
    return state.output_events


def _calls(state: ActionState | None) -> list[dict[str, Any]]:
    if state is None:
        return []
    return [{"position": p, "function": c.function_id, "status": c.status.name}
            for p, c in sorted(state.calls.items())]
