"""The values of tests/golden/values-v1.jsonl: a value of each type the codec tags
(issue 9, part 3), those of :func:`tests.agents.values.sample` named in
:data:`NAMES`, and an event."""

from __future__ import annotations

from typing import Any

from tests.agents.values import sample

from actionstate.events import OutputEvent
from actionstate.records import state

NAMES = (
    "tuple", "int_keys", "tuple_keys", "mixed_keys", "enum_keys", "frozenset_keys", "tag_key",
    "set", "frozenset", "empty_set", "datetime", "datetime_utc", "datetime_zone",
    "datetime_offset", "date", "time", "time_naive", "timedelta", "decimal", "decimal_exp",
    "uuid", "enum", "str_enum", "flags", "bytes", "dataclass", "frozen_dataclass", "model",
    "nested", "pydantic")
"""The sample values written when the file was made (the sample may grow; these stay)."""

KEY = state.StateKey("values", 1, "produce", "f" * 64)


def values() -> dict[str, Any]:
    """Each value by name (the name is also its call record's function id)."""
    every = sample()
    return {**{name: every[name] for name in NAMES},
            "event": OutputEvent(output={"pair": (1, "a")})}


def records() -> list[state.Record]:
    """One call record per value (its result), then the input's completion: every value
    as a memory update, and one as an output event's field."""
    named = values()
    calls: list[state.Record] = [
        state.CallRecord(KEY, position, state.CallResult(name, "d" * 64,
                                                         state.CallStatus.SUCCEEDED, value), 1)
        for position, (name, value) in enumerate(named.items())]
    done = state.CompleteRecord(
        KEY, OutputEvent(output={"id": "v"}), (OutputEvent(output=named["nested"]),),
        tuple(state.MemoryUpdate(state.MemoryScope.SHORT_TERM, f"v.{name}", value)
              for name, value in named.items()), 1)
    return [*calls, done]
