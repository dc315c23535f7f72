"""``sqlite:///path/state.db``: the embedded default store (stdlib sqlite3, WAL).

One table of records ``(id, namespace, agent_key, payload)``; ``id`` is the
log offset (reads and deletes are ``id`` ranges, so no other index is kept).
``sync`` durability commits (and fsyncs the WAL) per record; ``group``
durability buffers records and commits them together in :meth:`flush`,
across keys. :meth:`flush` may run on another thread than :meth:`put`: it
takes the buffer under a lock and commits it, and one lock around the
connection keeps its commit and a ``sync`` put's from interleaving, in log
order. A runner uses :meth:`flush_begin` instead: the rows go into a
transaction on the event loop's thread, in a few multi-row INSERTs, and only
the COMMIT (the fsync) runs on another thread, holding the connection until
it ends. A statement on another thread lets go of the GIL while SQLite works
and waits (up to the interpreter's switch interval, 5 ms) to get it back from
a busy event loop: the COMMIT alone pays that once per commit. A large group
commit (``write_now=False``, 512 rows or more) writes its rows on that thread
too: the loop then only hands the buffer over, and keeps recording calls while
SQLite works.

Fencing is done by SQLite: a claim and the ``fences`` row of its namespace are
written in one transaction, and every write is conditional on that row still
holding the writer's epoch, so a zombie's write is refused (:class:`FencedError`).
Deletes are fenced the same way: :meth:`~SqliteActionStateStore.release` and
:meth:`~SqliteActionStateStore.discard_other_runs` check the row and delete in one
``BEGIN IMMEDIATE`` transaction, so a zombie never deletes a successor's records.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from actionstate.errors import ConfigError, FencedError, IncompatibleStateError, StoreError
from actionstate.private import create_private
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
_ROWS_PER_INSERT = 1024
"""Rows a multi-row INSERT of a group commit writes at most (3 parameters each)."""
_REMAINDER_UNITS = (128, 16, 1)
"""The rest of a batch goes in at most three INSERTs, of a multiple of each unit: their
prepared statements stay few and small in sqlite3's cache (one of every size up to 1,023
rows would hold ~25 MB: ~0.4 KB per row)."""
_ROWS_OFF_THREAD = 512
"""A group commit of at least this many rows (over a millisecond of the event loop's
time) writes them on the committing thread, beside the loop. Each statement there waits
for the interpreter lock (up to 5 ms from a busy loop): the commit ends later, which a
group commit can afford and a small one (a ``sync`` call waiting) cannot."""
_FENCE = ("INSERT INTO fences VALUES (?,?) ON CONFLICT (namespace) "
          "DO UPDATE SET epoch=max(epoch, excluded.epoch)")
_CURRENT = "SELECT coalesce((SELECT epoch FROM fences WHERE namespace=?), 0)"


class SqliteActionStateStore(ActionStateStore):
    """Action states in one SQLite file in WAL mode."""

    refuses_zombies = True
    release_deletes = True

    def __init__(self, path: str | Path, durability: Durability = "sync",
                 url: str | None = None) -> None:
        super().__init__(durability, f"sqlite://{path}" if url is None else url)
        self.path = Path(path)
        self._pending: list[Any] = []
        """Rows to commit, flat: namespace, agent key, payload, namespace, ..."""
        self._pending_lock = threading.Lock()
        """Guards ``_pending`` and ``_next_id`` (put on one thread, flush on another)."""
        self._lock = threading.Lock()
        """Held while the connection is used: one commit at a time, in log order. Not
        re-entrant: :meth:`flush_begin` takes it on one thread and the COMMIT it
        returns lets it go on another."""
        self._closed = False
        self._failure: str | None = None
        """Why a write failed; every later write fails with it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if str(self.path) != ":memory:":
                create_private(self.path)  # records are private; -wal/-shm take its mode
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
            self._rows_per_insert = min(
                _ROWS_PER_INSERT, self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 3)
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
        return cls(path, durability=durability, url=url)

    def append(self, record: Record, data: bytes, sync: bool) -> Position:
        if isinstance(record, FenceRecord):
            return self._claim_row(data)
        agent_key = record.key if isinstance(record, DropRecord) else record.key.key
        if not sync:
            with self._pending_lock:
                self._pending += (self._namespace, agent_key, data)
                position = (0, self._next_id)
                self._next_id += 1
            return position
        with self._lock:  # after a flush running on another thread, in log order
            with self._pending_lock:
                self._pending += (self.namespace, agent_key, data)
            return (0, self._write())

    def flush(self) -> None:
        """Commit the buffered records; safe on another thread than :meth:`put`'s."""
        with self._lock:
            self._write()

    def flush_begin(self, *, write_now: bool = True) -> Callable[[], None] | None:
        """Write the buffered rows into a transaction now; the COMMIT that makes them
        durable (the fsync) is returned, to run on another thread. ``write_now=False``
        (a group commit): when there are many rows, only take them now, and write them
        on that thread too. The connection is held until the returned part has run."""
        self._lock.acquire()
        try:
            if not write_now and len(self._pending) >= 3 * _ROWS_OFF_THREAD:
                with self._pending_lock:
                    rows, self._pending = self._pending, []
                return functools.partial(self._write_taken, rows)
            last = self._write(commit=False)
            if last:
                return functools.partial(self._commit_open, last)
        except BaseException:
            self._lock.release()
            raise
        self._lock.release()
        return None

    def _commit_open(self, last: int) -> None:
        """COMMIT what :meth:`flush_begin` wrote, then let the connection go."""
        try:
            with self._errors():
                self._db.execute("COMMIT")
            self._advance(last)
        finally:
            self._lock.release()

    def _write_taken(self, rows: list[Any]) -> None:
        """Commit the ``rows`` :meth:`flush_begin` took, then let the connection go."""
        try:
            self._write(rows=rows)
        finally:
            self._lock.release()

    def _write(self, commit: bool = True, rows: list[Any] | None = None) -> int:
        """Commit the buffered rows (the caller holds ``_lock``), or ``rows`` taken from
        the buffer earlier, if this writer still holds the namespace's epoch; returns the
        id of the last one (0: none). Without ``commit`` the transaction is left open
        (for :meth:`flush_begin`)."""
        if rows is None:
            with self._pending_lock:
                rows, self._pending = self._pending, []
        if not rows:
            return 0
        db = self._db
        with self._errors():
            if len(rows) == 3 and commit:
                cursor = db.execute(_INSERT_IF_CURRENT, (*rows, self.namespace, self.epoch))
                if cursor.rowcount != 1:
                    self._fenced()
                last = int(cursor.lastrowid or 0)
            else:
                self._begin_current()
                last = self._insert_many(rows)
                if not commit:
                    return last
                db.execute("COMMIT")
        self._advance(last)
        return last

    def _begin_current(self) -> None:
        """BEGIN IMMEDIATE, then raise :class:`FencedError` (rolled back) unless this
        writer still holds its namespace's epoch: until COMMIT no claim can land."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        if db.execute(_CURRENT, (self.namespace,)).fetchone()[0] > self.epoch:
            db.execute("ROLLBACK")
            self._fenced()

    def _delete(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Run the DELETE ``statements`` in one transaction if this writer still holds
        its namespace's epoch, else raise :class:`FencedError`: a zombie deletes nothing."""
        with self._lock:
            self._write()
            with self._errors():
                self._begin_current()
                for sql, parameters in statements:
                    self._db.execute(sql, parameters)
                self._db.execute("COMMIT")

    def _advance(self, last: int) -> None:
        """Row ``last`` is committed: the next record's id is above it."""
        with self._pending_lock:
            self._next_id = max(self._next_id, last + 1)

    def _insert_many(self, rows: list[Any]) -> int:
        """INSERT the flat ``rows``, many per statement; the id of the last one."""
        cursor, start = None, 0
        for count in _row_counts(len(rows) // 3, self._rows_per_insert):
            end = start + 3 * count
            cursor = self._db.execute(_insert_rows(count), rows[start:end])
            start = end
        assert cursor is not None
        return int(cursor.lastrowid or 0)

    def _claim_row(self, data: bytes) -> Position:
        """Write a fence row and, in the same transaction, raise the namespace's epoch."""
        db = self._db
        with self._lock:
            self._write()
            with self._errors():
                db.execute("BEGIN IMMEDIATE")
                row_id = int(db.execute(_INSERT, (self.namespace, None, data)).lastrowid or 0)
                db.execute(_FENCE, (self.namespace, row_id + 1))
                db.execute("COMMIT")
        self._advance(row_id)
        return (0, row_id)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's errors as a StoreError naming the file and the fix (nothing half-done).
        A failed write fails every later one at once: the records it held are lost, so
        later ones would leave a gap (and each would wait out a lock again)."""
        if self._failure is not None:
            raise StoreError(self._failure)
        try:
            yield
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._failure = (f"cannot write to SQLite store {self.path}: {exc}; "
                             f"{_fix(exc)}, then run the same command again (it resumes from "
                             "the last checkpoint)")
            raise StoreError(self._failure) from None

    def _fenced(self) -> None:
        current = self._db.execute(_CURRENT, (self.namespace,)).fetchone()[0]
        raise FencedError(
            f"SQLite store {self.path}: a newer run restored this run's records and took "
            f"epoch {current} (this process has {self.epoch}); this process is a zombie and "
            "its writes are refused: stop it, the newer run carries on")

    def end_offsets(self) -> dict[int, int]:
        # sqlite_sequence holds the highest id ever used, even if deleted since.
        with self._lock:  # not inside a commit running on another thread
            row = self._db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
        return {0: (row[0] if row else 0) + 1}

    def _past_end(self, part: int, first: int, end: int) -> str | None:
        if str(self.path) == ":memory:":
            return None  # the database lives in this process only
        return (f"SQLite store {self.path} has records up to id {end - 1}, but the "
                f"recovery marker starts at id {first}: the file was replaced (by an older "
                "copy or a new database) since the checkpoint, so the states recorded "
                "after that copy are lost; put back the file the checkpoint was taken "
                "on, or start fresh without a checkpoint")

    def read(
        self, namespace: str, start: dict[int, int], stop: dict[int, int]
    ) -> Iterator[tuple[Position, bytes, str]]:
        with self._lock:
            cursor = self._db.execute(
                "SELECT id, payload FROM records WHERE namespace=? AND id>=? AND id<? "
                "ORDER BY id", (namespace, start.get(0, 0), stop.get(0, 0)))
        while True:
            with self._lock:  # a batch at a time, between commits of other threads
                rows = cursor.fetchmany(1000)
            if not rows:
                return
            for row_id, payload in rows:
                yield (0, row_id), payload, f"{self.path} records.id={row_id}"

    def release(self, marker: Marker) -> None:
        """Delete this namespace's records below the marker's offset, unless a newer run
        took the namespace over (:class:`FencedError`: they may be its in-flight states)."""
        self._delete(("DELETE FROM records WHERE namespace=? AND id<?",
                      (marker.namespace, marker.offsets.get(0, 0))))

    def discard_other_runs(self) -> None:
        """Delete every other namespace's records and fences, fenced as :meth:`release`."""
        self._delete(("DELETE FROM records WHERE namespace<>?", (self.namespace,)),
                     ("DELETE FROM fences WHERE namespace<>?", (self.namespace,)))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                if self._failure is None:  # else the buffer has nothing it can keep
                    self._write()
            finally:
                self._closed = True
                self._db.close()


def _row_counts(total: int, most: int) -> Iterator[int]:
    """How many rows each INSERT of a batch of ``total`` writes (``most`` at most)."""
    full, rest = divmod(total, most)
    yield from [most] * full
    for unit in _REMAINDER_UNITS:
        if rest >= unit:
            yield rest - rest % unit
            rest %= unit


@functools.lru_cache(maxsize=64)
def _insert_rows(count: int) -> str:
    """An INSERT of ``count`` rows."""
    return _INSERT + ",(?,?,?)" * (count - 1)


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
