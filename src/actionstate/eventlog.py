"""The event log: one JSON line per event an agent handled.

Each record is ``{"context": {"event_type", "key", "seq", "action", "time",
"replayed"}, "event": {...}}``; ``action`` is the action that sent the event
(None for the input). :func:`read_event_log` reads records back with the
events rebuilt into their own classes. Levels: ``off``, ``standard`` (events)
and ``verbose`` (events, plus one record per action run with its calls).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, get_args

from actionstate.errors import ConfigError
from actionstate.events import Event, event_type_name
from actionstate.records.canonical import untag, wire
from actionstate.records.state import StateKey

__all__ = ["EventLogLevel", "EventLogRecord", "EventLogger", "read_event_log"]

EventLogLevel = Literal["off", "standard", "verbose"]
LEVELS: tuple[EventLogLevel, ...] = get_args(EventLogLevel)


@dataclass(frozen=True)
class EventLogRecord:
    """One logged event and the context it was handled in."""

    event: Event
    key: str
    seq: int
    action: str | None
    time: float
    replayed: bool


class EventLogger:
    """Appends event log records to a JSONL file (nothing at level ``off``)."""

    def __init__(self, path: str | Path | None, level: EventLogLevel = "standard") -> None:
        if level not in LEVELS:
            raise ConfigError(f"unknown event log level {level!r}: use one of {LEVELS}")
        self.level = level if path is not None else "off"
        self._file: IO[str] | None = None
        self._lock = threading.Lock()  # retries are logged from ``def`` actions' threads
        if self.level != "off" and path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")

    @property
    def verbose(self) -> bool:
        return self.level == "verbose"

    def event(self, event: Event, key: str, seq: int, action: str | None,
              replayed: bool) -> None:
        """Log one event."""
        if self._file is None:
            return
        record = {
            "context": {"event_type": event_type_name(type(event)), "key": key, "seq": seq,
                        "action": action, "time": time.time(), "replayed": replayed},
            "event": event.to_json()["data"],
        }
        self._write(record)

    def action_run(self, key: str, seq: int, action: str, replayed: bool,
                   calls: list[dict[str, Any]]) -> None:
        """Log one action run and its durable calls (verbose level only)."""
        if self._file is None or not self.verbose:
            return
        record = {"context": {"event_type": "action_run", "key": key, "seq": seq,
                              "action": action, "time": time.time(), "replayed": replayed},
                  "calls": calls}
        self._write(record)

    def retry(self, state_key: StateKey, position: int, function: str, attempt: int,
              error: BaseException, wait: float) -> None:
        """Log a failed attempt of a durable call that will be tried again."""
        if self._file is None:
            return
        record = {"context": {"event_type": "call_retry", "key": state_key.key,
                              "seq": state_key.seq, "action": state_key.action,
                              "time": time.time(), "replayed": False},
                  "call": {"position": position, "function": function, "attempt": attempt,
                           "error": f"{type(error).__name__}: {error}", "wait": wait}}
        self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(wire(record, "an event log record"), ensure_ascii=False) + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_event_log(path: str | Path) -> Iterator[EventLogRecord]:
    """Event records of a log file (action-run records are skipped), events in their own classes."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            raw = json.loads(line, object_hook=untag)
            ctx = raw["context"]
            if "event" not in raw:
                continue
            cls_event = Event.from_json({"type": ctx["event_type"], "data": raw["event"]})
            yield EventLogRecord(cls_event, ctx["key"], ctx["seq"], ctx["action"], ctx["time"],
                                 ctx["replayed"])
