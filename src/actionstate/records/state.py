"""The durable records: what is stored per action and per call.

A store holds an append-only sequence of small *records* (deltas). Applying
them in order yields one :class:`ActionState` per :class:`StateKey`. A call
appends one record, so the cost of a call does not grow with the number of
calls before it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from actionstate.events import Event

__all__ = [
    "ActionState",
    "CallRecord",
    "CallResult",
    "CallStatus",
    "CompleteRecord",
    "DropRecord",
    "FenceRecord",
    "MemoryScope",
    "MemoryUpdate",
    "Record",
    "StateKey",
    "TruncateRecord",
]


@dataclass(frozen=True, slots=True)
class StateKey:
    """Identifies one action run: input key, input seq, action id, event id."""

    key: str
    seq: int
    action: str
    event_id: str


class CallStatus(enum.Enum):
    """Outcome of a durable call."""

    PENDING = "P"
    SUCCEEDED = "S"
    FAILED = "F"


@dataclass(slots=True)
class CallResult:
    """The recorded outcome of one durable call.

    Attributes:
        function_id: stable name of the called function.
        args_digest: SHA-256 of the canonical arguments.
        status: PENDING (started, outcome unknown), SUCCEEDED or FAILED.
        result: the returned value (SUCCEEDED).
        exception: the stored exception ``{"type", "message", "args"}`` (FAILED).
        retryable: FAILED with a failure its retry policy would have tried again when
            the attempts ran out (an outage): the next run tries the call again.
    """

    function_id: str
    args_digest: str
    status: CallStatus
    result: Any = None
    exception: dict[str, Any] | None = None
    retryable: bool = False


class MemoryScope(enum.StrEnum):
    """Which memory a write went to (stored as its value)."""

    SHORT_TERM = "short_term"
    SENSORY = "sensory"


@dataclass(frozen=True, slots=True)
class MemoryUpdate:
    """A memory write made by an action."""

    scope: MemoryScope
    path: str
    value: Any


@dataclass(slots=True)
class ActionState:
    """Everything recorded for one action run.

    ``calls`` maps call position to result; positions are dense from 0 unless
    a run was cut off while concurrent calls were in flight.
    """

    calls: dict[int, CallResult] = field(default_factory=dict)
    completed: bool = False
    task_event: Event | None = None
    output_events: list[Event] = field(default_factory=list)
    memory_updates: list[MemoryUpdate] = field(default_factory=list)


@dataclass(slots=True)  # not frozen: one is built per durable call, and a frozen
class CallRecord:       # dataclass sets each field through object.__setattr__ (3x the cost)
    """A call result at ``position`` of the action run ``key`` (treated as immutable)."""

    key: StateKey
    position: int
    call: CallResult
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class TruncateRecord:
    """Drop the calls at ``position`` and later (non-determinism, re-execute)."""

    key: StateKey
    position: int
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class CompleteRecord:
    """The action run finished: its sent events and memory updates, to replay."""

    key: StateKey
    task_event: Event
    output_events: tuple[Event, ...]
    memory_updates: tuple[MemoryUpdate, ...]
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class DropRecord:
    """Divergence: drop every state of input key ``key`` with seq > ``after_seq``."""

    key: str
    after_seq: int
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class FenceRecord:
    """A new writer incarnation: records of older epochs written after it are ignored.

    A *claim* (``epoch == 0``, ``claim`` a unique token) is written to partition 0
    only, and its epoch is its own offset there plus one: the log orders claims,
    so two writers can never take the same epoch, and a later claim always wins.
    The claimant then writes ``FenceRecord(epoch)`` copies to every other partition.
    A claim must be written exactly once (an idempotent producer, a transaction):
    a duplicate would carry a higher epoch and fence its own claimant.
    """

    epoch: int
    claim: str = ""


# The ``epoch`` of the other records is the epoch they were written under, as read
# back from a store; ActionStateStore.put writes the store's own epoch, whatever the
# field holds, so callers leave it at 0.

Record = CallRecord | TruncateRecord | CompleteRecord | DropRecord | FenceRecord
