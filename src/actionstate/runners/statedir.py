"""The state directory of a run: format marker, lock, checkpoint, default store."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO, Any

from actionstate.checkpoint import Checkpoint
from actionstate.errors import ConfigError, IncompatibleStateError, StateLockedError
from actionstate.records.canonical import untag, wire
from actionstate.runners.files import why_unwritable

__all__ = ["STATE_FORMAT", "StateDir"]

STATE_FORMAT = 1


class StateDir:
    """A directory that one live run holds: ``actionstate.json``, ``lock``,
    ``checkpoint.json`` and, by default, the SQLite store ``state.db``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--state {self.path} is a file, not a directory: give a "
                              "directory path")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unwritable(self.path, exc) from None
        self._lock: IO[str] | None = None
        marker = self.path / "actionstate.json"
        if marker.exists():
            try:
                found = json.loads(marker.read_text())["format"]
            except (ValueError, KeyError, TypeError):
                found = None
            if found != STATE_FORMAT:
                raise IncompatibleStateError(
                    f"state dir {self.path} has format {found!r}, this actionstate uses "
                    f"{STATE_FORMAT}: run the version that wrote it, or use a new --state"
                )
        else:
            try:
                write_atomic(marker, {"format": STATE_FORMAT})
            except OSError as exc:
                raise _unwritable(self.path, exc) from None

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.json"

    @property
    def default_store_url(self) -> str:
        return f"sqlite://{(self.path / 'state.db').resolve()}"

    def lock(self) -> None:
        """Hold the directory for this process (released when it exits, even by kill -9)."""
        try:
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
        """The last committed checkpoint, or None."""
        path = self.checkpoint_path
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_bytes(), object_hook=untag)
        except OSError as exc:
            raise IncompatibleStateError(
                f"checkpoint {path} cannot be read ({exc.strerror or exc}): restore it or "
                "use a new --state") from None
        except ValueError as exc:
            raise IncompatibleStateError(
                f"checkpoint {path} is not valid JSON ({exc}): it was changed outside "
                "actionstate; restore it or use a new --state"
            ) from None
        if not isinstance(data, dict) or "format" not in data:
            raise IncompatibleStateError(
                f"checkpoint {path} is not a JSON object with a 'format' field: it was "
                "changed outside actionstate; restore it or use a new --state")
        found = data["format"]
        if found != STATE_FORMAT or isinstance(found, bool):
            raise IncompatibleStateError(
                f"checkpoint {path} has format {found!r}, "
                f"this actionstate uses {STATE_FORMAT}: use the version that wrote it"
            )
        return Checkpoint.from_json(data, str(path))

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Commit ``checkpoint`` atomically (write, fsync, rename, fsync dir)."""
        try:
            write_atomic(self.checkpoint_path,
                         {"format": STATE_FORMAT, **checkpoint.to_json()})
        except OSError as exc:
            raise _unwritable(self.path, exc) from None


def _unwritable(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"--state {path} cannot be written: {why_unwritable(exc)}; give a directory "
        "that can be created and written")


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON so that a crash leaves the old or the new file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
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
