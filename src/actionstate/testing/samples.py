"""Sample records and events for store tests (the contract suite uses them)."""

from __future__ import annotations

from typing import Any

from actionstate.checkpoint import Marker
from actionstate.events import Event, InputEvent, OutputEvent
from actionstate.records.state import (
    CallRecord,
    CallResult,
    CallStatus,
    CompleteRecord,
    MemoryScope,
    MemoryUpdate,
    StateKey,
)
from actionstate.stores import ActionStateStore

__all__ = ["ContractEvent", "call", "complete", "done", "key", "ok", "recorded", "results"]


class ContractEvent(Event):
    """An event type used by the contract suite."""

    event_type = "actionstate.testing.ContractEvent"
    name: str
    n: int


def key(name: str, seq: int, action: str = "act", event: str = "e" * 64) -> StateKey:
    """A StateKey of input key ``name``."""
    return StateKey(name, seq, action, event)


def call(sk: StateKey, position: int, result: Any) -> CallRecord:
    """A succeeded call record."""
    return CallRecord(sk, position, CallResult("f", "d" * 64, CallStatus.SUCCEEDED, result))


def ok(store: ActionStateStore, sk: StateKey, position: int, result: Any) -> None:
    """Put a succeeded call."""
    store.put(call(sk, position, result))


def done(sk: StateKey) -> CompleteRecord:
    """A completion record with an event, an output and a memory write."""
    return CompleteRecord(
        sk, InputEvent(input={"k": sk.key}), (ContractEvent(name="x", n=sk.seq),
                                              OutputEvent(output=[1, 2])),
        (MemoryUpdate(MemoryScope.SHORT_TERM, "a.b", sk.seq),))


def complete(store: ActionStateStore, sk: StateKey) -> None:
    """Put a completion record."""
    store.put(done(sk))


def recorded(store: ActionStateStore, name: str) -> tuple[StateKey, Marker]:
    """One call recorded for key ``name``, and the marker a checkpoint would take then."""
    sk = key(name, 0)
    ok(store, sk, 0, "recorded")
    return sk, store.recovery_marker()


def results(store: ActionStateStore, sk: StateKey) -> dict[int, Any] | None:
    """Position -> result of the calls held for ``sk``, or None."""
    state = store.get(sk)
    return None if state is None else {p: c.result for p, c in sorted(state.calls.items())}
