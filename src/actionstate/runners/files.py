"""JSONL file source (positions are byte offsets) and exactly-once JSONL file sink."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from actionstate.errors import ConfigError, InputError
from actionstate.records.canonical import wire

__all__ = ["InputRecord", "JsonlSink", "JsonlSource", "SourceDigest"]


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One decoded input line and where the next one starts."""

    key: str
    record: Any
    line: int
    next_offset: int
    raw: bytes = b""
    """The bytes read for this record: the blank lines before it, then its line."""


class SourceDigest:
    """SHA-256 of the input's bytes before the position a run has reached, kept up
    to date as records are consumed (so checking it on restore costs one read of
    the prefix, and a run none)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, raw: bytes) -> None:
        self._hash.update(raw)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class JsonlSource:
    """Reads JSON objects, one per line, keyed by the field ``key_field``."""

    def __init__(self, path: str | Path, key_field: str) -> None:
        self.path = Path(path)
        self.key_field = key_field
        if not self.path.exists():
            raise ConfigError(f"input file {self.path} does not exist: check --input")
        if not self.path.is_file():
            raise ConfigError(f"input {self.path} is not a regular file: check --input")

    def read(self, offset: int = 0, line: int = 0) -> Iterator[InputRecord]:
        """Records starting at byte ``offset``, which is line number ``line`` (0-based)."""
        with open(self.path, "rb") as f:
            f.seek(offset)
            skipped = b""
            for raw in f:
                offset += len(raw)
                line += 1
                if not raw.strip():
                    skipped += raw
                    continue
                yield self._decode(skipped + raw if skipped else raw, raw, line, offset)
                skipped = b""

    def digest_before(self, offset: int, line: int, expected: str | None) -> SourceDigest:
        """The digest of the bytes before ``offset`` (line ``line``), read once; raises
        :class:`InputError` when the file is shorter, or (``expected`` given) when
        those bytes are not the ones a checkpoint saw."""
        size = self.path.stat().st_size
        changed = ("start a new --state to process the file as it is now (it runs "
                   "every line again), or restore the file; lines may only be appended")
        if size < offset:
            raise InputError(
                f"input file {self.path} is shorter ({size} bytes) than the checkpoint's "
                f"position (byte {offset}, after line {line}): it was truncated or "
                f"rewritten since the run that wrote the checkpoint; {changed}")
        digest = SourceDigest()
        with open(self.path, "rb") as f:
            remaining = offset
            while remaining:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
        if expected is not None and digest.hexdigest() != expected:
            raise InputError(
                f"input file {self.path} changed before the checkpoint's position (byte "
                f"{offset}, after line {line}): a line there was edited, inserted or "
                f"removed since the run that wrote the checkpoint; {changed}")
        return digest

    def _decode(self, consumed: bytes, raw: bytes, line: int, next_offset: int) -> InputRecord:
        where = f"{self.path}:{line}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{where}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte "
                f"{exc.start + 1} of the line); save the file as UTF-8, or fix or remove "
                "that line, and run again: completed work is kept"
            ) from None
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{where}: not a JSON object ({exc.msg} at column {exc.colno}); fix or "
                "remove that line and run again: completed work is kept"
            ) from None
        if not isinstance(record, dict):
            raise InputError(
                f"{where}: not a JSON object ({_json_type(record)}); give each line one "
                "object, then run again: completed work is kept")
        if self.key_field not in record:
            raise InputError(
                f"{where}: record has no key field {self.key_field!r}; give each line "
                "that field, or choose another with --key"
            )
        key = record[self.key_field]
        if not isinstance(key, str):
            found = "null" if key is None else f"{_json_type(key)} ({json.dumps(key)[:40]})"
            raise InputError(
                f"{where}: key field {self.key_field!r} is {found}, not a string; keys must "
                "be JSON strings, so that 5 and \"5\" are never one key: quote the key "
                "(\"5\"), give the line a key, or choose another field with --key")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                f"{where}: key field {self.key_field!r} holds an unpaired surrogate "
                "escape (\\ud800-\\udfff); fix the key and run again") from None
        return InputRecord(key, record, line, next_offset, consumed)


def why_unwritable(exc: OSError) -> str:
    """Why a path could not be created or opened: the OS's reason, and the file in its
    way when one of the path's parents is a regular file."""
    if exc.filename:
        for parent in [Path(exc.filename), *Path(exc.filename).parents]:
            if parent.exists() and not parent.is_dir():
                if parent == Path(exc.filename) and not isinstance(exc, FileExistsError):
                    break
                return f"{parent} is a file, not a directory"
    return str(exc.strerror or exc)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string"


class JsonlSink:
    """Appends one JSON line per output; truncated to a checkpoint on restore."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[bytes] = open(self.path, "ab")
        except OSError as exc:
            raise ConfigError(
                f"--output {self.path} cannot be opened for writing: {why_unwritable(exc)}; "
                "give a file path in a directory that can be created and written") from None

    def truncate(self, offset: int) -> None:
        """Drop everything after ``offset`` (outputs not covered by the checkpoint)."""
        self._file.flush()
        size = self.path.stat().st_size
        if size < offset:
            raise ConfigError(
                f"output file {self.path} is shorter ({size} bytes) than the checkpoint "
                f"says ({offset} bytes): it was changed outside actionstate; restore it "
                "or start with a new --state"
            )
        self._file.truncate(offset)
        self._file.seek(0, os.SEEK_END)

    def write(self, outputs: list[Any]) -> None:
        """Append outputs (buffered; :meth:`sync` makes them durable)."""
        for output in outputs:
            self._file.write(json.dumps(wire(output, "an output"),
                                        ensure_ascii=False).encode() + b"\n")

    def position(self) -> int:
        """Byte offset after the last written output."""
        self._file.flush()
        return self._file.tell()

    def sync(self) -> None:
        """Flush and fsync."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
