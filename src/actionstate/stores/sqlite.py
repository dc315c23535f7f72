"""``sqlite:///path/state.db``: the embedded default store (stdlib sqlite3, WAL).

One table of records ``(id, namespace, agent_key, payload)``; ``id`` is the
log offset (reads and deletes are ``id`` ranges, so no other index is kept).
``sync`` durability commits (and fsyncs the WAL) per record; ``group``
durability buffers records and commits them together in :meth:`flush`,
across keys.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from actionstate.durable.index import Position
from actionstate.durable.state import DropRecord, FenceRecord, Record
from actionstate.errors import IncompatibleStateError, StoreError
from actionstate.stores.base import ActionStateStore, Durability, Marker

__all__ = ["SCHEMA_VERSION", "SqliteActionStateStore"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    agent_key TEXT,
    payload BLOB NOT NULL
);
"""
_INSERT = "INSERT INTO records (namespace, agent_key, payload) VALUES (?,?,?)"


class SqliteActionStateStore(ActionStateStore):
    """Action states in one SQLite file in WAL mode."""

    def __init__(self, path: str | Path, durability: Durability = "sync") -> None:
        super().__init__(durability)
        self.path = Path(path)
        self._pending: list[tuple[str, str | None, bytes]] = []
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise IncompatibleStateError(
                    f"{self.path} has store schema {row[0]}, this actionstate uses "
                    f"{SCHEMA_VERSION}: use the version that wrote it, or a new state path"
                )
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open SQLite store {self.path}: {exc}; check the path is a "
                "writable SQLite file (or pick a new one)"
            ) from None
        # A lower bound of the id the next appended record gets (ids only grow, and
        # other writers only push them up): the index uses it for recovery markers.
        self._next_id = self.end_offsets()[0]

    def append(self, record: Record, data: bytes, sync: bool) -> Position:
        agent_key = (
            None if isinstance(record, FenceRecord)
            else record.key if isinstance(record, DropRecord) else record.key.key
        )
        position = (0, self._next_id)
        self._pending.append((self.namespace, agent_key, data))
        self._next_id += 1
        if sync:
            self.flush()
        return position

    def flush(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        db = self._db
        try:
            if len(rows) == 1:
                db.execute(_INSERT, rows[0])
            else:
                db.execute("BEGIN")
                db.executemany(_INSERT, rows)
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"cannot write to SQLite store {self.path}: {exc}") from None

    def end_offsets(self) -> dict[int, int]:
        # sqlite_sequence holds the highest id ever used, even if deleted since.
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
        return {0: (row[0] if row else 0) + 1}

    def read(
        self, namespace: str, start: dict[int, int], stop: dict[int, int]
    ) -> Iterator[tuple[Position, bytes, str]]:
        cursor = self._db.execute(
            "SELECT id, payload FROM records WHERE namespace=? AND id>=? AND id<? ORDER BY id",
            (namespace, start.get(0, 0), stop.get(0, 0)),
        )
        for row_id, payload in cursor:
            yield (0, row_id), payload, f"{self.path} records.id={row_id}"

    def release(self, marker: Marker) -> None:
        """Delete this namespace's records below the marker's offset."""
        below = int(marker["offsets"].get("0", 0))
        self.flush()
        self._db.execute("DELETE FROM records WHERE namespace=? AND id<?",
                         (marker["namespace"], below))

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._db.close()
