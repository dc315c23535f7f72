"""The in-memory index every store keeps: records applied in log order.

A store appends records (deltas) to its medium and applies each to a
:class:`StateIndex`. The index answers point lookups, finds divergent later
seqs per key, prunes, ignores records of fenced-off epochs, and tracks where
in the log the oldest still-live state begins (the recovery marker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from actionstate.records.state import (
    ActionState,
    CallRecord,
    CallResult,
    CompleteRecord,
    DropRecord,
    FenceRecord,
    Record,
    StateKey,
    TruncateRecord,
)

__all__ = ["Position", "StateIndex"]

Position = tuple[int, int]
"""(partition, offset) of a record in a store's log; single-log stores use partition 0."""


class StateIndex:
    """Action states by key, built by applying records in log order."""

    def __init__(self) -> None:
        self._states: dict[StateKey, ActionState] = {}
        self._seqs: dict[str, dict[int, set[StateKey]]] = {}
        self._max_seq: dict[str, int] = {}
        self._first: dict[StateKey, Position] = {}
        self._fence: dict[int, int] = {}
        self._fence_log: dict[int, list[tuple[int, int]]] = {}
        self._last: tuple[StateKey | None, ActionState | None] = (None, None)
        """The state a call was last recorded into, by its key object: an action run's
        calls share one key, found again without hashing it."""

    def start_at(self, offsets: dict[int, int], fences: dict[int, int]) -> None:
        """Begin a rebuild at ``offsets`` with ``fences`` in force there (from a marker)."""
        for partition, epoch in fences.items():
            self._fence[partition] = epoch
            self._fence_log[partition] = [(offsets.get(partition, 0) - 1, epoch)]

    def apply(self, record: Record, position: Position, epoch: int) -> bool:
        """Apply one record written under ``epoch``; False when it was ignored (a
        zombie's: its epoch is below a fence that precedes it in its partition).

        A claim (a fence of epoch 0) takes the epoch ``offset + 1``. Fences act per
        partition: a log store writes a fence to every partition.
        """
        if type(record) is CallRecord:  # the common case first
            return self.apply_call(record.key, record.position, record.call, epoch, position)
        partition = position[0]
        if isinstance(record, FenceRecord):
            fence = record.epoch or position[1] + 1
            if fence > self._fence.get(partition, 0):
                self._fence[partition] = fence
                self._fence_log.setdefault(partition, []).append((position[1], fence))
            return True
        if epoch < self._fence.get(partition, 0):
            return False
        if isinstance(record, DropRecord):
            self.drop_after(record.key, record.after_seq)
            return True
        state = self._state(record.key, position)
        if isinstance(record, CompleteRecord):
            state.completed = True
            state.task_event = record.task_event
            state.output_events = list(record.output_events)
            state.memory_updates = list(record.memory_updates)
        elif isinstance(record, TruncateRecord):
            for pos in [p for p in state.calls if p >= record.position]:
                del state.calls[pos]
        return True

    def apply_call(self, key: StateKey, at: int, call: CallResult, epoch: int,
                   position: Position) -> bool:
        """:meth:`apply` of ``CallRecord(key, at, call, epoch)`` at ``position`` (a
        rebuild's common case, without building the record)."""
        if epoch < self._fence.get(position[0], 0):
            return False
        last, state = self._last  # a state's calls are read one after another, mostly
        if key is not last or state is None:
            state = self._states.get(key) or self._state(key, position)
            self._last = (key, state)
        state.calls[at] = call
        return True

    def _state(self, key: StateKey, position: Position) -> ActionState:
        """The state of ``key``, a new one (first seen at ``position``) if it has none."""
        state = self._states.get(key)
        if state is not None:
            return state
        state = self._states[key] = ActionState()
        self._seqs.setdefault(key.key, {}).setdefault(key.seq, set()).add(key)
        if key.seq > self._max_seq.get(key.key, -1):
            self._max_seq[key.key] = key.seq
        self._first[key] = position
        return state

    def fence_before(self, partition: int, offset: int) -> int:
        """The epoch of the fence in force just before ``offset`` of ``partition``."""
        for at, epoch in reversed(self._fence_log.get(partition, ())):
            if at < offset:
                return epoch
        return 0

    def get(self, key: StateKey) -> ActionState | None:
        """The state of ``key``, or None."""
        return self._states.get(key)

    def has_later(self, key: str, seq: int) -> bool:
        """True when states of input ``key`` exist with a seq above ``seq``."""
        top = self._max_seq.get(key)
        return top is not None and top > seq

    def drop_after(self, key: str, seq: int) -> None:
        """Forget the states of input ``key`` with seq > ``seq``."""
        self._drop(key, lambda s: s > seq)

    def prune(self, key: str, seq: int) -> None:
        """Forget the states of input ``key`` with seq <= ``seq``."""
        self._drop(key, lambda s: s <= seq)

    def _drop(self, key: str, doomed: Callable[[int], bool]) -> None:
        self._last = (None, None)
        seqs = self._seqs.get(key)
        if not seqs:
            return
        for seq in [s for s in seqs if doomed(s)]:
            for state_key in seqs.pop(seq):
                del self._states[state_key]
                del self._first[state_key]
        if seqs:
            self._max_seq[key] = max(seqs)
        else:
            del self._seqs[key]
            del self._max_seq[key]

    def first_positions(self) -> dict[int, int]:
        """Per partition, the lowest position of any live state's first record."""
        lowest: dict[int, int] = {}
        for partition, offset in self._first.values():
            if offset < lowest.get(partition, offset + 1):
                lowest[partition] = offset
        return lowest

    def items(self) -> Iterator[tuple[StateKey, ActionState]]:
        """Every live (key, state), in no particular order."""
        return iter(list(self._states.items()))

    def __len__(self) -> int:
        return len(self._states)
