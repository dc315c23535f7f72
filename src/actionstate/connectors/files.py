"""JSONL file source (positions are byte offsets) and exactly-once JSONL file sink."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from actionstate.connectors.base import InputRecord, Item, Rejected
from actionstate.errors import ConfigError, InputError
from actionstate.eventlog import cut_back
from actionstate.records.values import wire

__all__ = ["KEY_OF_MESSAGE", "JsonlSink", "JsonlSource", "Refused", "SourceDigest",
           "check_key", "decode_object", "field_key", "record_key", "why_unwritable"]

KEY_OF_MESSAGE = "@key"
"""The key field that takes an input's agent key from its message's own key (Kafka)."""

_BATCH = 256
"""Lines read at a time: a runner looks up the keys of a batch together."""


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
    """Reads JSON objects, one per line, keyed by the field ``key_field``.

    Its position is a byte offset and a line number, with the SHA-256 of the bytes
    before it: lines may be appended between runs, and a restore refuses a file whose
    bytes before the position changed.
    """

    def __init__(self, path: str | Path, key_field: str) -> None:
        self.path = Path(path)
        self.key_field = key_field
        if not self.path.exists():
            raise ConfigError(f"input file {self.path} does not exist: check --input")
        if not self.path.is_file():
            raise ConfigError(f"input {self.path} is not a regular file: check --input")
        self._offset = 0
        self._line = 0
        self._digest = SourceDigest()

    def describe(self) -> str:
        return f"input file {self.path}"

    def restore(self, state: dict[str, Any] | None) -> None:
        if state is None:
            self._offset, self._line, self._digest = 0, 0, SourceDigest()
            return
        recorded = state.get("path") if "kind" not in state else _describe(state)
        if recorded != str(self.path.resolve()):
            raise ConfigError(f"the checkpoint was taken with --input {recorded}, not "
                              f"{self.path}: use the same input, or a new --state")
        self._offset, self._line = int(state["offset"]), int(state["line"])
        # The input must hold the same bytes before the checkpoint's position (lines
        # may only be appended); a checkpoint without a digest is not checked.
        self._digest = self.digest_before(self._offset, self._line, state.get("sha256"))

    async def batches(self) -> AsyncIterator[Sequence[Item]]:
        batch: list[Item] = []
        for item in self.read(self._offset, self._line):
            batch.append(item)
            if len(batch) == _BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def admitted(self, item: Item) -> None:
        next_offset, raw = item.mark
        self._offset, self._line = next_offset, item.where
        self._digest.update(raw)

    def state(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "offset": self._offset, "line": self._line,
                "sha256": self._digest.hexdigest()}

    def fraction(self) -> float:
        """The share of the file's bytes read so far (for progress)."""
        size = os.stat(self.path).st_size
        return min(1.0, self._offset / size) if size else 1.0

    def close(self) -> None:
        pass

    def read(self, offset: int = 0, line: int = 0) -> Iterator[Item]:
        """Items starting at byte ``offset``, which is line number ``line`` (0-based);
        blank lines are skipped (their bytes go with the next item's mark)."""
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

    def _decode(self, consumed: bytes, raw: bytes, line: int, next_offset: int) -> Item:
        mark = (next_offset, consumed)
        try:
            record = decode_object(raw)
            key = field_key(record, self.key_field, "--key")
        except Refused as refused:
            return Rejected(f"{self.path}:{line}: {refused}; fix or remove that line (or set "
                            "such lines aside with --dead-letter) and run again: completed "
                            "work is kept", raw.rstrip(b"\r\n"), None, line, mark)
        return InputRecord(key, record, line, mark)


class Refused(Exception):
    """Why a record cannot be an input (the caller adds where it is)."""


def decode_object(raw: bytes) -> dict[str, Any]:
    """A record's JSON object; raises :class:`Refused` saying what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte "
                      f"{exc.start + 1}); write records as UTF-8") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Refused(f"not a JSON object ({exc.msg} at column {exc.colno}); give each "
                      "record one JSON object") from None
    if not isinstance(record, dict):
        raise Refused(f"not a JSON object ({_json_type(record)}); give each record one "
                      "JSON object")
    return record


def field_key(record: dict[str, Any], key_field: str, option: str) -> str:
    """The agent key the field ``key_field`` holds; raises :class:`Refused` when it is
    missing or not a string (``option`` names the setting that chose the field)."""
    if key_field not in record:
        raise Refused(f"record has no key field {key_field!r}; give each record that "
                      f"field, or choose another with {option}")
    return check_key(record[key_field], f"key field {key_field!r}", option)


def record_key(record: dict[str, Any], key_field: str, message_key: str | None) -> str:
    """The agent key of a decoded record with a message key (Kafka): the field
    ``key_field``, or with :data:`KEY_OF_MESSAGE` the message key; raises
    :class:`Refused` when it is missing or not a string."""
    if key_field != KEY_OF_MESSAGE:
        return field_key(record, key_field, "--key (@key: the message key)")
    if message_key is None:
        raise Refused("the record has no message key (null), and the input takes its "
                      "keys from message keys (@key): produce keyed records, or choose a "
                      "JSON field with --key")
    return check_key(message_key, "the message key", "--key")


def check_key(key: Any, what: str, option: str) -> str:
    """``key`` if it can be an agent key (a string); raises :class:`Refused` otherwise."""
    if not isinstance(key, str):
        found = "null" if key is None else f"{_json_type(key)} ({json.dumps(key)[:40]})"
        raise Refused(
            f"{what} is {found}, not a string; keys must be JSON strings, so that 5 and "
            "\"5\" are never one key: quote the key (\"5\"), give the record a key, or "
            f"choose another field with {option}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused(f"{what} holds an unpaired surrogate escape (\\ud800-\\udfff); fix "
                      "the key") from None
    return key


def _describe(state: dict[str, Any]) -> str:
    """What a source or sink state of another kind names (its URL, as it can)."""
    if "servers" in state and "topic" in state:
        return f"{state['kind']}://{state['servers']}/{state['topic']}"
    return f"a {state['kind']} connector"


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
    """Appends one JSON line per output; cut back to the checkpoint's offset on restore."""

    def __init__(self, path: str | Path, *, overwrite: bool = False,
                 role: str = "--output") -> None:
        self.path = Path(path)
        self.overwrite, self.role = overwrite, role
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[bytes] = open(self.path, "ab")
        except OSError as exc:
            raise ConfigError(
                f"--output {self.path} cannot be opened for writing: {why_unwritable(exc)}; "
                "give a file path in a directory that can be created and written") from None

    def describe(self) -> str:
        return f"output file {self.path}"

    def restore(self, state: dict[str, Any] | None) -> None:
        if state is None:
            self._file.flush()
            size = self.path.stat().st_size
            if size and not self.overwrite:
                raise ConfigError(
                    f"{self.role} {self.path} already holds {size} bytes, and this is a "
                    "first run (its --state has no checkpoint), which would replace them: "
                    "give another file, pass --overwrite to replace it, or resume with the "
                    "--state that wrote it")
            self._file.truncate(0)  # flushed above
            self._file.seek(0, os.SEEK_END)
            return
        recorded = state.get("path") if "kind" not in state else _describe(state)
        if recorded != str(self.path.resolve()):
            raise ConfigError(f"the checkpoint was taken with --output {recorded}, not "
                              f"{self.path}: use the same output, or a new --state")
        self.truncate(int(state["offset"]))

    def truncate(self, offset: int) -> None:
        """Drop everything after ``offset`` (outputs not covered by the checkpoint)."""
        size = cut_back(self._file, self.path, offset)
        if size is not None:
            raise ConfigError(
                f"output file {self.path} is shorter ({size} bytes) than the checkpoint "
                f"says ({offset} bytes): it was changed outside actionstate; restore it "
                "or start with a new --state"
            )

    def write(self, outputs: Sequence[tuple[str, Any]]) -> None:
        """Append outputs (buffered; :meth:`prepare` makes them durable)."""
        for _key, output in outputs:
            self._file.write(json.dumps(wire(output, "an output"),
                                        ensure_ascii=False).encode() + b"\n")

    def prepare(self) -> dict[str, Any]:
        """Flush and fsync; the state is the file and the offset after the last output."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return {"path": str(self.path.resolve()), "offset": self._file.tell()}

    def commit(self) -> None:
        pass  # the lines are there already; a restore cuts back what no checkpoint covers

    def close(self) -> None:
        self._file.close()
