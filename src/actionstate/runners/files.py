"""JSONL file source (positions are byte offsets) and exactly-once JSONL file sink."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from actionstate.errors import ConfigError, InputError
from actionstate.records.canonical import to_wire_default

__all__ = ["InputRecord", "JsonlSink", "JsonlSource"]


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One decoded input line and where the next one starts."""

    key: str
    record: Any
    line: int
    next_offset: int


class JsonlSource:
    """Reads JSON objects, one per line, keyed by the field ``key_field``."""

    def __init__(self, path: str | Path, key_field: str) -> None:
        self.path = Path(path)
        self.key_field = key_field
        if not self.path.is_file():
            raise ConfigError(f"input file {self.path} does not exist: check --input")

    def read(self, offset: int = 0, line: int = 0) -> Iterator[InputRecord]:
        """Records starting at byte ``offset``, which is line number ``line`` (0-based)."""
        with open(self.path, "rb") as f:
            f.seek(offset)
            for raw in f:
                offset += len(raw)
                line += 1
                if not raw.strip():
                    continue
                yield self._decode(raw, line, offset)

    def _decode(self, raw: bytes, line: int, next_offset: int) -> InputRecord:
        where = f"{self.path}:{line}"
        try:
            record = json.loads(raw.decode("utf-8", errors="replace"))
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{where}: not a JSON object ({exc.msg} at column {exc.colno}); fix or "
                "remove that line and run again: completed work is kept"
            ) from None
        if not isinstance(record, dict) or self.key_field not in record:
            raise InputError(
                f"{where}: record has no key field {self.key_field!r}; give each line "
                "that field, or choose another with --key"
            )
        return InputRecord(str(record[self.key_field]), record, line, next_offset)


class JsonlSink:
    """Appends one JSON line per output; truncated to a checkpoint on restore."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = open(self.path, "ab")

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
            self._file.write(json.dumps(output, ensure_ascii=False,
                                        default=to_wire_default).encode() + b"\n")

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
