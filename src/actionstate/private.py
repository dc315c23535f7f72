"""Files only their owner reads: the state dir and what actionstate writes into it.

What a run records is what its agents saw and said. The state dir is made
0700 and every file actionstate creates in it (and a SQLite store file
anywhere) 0600, whatever the umask: each file is created with that mode, not
chmod-ed after, so there is no moment at which another user can open it.
SQLite's ``-wal`` and ``-shm`` files take the mode of their database file.

Outputs (``--output``, dead letters, the event log) are the user's files and
follow the user's umask.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "create_private", "exposed", "private_dir", "warn_if_exposed"]

DIR_MODE = 0o700
FILE_MODE = 0o600

log = logging.getLogger("actionstate")


def private_dir(path: Path) -> bool:
    """Create directory ``path`` (and missing parents) with mode 0700; returns True when
    ``path`` itself was created. Parents are created as ``mkdir -p`` would."""
    if path.is_dir():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return False
    os.chmod(path, DIR_MODE)  # mkdir's mode is masked by the umask
    return True


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (an existing file is left
    as it is)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, FILE_MODE)  # os.open's mode is masked by the umask
    finally:
        os.close(fd)


def exposed(directory: Path) -> list[str]:
    """What in ``directory`` (itself and the files directly in it) other users can read or
    enter, as ``"name (mode 0644)"``: empty when everything is private."""
    found: list[str] = []
    try:
        entries = [directory, *sorted(directory.iterdir())]
    except OSError:
        return found
    for entry in entries:
        try:
            mode = stat.S_IMODE(entry.lstat().st_mode)
        except OSError:
            continue
        if mode & 0o077 and not entry.is_symlink():
            name = str(directory) if entry == directory else entry.name
            found.append(f"{name} (mode {mode:04o})")
    return found


def warn_if_exposed(directory: Path, what: str) -> None:
    """Log a warning naming the fix when other users can read ``directory`` or its files."""
    found = exposed(directory)
    if found:
        log.warning("%s %s is readable by other users: %s; run `chmod -R go-rwx %s` to make "
                    "it private", what, directory, ", ".join(found), directory)
