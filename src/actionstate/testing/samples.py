"""Sample records and events for store tests (the contract suite uses them)."""

from __future__ import annotations

import datetime as dt
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

__all__ = ["EDGE_VALUES", "ContractEvent", "call", "complete", "done", "key", "ok", "recorded",
           "results"]


_FLOATS = [1e16, 1e-7, 0.1 + 0.2, -0.0, 0.0, 1.5, 1e22, 5e-324, 1.7976931348623157e308,
           123456789.125, -2.5e-5, float("inf"), float("-inf"), float("nan")]
_INTS = [0, -1, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**40)]
_STRINGS = ["", "plain", "ключ", "日本語", "emoji 🎉", "\u2028\u2029", "\x00\x01\x1f\x7f",
            'quote " backslash \\ slash /', "\n\r\t\b\f", "é" * 300, "a" * 5000]
_NESTED: list[Any] = [
    {"b": 1, "a": [1.5, None, True, False], "ü": {"z": "x", "y": [1e16]}},
    [[], {}, [[[]]], {"": ""}],
    {"text": "t" * 200, "tokens": 42},
]
_TAGGED: list[Any] = [(1, "a", (2.5, None)), {1: "a", 2: [True]}, b"\x00\xff", {"b", "a"},
                      dt.datetime(2024, 3, 10, 2, 30, tzinfo=dt.UTC), dt.date(2024, 2, 29),
                      {"__as__": "x"}, InputEvent(input={"n": 1.0})]
EDGE_VALUES: list[Any] = [*_FLOATS, *_INTS, *_STRINGS, *_NESTED, *_TAGGED, None, True, False]
"""Values where a JSON encoder could differ from ``json``'s: floats, big ints, odd
strings, nesting, and every kind of tagged value (the hot-path and rebuild tests)."""


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
