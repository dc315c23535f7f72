"""``sqlite:///path/state.db``: the embedded default store (stdlib sqlite3, WAL).

One table of records ``(id, namespace, agent_key, payload)``; ``id`` is the
log offset (reads and deletes are ``id`` ranges, so no other index is kept).
``sync`` durability commits (and fsyncs the WAL) per record; ``group``
durability buffers records and commits them together in :meth:`flush`,
across keys.

Fencing is done by SQLite: a claim and the ``fences`` row of its namespace are
written in one transaction, and every write is conditional on that row still
holding the writer's epoch, so a zombie's write is refused (:class:`FencedError`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from actionstate.errors import ConfigError, FencedError, IncompatibleStateError, StoreError
from actionstate.records.index import Position
from actionstate.records.state import DropRecord, FenceRecord, Record
from actionstate.stores.base import ActionStateStore, Durability, Marker
from actionstate.stores.options import parse_options

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
CREATE TABLE IF NOT EXISTS fences (namespace TEXT PRIMARY KEY, epoch INTEGER NOT NULL);
"""
_INSERT = "INSERT INTO records (namespace, agent_key, payload) VALUES (?,?,?)"
_INSERT_IF_CURRENT = (
    "INSERT INTO records (namespace, agent_key, payload) SELECT ?,?,? "
    "WHERE coalesce((SELECT epoch FROM fences WHERE namespace=?), 0) <= ?")
_FENCE = ("INSERT INTO fences VALUES (?,?) ON CONFLICT (namespace) "
          "DO UPDATE SET epoch=max(epoch, excluded.epoch)")
_CURRENT = "SELECT coalesce((SELECT epoch FROM fences WHERE namespace=?), 0)"


class SqliteActionStateStore(ActionStateStore):
    """Action states in one SQLite file in WAL mode."""

    refuses_zombies = True

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

    @classmethod
    def from_url(cls, url: str, durability: Durability = "sync",
                 **options: Any) -> SqliteActionStateStore:
        """``sqlite:///abs/path/state.db`` or ``sqlite://relative/path.db``."""
        path, _, query = url.removeprefix("sqlite://").partition("?")
        parse_options("SQLite", (), query, options)
        if not path:
            raise ConfigError(f"store URL {url!r} has no path: use sqlite:///path/state.db")
        store = cls(path, durability=durability)
        store.url = url
        return store

    def append(self, record: Record, data: bytes, sync: bool) -> Position:
        if isinstance(record, FenceRecord):
            return self._claim_row(data)
        agent_key = record.key if isinstance(record, DropRecord) else record.key.key
        self._pending.append((self.namespace, agent_key, data))
        if not sync:
            position = (0, self._next_id)
            self._next_id += 1
            return position
        return (0, self._write())

    def flush(self) -> None:
        if self._pending:
            self._write()

    def _write(self) -> int:
        """Commit the buffered rows if this writer still holds the namespace's
        epoch; returns the id of the last one."""
        rows, self._pending = self._pending, []
        db = self._db
        with self._errors():
            if len(rows) == 1:
                cursor = db.execute(_INSERT_IF_CURRENT, (*rows[0], self.namespace, self.epoch))
                if cursor.rowcount != 1:
                    self._fenced()
                last = int(cursor.lastrowid or 0)
            else:
                db.execute("BEGIN IMMEDIATE")
                if db.execute(_CURRENT, (self.namespace,)).fetchone()[0] > self.epoch:
                    db.execute("ROLLBACK")
                    self._fenced()
                db.executemany(_INSERT, rows)
                last = int(db.execute("SELECT last_insert_rowid()").fetchone()[0])
                db.execute("COMMIT")
        self._next_id = max(self._next_id, last + 1)
        return last

    def _claim_row(self, data: bytes) -> Position:
        """Write a fence row and, in the same transaction, raise the namespace's epoch."""
        db = self._db
        self.flush()
        with self._errors():
            db.execute("BEGIN IMMEDIATE")
            row_id = int(db.execute(_INSERT, (self.namespace, None, data)).lastrowid or 0)
            db.execute(_FENCE, (self.namespace, row_id + 1))
            db.execute("COMMIT")
        self._next_id = max(self._next_id, row_id + 1)
        return (0, row_id)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's errors as a StoreError naming the file and the fix (nothing half-done)."""
        try:
            yield
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StoreError(f"cannot write to SQLite store {self.path}: {exc}; "
                             f"{_fix(exc)}, then run the same command again (it resumes from "
                             "the last checkpoint)") from None

    def _fenced(self) -> None:
        current = self._db.execute(_CURRENT, (self.namespace,)).fetchone()[0]
        raise FencedError(
            f"SQLite store {self.path}: a newer run restored this run's records and took "
            f"epoch {current} (this process has {self.epoch}); this process is a zombie and "
            "its writes are refused: stop it, the newer run carries on")

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
        self.flush()
        with self._errors():
            self._db.execute("DELETE FROM records WHERE namespace=? AND id<?",
                             (marker.namespace, marker.offsets.get(0, 0)))

    def discard_other_runs(self) -> None:
        self.flush()
        with self._errors():
            self._db.execute("DELETE FROM records WHERE namespace<>?", (self.namespace,))
            self._db.execute("DELETE FROM fences WHERE namespace<>?", (self.namespace,))

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._db.close()


def _fix(exc: sqlite3.Error) -> str:
    """What to do about a failed write, by SQLite's reason."""
    reason = str(exc).lower()
    if "locked" in reason or "busy" in reason:
        return "another process holds the database file: stop it"
    if "full" in reason:
        return "free disk space"
    if "readonly" in reason or "permission" in reason:
        return "make the file and its directory writable"
    return "check the disk and the file"
