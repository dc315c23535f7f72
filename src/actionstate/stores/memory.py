"""``memory://[name]``: the reference store, in process memory.

Stores named ``memory://name`` share one log per process, so a store can be
reopened and rebuilt (as a restarted runner would). Nothing survives the
process: use it for tests and for runs that need no durability.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from actionstate.errors import FencedError
from actionstate.records.index import Position
from actionstate.records.state import FenceRecord, Record
from actionstate.stores.base import ActionStateStore, Durability
from actionstate.stores.options import parse_options

__all__ = ["MemoryActionStateStore"]

_LOGS: dict[str, list[tuple[str, bytes]]] = {}
_FENCES: dict[tuple[int, str], int] = {}
"""(id of a log, namespace) -> the epoch of its latest claim: writes of older epochs are refused."""
_LOCK = threading.Lock()


class MemoryActionStateStore(ActionStateStore):
    """An in-memory log of (namespace, record) shared by stores of the same name."""

    refuses_zombies = True

    def __init__(self, name: str = "", durability: Durability = "sync",
                 url: str | None = None) -> None:
        super().__init__(durability, f"memory://{name}" if url is None else url)
        with _LOCK:
            self._log = _LOGS.setdefault(name, []) if name else []

    @classmethod
    def from_url(cls, url: str, durability: Durability = "sync",
                 **options: Any) -> MemoryActionStateStore:
        """``memory://`` (a private log) or ``memory://name`` (shared in the process)."""
        parts = urlsplit(url)
        parse_options("memory", (), parts.query, options)
        return cls(parts.netloc + parts.path, durability=durability, url=url)

    def append(self, record: Record, data: bytes, sync: bool) -> Position:
        with _LOCK:
            log, fence = self._log, (id(self._log), self.namespace)
            if isinstance(record, FenceRecord):
                _FENCES[fence] = max(_FENCES.get(fence, 0), len(log) + 1)
            elif _FENCES.get(fence, 0) > self.epoch:
                raise FencedError(
                    f"memory store: a newer run took epoch {_FENCES[fence]} of namespace "
                    f"{self.namespace} (this store has {self.epoch}): this one is a zombie")
            log.append((self.namespace, data))
            return (0, len(log) - 1)

    def flush(self) -> None:
        pass

    def end_offsets(self) -> dict[int, int]:
        return {0: len(self._log)}

    def read(
        self, namespace: str, start: dict[int, int], stop: dict[int, int]
    ) -> Iterator[tuple[Position, bytes, str]]:
        for offset in range(start.get(0, 0), stop.get(0, 0)):
            ns, data = self._log[offset]
            if ns == namespace:
                yield (0, offset), data, f"memory log offset {offset}"

    def close(self) -> None:
        pass

    def _past_end(self, part: int, first: int, end: int) -> None:
        """None: the log lives in this process only, and a marker past its end is the
        checkpoint of one before it (a restart pays again for what it had recorded)."""
