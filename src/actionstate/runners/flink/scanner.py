"""What a restored worker reads of the store: a key's recorded states, on its first
input (:class:`KeyScanner`)."""

from __future__ import annotations

from actionstate.records.index import Position
from actionstate.records.state import DropRecord, FenceRecord, Record
from actionstate.stores.base import ActionStateStore

__all__ = ["KeyScanner"]

class KeyScanner:
    """Brings a key's recorded states into a worker's index on its first input.

    ``stop`` is the store's end per partition when the worker opened: records after
    it are this worker's own (applied as they are put). A key's records are read from
    its ``since`` (restored from the checkpoint). A key the checkpoint does not know
    (first seen after it) starts at the highest ``since`` restored so far in its
    partition, else at ``start``, the store's end when the job was submitted: each is
    a bound taken before the checkpoint, so no record written after it lies below.
    Each partition is read once from the lowest bound asked so far (earlier ranges
    when a key needs them); the records of keys not yet asked for wait, by key, in
    log order.
    """

    def __init__(self, store: ActionStateStore, stop: dict[int, int],
                 start: dict[int, int]) -> None:
        self.store, self.stop, self.start = store, stop, start
        self._read_from: dict[int, int] = {}
        self._restored: dict[int, int] = {}
        self._waiting: dict[str, list[tuple[Position, Record]]] = {}
        self._claimed: set[str] = set()

    def claim(self, key: str, since: Position | None) -> Position | None:
        """Apply the records of ``key`` from its ``since`` on (once per key and worker;
        ``since`` None: the checkpoint has no state of the key). Returns the bound it
        read from, None when the key was claimed before."""
        if key in self._claimed:
            return None
        self._claimed.add(key)
        if since is None:
            partition = self.store.key_bound(key)[0]
            offset = self._restored.get(partition, self.start.get(partition, 0))
        else:
            partition, offset = since
            self._restored[partition] = max(offset, self._restored.get(partition, 0))
        stop = min(self._read_from.get(partition, self.stop.get(partition, 0)),
                   self.stop.get(partition, 0))
        if offset < stop:
            self._read(key, partition, offset, stop)
            self._read_from[partition] = offset
        top = 0  # the newest writer of the key so far: an older one's later records are a
        for position, record in self._waiting.pop(key, []):  # zombie's, ignored
            if record.epoch >= top:
                top = record.epoch
                self.store.index.apply(record, position, record.epoch)
        return partition, offset

    def _read(self, key: str, partition: int, start: int, stop: int) -> None:
        earlier: dict[str, list[tuple[Position, Record]]] = {}
        for position, record in self.store.records({partition: start}, {partition: stop}):
            if isinstance(record, FenceRecord):
                continue
            owner = record.key if isinstance(record, DropRecord) else record.key.key
            if owner != key and owner in self._claimed:
                continue  # before that key's ``since``: inputs it finished long ago
            earlier.setdefault(owner, []).append((position, record))
        for owner, found in earlier.items():
            self._waiting[owner] = found + self._waiting.get(owner, [])
