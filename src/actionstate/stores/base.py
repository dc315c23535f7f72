"""The action state store interface.

A store is an append-only log of encoded records (see
:mod:`actionstate.durable.codec`) plus the shared in-memory
:class:`~actionstate.durable.index.StateIndex`. A backend implements only the
medium: appending bytes, flushing, reading a range back, and deleting what no
checkpoint needs. Lookups, divergence, pruning and fencing are done here, once,
so every backend behaves the same.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from actionstate.durable.codec import decode_record, encode_record
from actionstate.durable.index import Position, StateIndex
from actionstate.durable.state import ActionState, DropRecord, FenceRecord, Record, StateKey
from actionstate.errors import ConfigError

__all__ = ["ActionStateStore", "Durability", "Marker"]

Durability = Literal["sync", "group"]
Marker = dict[str, Any]
"""A JSON-able recovery marker.

``{"namespace": str, "epoch": int, "offsets": {partition: offset}}``
"""


class ActionStateStore(ABC):
    """Records action states so that replay after a crash skips completed work.

    Contract:

    * :meth:`put` appends a record; in ``sync`` durability it is durable when
      ``put`` returns, in ``group`` durability when :meth:`flush` returns.
    * :meth:`get` returns the state of a (key, seq, action, event). When it is
      missing but the same key has states at a later seq, those belong to a
      history that did not happen and are dropped, for that key only.
    * :meth:`recovery_marker` names where a rebuild must start so that every
      state not yet pruned comes back; :meth:`rebuild` with it restores exactly
      those states (reading up to the end captured when the rebuild starts);
      ``rebuild(None)`` is a fresh start in a new namespace, so records of
      earlier runs are never reused.
    * :meth:`prune` forgets states in memory; :meth:`release` deletes records
      no retained checkpoint needs.
    * :meth:`fence` starts a new epoch: records of older epochs written after
      the fence are ignored by every later rebuild.
    """

    def __init__(self, durability: Durability = "sync") -> None:
        if durability not in ("sync", "group"):
            raise ConfigError(f"unknown durability {durability!r}: use 'sync' or 'group'")
        self.durability: Durability = durability
        self.url = ""
        self.index = StateIndex()
        self.epoch = 0
        self._namespace = uuid.uuid4().hex

    # -- the medium: what a backend implements -------------------------------

    @abstractmethod
    def append(self, record: Record, data: bytes, sync: bool) -> Position:
        """Append encoded ``data`` and return its position; durable now if ``sync``."""

    @abstractmethod
    def flush(self) -> None:
        """Make every appended record durable."""

    @abstractmethod
    def end_offsets(self) -> dict[int, int]:
        """Per partition, the offset the next record will get."""

    @abstractmethod
    def read(
        self, namespace: str, start: dict[int, int], stop: dict[int, int]
    ) -> Iterator[tuple[Position, bytes, str]]:
        """Records of ``namespace`` from ``start`` up to (excluding) ``stop``, in log order.

        Yields (position, data, description); the description names the record in errors.
        """

    @abstractmethod
    def close(self) -> None:
        """Flush and release resources. Calling it twice is fine."""

    def release(self, marker: Marker) -> None:  # noqa: B027 - optional hook
        """Delete records before ``marker`` (no retained checkpoint needs them).

        The default keeps them; backends with cheap deletes override this.
        """

    # -- the contract, shared by every backend -------------------------------

    @property
    def namespace(self) -> str:
        """The run namespace new records are written under (a new one per fresh start)."""
        return self._namespace

    def use_namespace(self, namespace: str) -> None:
        """Write further records under ``namespace`` (a restored run's).

        Backends that derive something from the namespace extend this.
        """
        self._namespace = namespace

    def put(self, record: Record, *, sync: bool | None = None) -> None:
        """Append one record and apply it; ``sync`` overrides the store's durability."""
        data = encode_record(record)
        position = self.append(record, data, self.durability == "sync" if sync is None else sync)
        self.index.apply(record, position)

    def get(self, key: StateKey) -> ActionState | None:
        """The state of ``key``; on divergence drops later seqs of ``key.key``."""
        state = self.index.get(key)
        if state is None and self.index.has_later(key.key, key.seq):
            self.put(DropRecord(key.key, key.seq, self.epoch), sync=True)
        return state

    def prune(self, key: str, seq: int) -> None:
        """Forget states of ``key`` with seq <= ``seq`` (they completed before a checkpoint)."""
        self.index.prune(key, seq)

    def recovery_marker(self) -> Marker:
        """Where a rebuild must start to bring back every state not yet pruned."""
        self.flush()
        offsets = self.end_offsets()
        offsets.update(self.index.first_positions())
        return {"namespace": self.namespace, "epoch": self.index.fence_epoch,
                "offsets": {str(p): o for p, o in sorted(offsets.items())}}

    def rebuild(self, marker: Marker | None) -> int:
        """Restore the states after ``marker``; None is a fresh start. Returns records read."""
        self.index = StateIndex()
        if not marker:
            self.use_namespace(uuid.uuid4().hex)  # a fresh start never writes into an old run
            return 0
        try:
            namespace = str(marker["namespace"])
            start = {int(p): int(o) for p, o in marker["offsets"].items()}
            self.index.base_fence = self.index.fence_epoch = int(marker["epoch"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError(
                f"recovery marker {marker!r} is not one this store wrote: restore from "
                "the checkpoint that came with it, or start fresh with no marker"
            ) from None
        self.use_namespace(namespace)
        stop = self.end_offsets()
        count = 0
        for position, data, where in self.read(namespace, start, stop):
            self.index.apply(decode_record(data, where), position)
            count += 1
        return count

    def fence(self) -> int:
        """Start a new epoch above every epoch seen, durably; returns it.

        Backends with several partitions override :meth:`append` so that a
        :class:`FenceRecord` lands in every partition.
        """
        self.epoch = max(self.epoch, self.index.max_epoch, self.index.fence_epoch) + 1
        self.put(FenceRecord(self.epoch), sync=True)
        return self.epoch

    def states(self) -> Iterable[tuple[StateKey, ActionState]]:
        """Every live state (for inspection)."""
        return self.index.items()

    def __enter__(self) -> ActionStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
