"""The local runner's per-key and per-input bookkeeping.

Per key: the next seq and two short-term memories, the live one actions write into
and the *committed* one a checkpoint saves; per input in flight: its record and
where it was read. Per-key state is held in memory only for the keys in flight or
changed since the last checkpoint; a checkpoint writes those and drops the idle
ones, and a key that shows up again is read back from the state dir.
"""

from __future__ import annotations

import copy
from collections.abc import Container
from typing import Any

from actionstate.checkpoint import Checkpoint, PendingInput
from actionstate.memory import apply_update
from actionstate.records.state import MemoryUpdate
from actionstate.runners.statedir import KeyState, StateDir
from actionstate.stores.base import ActionStateStore

__all__ = ["KeyStates"]


class KeyStates:
    """The keys a :class:`~actionstate.runners.local.LocalRunner` holds, and its
    inputs in flight (read, not yet finished)."""

    def __init__(self, state_dir: StateDir, store: ActionStateStore) -> None:
        self._state_dir, self._store = state_dir, store
        # Per key, for the keys in flight or changed since the last checkpoint: the
        # next seq, and the short-term memory a checkpoint saves, as of the key's last
        # completed input (never half an input). Other keys live in the state dir.
        self._next_seq: dict[str, int] = {}
        self._committed: dict[str, dict[str, Any]] = {}
        self._changed: set[str] = set()
        self._done_seq: dict[str, int] = {}  # keys whose inputs completed since the last prune
        self._first_pending: dict[str, int] = {}  # per key, its first input in flight restored
        # The live short-term memory actions write into, per key with a worker.
        self._working: dict[str, dict[str, Any]] = {}
        self.reading: set[str] = set()  # keys of the lines being admitted (loaded ahead)
        self.pending: dict[tuple[str, int], tuple[Any, int]] = {}
        """The inputs in flight: ``(key, seq)`` -> ``(record, where it was read)``."""

    def load_many(self, keys: set[str]) -> None:
        """Hold the checkpointed state of those of ``keys`` not held (one lookup)."""
        missing = [key for key in keys if key not in self._next_seq]
        if not missing:
            return
        found = self._state_dir.key_states_of(missing)
        for key in missing:
            self._next_seq[key], self._committed[key] = found.get(key, (0, {}))

    def load(self, key: str) -> int:
        """The next seq of ``key``, reading its checkpointed state when not held."""
        next_seq = self._next_seq.get(key)
        if next_seq is None:
            self.load_many({key})
            next_seq = self._next_seq[key]
        return next_seq

    def admit(self, key: str, record: Any, where: int) -> int:
        """Take a new input of ``key`` in flight; returns its seq."""
        seq = self.load(key)
        self._next_seq[key] = seq + 1
        self._changed.add(key)
        self.pending[(key, seq)] = (record, where)
        return seq

    def working_memory(self, key: str) -> dict[str, Any]:
        """The live short-term memory of ``key``, which its worker's actions write into
        (a copy of the committed one when the key has none)."""
        self.load(key)
        working = self._working.get(key)
        if working is None:
            working = self._working[key] = copy.deepcopy(self._committed[key])
        return working

    def complete(self, key: str, seq: int, updates: list[MemoryUpdate]) -> None:
        """Input ``seq`` of ``key`` is done: its memory writes go into the committed
        memory, and it leaves the inputs in flight."""
        committed = self._committed[key]
        for update in updates:
            apply_update(committed, update.path, update.value)
        self._changed.add(key)
        del self.pending[(key, seq)]
        self._done_seq[key] = seq

    def idle(self, key: str) -> None:
        """Every input of ``key`` is done: live and committed memory agree."""
        del self._working[key]

    def prune(self) -> None:
        """Let the store drop the states of the inputs completed since the last prune."""
        for key, seq in self._done_seq.items():
            self._store.prune(key, seq)
        self._done_seq.clear()

    def changes(self) -> dict[str, KeyState]:
        """The state of every key changed since the last checkpoint."""
        return {key: (self._next_seq[key], self._committed[key]) for key in self._changed}

    def pending_inputs(self) -> list[PendingInput]:
        """The inputs in flight, as a checkpoint keeps them."""
        return [PendingInput(k, s, r, line) for (k, s), (r, line) in self.pending.items()]

    def saved(self, busy: Container[str]) -> None:
        """A checkpoint holds the changes: nothing is changed now, and the keys with
        nothing in flight (not in ``busy``, not being read) are let go."""
        self._changed.clear()
        # Keys with nothing in flight are in the state dir now: let them go.
        for key in [k for k in self._next_seq if k not in busy and k not in self.reading]:
            del self._next_seq[key], self._committed[key]

    def restore(self, checkpoint: Checkpoint) -> None:
        """Take up the inputs in flight of ``checkpoint`` (and every key of a format 1
        one), before the store's rebuild, which skips what :meth:`done_through` says."""
        # A format 1 state dir holds every key in the checkpoint: all move over.
        for key, next_seq in checkpoint.next_seq.items():
            self._next_seq[key] = next_seq
            self._committed[key] = checkpoint.short_term.get(key, {})
            self._changed.add(key)
        for pending in checkpoint.pending:
            self.pending[(pending.key, pending.seq)] = (pending.record, pending.line)
        self._first_pending.clear()
        for key, seq in self.pending:
            self._first_pending[key] = min(seq, self._first_pending.get(key, seq))

    def done_through(self, key: str) -> int:
        """The last seq of ``key`` whose input completed before the checkpoint restored
        (-1: none): the rebuild may bring back states of such inputs (recorded after the
        oldest in-flight input began) and skips them, as a prune would."""
        return self._first_pending.get(key, self.load(key)) - 1
