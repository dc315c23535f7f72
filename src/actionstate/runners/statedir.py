"""The state directory of a run: format marker, lock, checkpoint, default store.

A checkpoint is one SQLite transaction in ``checkpoint.db``: a head row (the
:class:`~actionstate.checkpoint.Checkpoint` as JSON: positions, marker, inputs
in flight) and one row per key (its next seq and its short-term memory). A
checkpoint rewrites the head and only the keys that changed since the last
one; a restore reads the head, and a key's row when the key shows up again.
State dirs of format 1 (the whole checkpoint in ``checkpoint.json``) are read
and move to the new layout with their next checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from actionstate.checkpoint import Checkpoint
from actionstate.connectors.files import why_unwritable
from actionstate.errors import ConfigError, IncompatibleStateError, StateLockedError
from actionstate.private import create_private, private_dir, warn_if_exposed
from actionstate.records.crypto import Keyring, is_sealed_text, missing_key, text_parts
from actionstate.records.untag import untag
from actionstate.records.values import stored_json, wire

__all__ = ["STATE_FORMAT", "StateDir"]

STATE_FORMAT = 2
_READS = (1, STATE_FORMAT)  # format 1: the checkpoint in checkpoint.json

_SCHEMA = """
CREATE TABLE IF NOT EXISTS head (id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key TEXT PRIMARY KEY, next_seq INTEGER NOT NULL, memory TEXT NOT NULL
);
"""

KeyState = tuple[int, dict[str, Any]]
"""A key's checkpointed state: (next seq, short-term memory as of its last completed input)."""


class StateDir:
    """A directory that one live run holds: ``actionstate.json``, ``lock``,
    ``checkpoint.db`` and, by default, the SQLite store ``state.db``."""

    def __init__(self, path: str | Path, *, sealed_ok: bool = False) -> None:
        self.path = Path(path)
        self.keyring = Keyring.from_env()
        """Seals the checkpoint's inputs in flight and each key's memory (None: clear)."""
        self.sealed_ok = sealed_ok
        """Read what is sealed with a key not configured as ``Sealed`` (inspection)."""
        self.sealed_head: str | None = None
        """The key id of the last loaded checkpoint's sealed part, when it stayed sealed."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--state {self.path} is a file, not a directory: give a "
                              "directory path")
        try:
            created = private_dir(self.path)
        except OSError as exc:
            raise _unwritable(self.path, exc) from None
        if not created:
            warn_if_exposed(self.path, "state dir")
        self._lock: IO[str] | None = None
        self._db: sqlite3.Connection | None = None
        marker = self.path / "actionstate.json"
        if marker.exists():
            try:
                found = json.loads(marker.read_text())["format"]
            except (ValueError, KeyError, TypeError):
                found = None
            if found not in _READS or isinstance(found, bool):
                raise IncompatibleStateError(
                    f"state dir {self.path} has format {found!r}, this actionstate uses "
                    f"{STATE_FORMAT}: run the version that wrote it, or use a new --state"
                )
            self._format = found
        else:
            try:
                write_atomic(marker, {"format": STATE_FORMAT})
            except OSError as exc:
                raise _unwritable(self.path, exc) from None
            self._format = STATE_FORMAT

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.db"

    @property
    def legacy_checkpoint_path(self) -> Path:
        """Where format 1 kept the whole checkpoint (read, then removed)."""
        return self.path / "checkpoint.json"

    @property
    def default_store_url(self) -> str:
        return f"sqlite://{(self.path / 'state.db').resolve()}"

    def lock(self) -> None:
        """Hold the directory for this process (released when it exits, even by kill -9)."""
        try:
            create_private(self.path / "lock")
            f = open(self.path / "lock", "a+")
        except OSError as exc:
            raise _unwritable(self.path, exc) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise StateLockedError(
                f"state dir {self.path} is in use by a live run (pid {holder}): wait for it "
                "to finish or stop it; two runs must not share a state dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock = f

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def load_checkpoint(self) -> Checkpoint | None:
        """The last committed checkpoint, or None. Its per-key state is read with
        :meth:`key_state` (from a format 1 state dir: in the checkpoint itself)."""
        path = self.checkpoint_path
        if path.exists() or path.is_symlink():
            row = self._read(path, lambda db: db.execute(
                "SELECT body FROM head WHERE id = 1").fetchone())
            if row is not None:
                return self._parse(path, row[0])
        legacy = self.legacy_checkpoint_path
        if not legacy.exists():
            return None
        try:
            text = legacy.read_bytes()
        except OSError as exc:
            raise IncompatibleStateError(
                f"checkpoint {legacy} cannot be read ({exc.strerror or exc}): restore it or "
                "use a new --state") from None
        return self._parse(legacy, text)

    def key_state(self, key: str) -> KeyState | None:
        """The checkpointed state of ``key``, or None for a key never checkpointed."""
        return self.key_states_of([key]).get(key)

    def key_states_of(self, keys: list[str]) -> dict[str, KeyState]:
        """The checkpointed states of those of ``keys`` that have one (one query)."""
        if self._db is None and not self.checkpoint_path.exists():
            return {}
        found: dict[str, KeyState] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = self._read(self.checkpoint_path, lambda db, chunk=chunk: db.execute(
                "SELECT key, next_seq, memory FROM keys WHERE key IN "
                f"({','.join('?' * len(chunk))})", chunk).fetchall())
            for key, next_seq, memory in rows:
                found[key] = self._key_row(key, next_seq, memory)
        return found

    def key_states(self) -> Iterator[tuple[str, int, dict[str, Any]]]:
        """Every checkpointed key, in key order: (key, next seq, short-term memory)."""
        if not self.checkpoint_path.exists():
            return
        rows = self._read(self.checkpoint_path, lambda db: db.execute(
            "SELECT key, next_seq, memory FROM keys ORDER BY key").fetchall())
        for key, next_seq, memory in rows:
            yield (key, *self._key_row(key, next_seq, memory))

    def save_checkpoint(self, checkpoint: Checkpoint,
                        changed: Mapping[str, KeyState] | None = None, *,
                        fresh: bool = False) -> int:
        """Commit ``checkpoint`` and the keys in ``changed`` in one transaction (a crash
        leaves the old or the new one); ``fresh`` forgets every key first. Returns the
        bytes of JSON written (head and key rows)."""
        data = wire({"format": STATE_FORMAT, **checkpoint.to_json()}, "the checkpoint")
        if self.keyring is not None:
            data = self._seal_head(data, self.keyring)
        head = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        rows = [(key, next_seq, self._memory_text(key, memory))
                for key, (next_seq, memory) in (changed or {}).items()]
        try:
            db = self._connect()
            with db:  # BEGIN ... COMMIT, or ROLLBACK on error
                if fresh:
                    db.execute("DELETE FROM keys")
                db.executemany("INSERT OR REPLACE INTO keys VALUES (?, ?, ?)", rows)
                db.execute("INSERT OR REPLACE INTO head VALUES (1, ?)", (head,))
        except sqlite3.Error as exc:
            raise ConfigError(
                f"checkpoint {self.checkpoint_path} cannot be written ({exc}): give a --state "
                "directory that can be written") from None
        except OSError as exc:
            raise _unwritable(self.path, exc) from None
        if self._format != STATE_FORMAT:  # format 1 moved over with this checkpoint
            self.legacy_checkpoint_path.unlink(missing_ok=True)
            write_atomic(self.path / "actionstate.json", {"format": STATE_FORMAT})
            self._format = STATE_FORMAT
        return len(head) + sum(len(key) + len(memory) for key, _, memory in rows)

    def _memory_text(self, key: str, memory: dict[str, Any]) -> str:
        text = stored_json(memory, "short-term memory of key ", repr(key))
        if self.keyring is None:
            return text
        return self.keyring.seal_text(text, _memory_aad(key))

    @staticmethod
    def _seal_head(data: dict[str, Any], keyring: Keyring) -> dict[str, Any]:
        """The checkpoint head with its payloads sealed into ``"sealed"``: the inputs in
        flight, and the ``records`` every connector's state holds (a Kafka output's or
        dead letter's open transaction; any field of the head whose state has
        ``records``, so that one added later is not missed). Positions, marker and
        counters stay readable."""
        data, secret = dict(data), {"pending": data["pending"]}
        data["pending"] = []
        held: dict[str, Any] = {}
        for name, state in data.items():
            if isinstance(state, dict) and "records" in state:
                state = dict(state)
                held[name] = state.pop("records")
                data[name] = state
        if held:
            secret["records"] = held
        plain = json.dumps(secret, ensure_ascii=False, separators=(",", ":"))
        data["sealed"] = keyring.seal(plain.encode("utf-8", "surrogatepass"), _HEAD_AAD)
        return data

    def _open_head(self, path: Path, data: dict[str, Any]) -> None:
        sealed = data.pop("sealed")
        where = f"checkpoint {path}"
        key_id = sealed[0] if isinstance(sealed, list) and sealed else None
        if (self.keyring is None or key_id not in self.keyring.ids) and self.sealed_ok:
            self.sealed_head = str(key_id)
            return
        if self.keyring is None:
            raise missing_key(str(key_id), where, None)
        secret = json.loads(self.keyring.open(sealed, _HEAD_AAD, where), object_hook=untag)
        data["pending"] = secret["pending"]
        held = dict(secret.get("records", {}))
        if "sink_records" in secret:  # written before every connector's records were sealed
            held["sink"] = secret["sink_records"]
        for name, records in held.items():
            if not isinstance(data.get(name), dict):
                raise IncompatibleStateError(
                    f"{where} holds sealed records of {name!r} but no {name!r} state: it "
                    "was changed outside actionstate; restore it or use a new --state")
            data[name]["records"] = records

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            create_private(self.checkpoint_path)  # its -wal and -shm files take its mode
            db = sqlite3.connect(self.checkpoint_path, isolation_level=None,
                                 check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")  # a commit is on disk
                db.executescript(_SCHEMA)
            except BaseException:
                db.close()
                raise
            db.isolation_level = "DEFERRED"  # `with db:` opens and commits a transaction
            self._db = db
        return self._db

    def _read(self, path: Path, query: Any) -> Any:
        try:
            return query(self._connect())
        except sqlite3.Error as exc:
            self.close()
            raise IncompatibleStateError(
                f"checkpoint {path} cannot be read ({exc}): it was changed outside "
                "actionstate; restore it or use a new --state") from None

    def _parse(self, path: Path, text: str | bytes) -> Checkpoint:
        try:
            data = json.loads(text, object_hook=untag)
        except ValueError as exc:
            raise IncompatibleStateError(
                f"checkpoint {path} is not valid JSON ({exc}): it was changed outside "
                "actionstate; restore it or use a new --state"
            ) from None
        if not isinstance(data, dict) or "format" not in data:
            raise IncompatibleStateError(
                f"checkpoint {path} is not a JSON object with a 'format' field: it was "
                "changed outside actionstate; restore it or use a new --state")
        if "sealed" in data:
            self._open_head(path, data)
        found = data["format"]
        if found not in _READS or isinstance(found, bool):
            raise IncompatibleStateError(
                f"checkpoint {path} has format {found!r}, "
                f"this actionstate uses {STATE_FORMAT}: use the version that wrote it"
            )
        return Checkpoint.from_json(data, str(path))

    def _key_row(self, key: str, next_seq: Any, memory: str) -> KeyState:
        if type(next_seq) is not int or next_seq < 0:
            raise IncompatibleStateError(
                f"checkpoint {self.checkpoint_path} holds no next seq for key {key!r} (found "
                f"{next_seq!r}): it was changed outside actionstate; restore it or use a new "
                "--state")
        return next_seq, self._memory(key, memory)

    def _memory(self, key: str, text: str) -> dict[str, Any]:
        if is_sealed_text(text):
            where = f"checkpoint {self.checkpoint_path}, memory of key {key!r}"
            key_id = text_parts(text, where)[0]
            if self.keyring is None or key_id not in self.keyring.ids:
                if self.sealed_ok:
                    return {"encrypted with key": key_id}
                raise missing_key(key_id, where, self.keyring)
            text = self.keyring.open_text(text, _memory_aad(key), where)
        try:
            memory = json.loads(text, object_hook=untag)
        except ValueError:
            memory = None
        if not isinstance(memory, dict):
            raise IncompatibleStateError(
                f"checkpoint {self.checkpoint_path} holds no short-term memory object for "
                f"key {key!r}: it was changed outside actionstate; restore it or use a new "
                "--state")
        return memory


_HEAD_AAD = b"checkpoint head"


def _memory_aad(key: str) -> bytes:
    return f"memory\0{key}".encode("utf-8", "surrogatepass")


def _unwritable(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"--state {path} cannot be written: {why_unwritable(exc)}; give a directory "
        "that can be created and written")


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON so that a crash leaves the old or the new file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    create_private(tmp)
    with open(tmp, "wb") as f:
        f.write(json.dumps(wire(data, path.name), ensure_ascii=False,
                           separators=(",", ":")).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
