"""The event log: one JSON line per event an agent handled.

Each record is ``{"context": {"event_type", "key", "seq", "action", "time",
"replayed"}, "event": {...}}``; ``action`` is the action that sent the event
(None for the input). :func:`read_event_log` reads records back with the
events rebuilt into their own classes. Levels: ``off``, ``standard`` (events)
and ``verbose`` (events, plus one record per action run with its calls).

An input's records are collected while it runs (:meth:`EventLogger.batch`) and
written when the runner takes the input as done, beside its outputs; a checkpoint
records the log's size (:meth:`EventLogger.prepare`) and a restore cuts the log
back to it (:meth:`EventLogger.restore`). So across crashes every input's records
appear once, as its outputs do: an input redone after a crash is logged by the run
that finishes it, with ``replayed`` true for events that actions recorded before
the crash sent again (docs/eventlog.md).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, get_args

from actionstate.errors import ConfigError
from actionstate.events import Event, event_type_name
from actionstate.records.state import StateKey
from actionstate.records.untag import untag
from actionstate.records.values import wire

__all__ = ["REDACTED", "EventBatch", "EventLogLevel", "EventLogRecord", "EventLogger",
           "FieldRedaction", "Redactor", "cut_back", "read_event_log"]

EventLogLevel = Literal["off", "standard", "verbose"]
LEVELS: tuple[EventLogLevel, ...] = get_args(EventLogLevel)

REDACTED = "[redacted]"
Redactor = Callable[[str, dict[str, Any]], dict[str, Any]]
"""(event type name, the event's fields as JSON) -> the fields the log shows."""


class FieldRedaction:
    """Keeps named fields out of the log: per event type (its name as the log's
    ``event_type`` shows it, e.g. ``actionstate.InputEvent``, or the class name alone,
    ``InputEvent``; ``*`` for every type), dotted paths into the event's
    fields (``input.card.number``; a list on the way applies the rest of the path to
    each element). A redacted field's value becomes ``"[redacted]"``; a path an event
    does not have is skipped."""

    def __init__(self, fields: Mapping[str, Iterable[str]]) -> None:
        self._paths: dict[str, list[list[str]]] = {}
        for event_type, paths in fields.items():
            if isinstance(paths, str):
                paths = [paths]
            for path in paths:
                parts = path.split(".")
                if not event_type or not all(parts):
                    raise ConfigError(f"event log redaction {event_type}:{path} is not "
                                      "TYPE:field[.field...]: name an event type (or *) and "
                                      "a field path")
                self._paths.setdefault(event_type, []).append(parts)

    @classmethod
    def parse(cls, specs: Iterable[str]) -> FieldRedaction:
        """From ``TYPE:field[.field][,field...]`` strings (the CLI's ``--redact``)."""
        fields: dict[str, list[str]] = {}
        for spec in specs:
            event_type, sep, paths = spec.rpartition(":")
            if not sep or not event_type:
                raise ConfigError(f"--redact {spec!r} is not TYPE:field[,field...]: e.g. "
                                  "--redact InputEvent:input.email or --redact '*:password'")
            fields.setdefault(event_type, []).extend(p.strip() for p in paths.split(","))
        return cls(fields)

    def __call__(self, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
        short = event_type.rpartition(".")[2]
        paths = [*self._paths.get(event_type, ()), *self._paths.get("*", ()),
                 *(self._paths.get(short, ()) if short != event_type else ())]
        for path in paths:
            data = _without(data, path)
        return data


def _without(value: Any, path: list[str]) -> Any:
    """``value`` with the field at ``path`` redacted (a copy along the path; ``value``
    itself is not changed)."""
    if isinstance(value, list):
        return [_without(item, path) for item in value]
    if not isinstance(value, dict) or path[0] not in value:
        return value
    copy = dict(value)
    copy[path[0]] = REDACTED if len(path) == 1 else _without(value[path[0]], path[1:])
    return copy


@dataclass(frozen=True)
class EventLogRecord:
    """One logged event and the context it was handled in."""

    event: Event
    key: str
    seq: int
    action: str | None
    time: float
    replayed: bool


class EventBatch:
    """The records of one input, kept until the runner takes the input as done."""

    def __init__(self, level: EventLogLevel, redact: Redactor | None = None) -> None:
        self.level = level
        self.redact = redact
        self.lines: list[str] = []  # list.append is atomic: ``def`` actions' threads log retries
        self.failure: ConfigError | None = None
        """The redaction's failure on a retry record (raised by the runner after the action:
        the action itself could catch it)."""

    @property
    def verbose(self) -> bool:
        return self.level == "verbose"

    def event(self, event: Event, key: str, seq: int, action: str | None,
              replayed: bool) -> None:
        """Log one event."""
        if self.level == "off":
            return
        type_name = event_type_name(type(event))
        record = {
            "context": {"event_type": type_name, "key": key, "seq": seq,
                        "action": action, "time": time.time(), "replayed": replayed},
            "event": self._redacted(type_name, event.to_json()["data"]),
        }
        self._write(record)

    def action_run(self, key: str, seq: int, action: str, replayed: bool,
                   calls: list[dict[str, Any]]) -> None:
        """Log one action run and its durable calls (verbose level only)."""
        if not self.verbose:
            return
        record = {"context": {"event_type": "action_run", "key": key, "seq": seq,
                              "action": action, "time": time.time(), "replayed": replayed},
                  "calls": calls}
        self._write(record)

    def retry(self, state_key: StateKey, position: int, function: str, attempt: int,
              error: BaseException, wait: float) -> None:
        """Log a failed attempt of a durable call that will be tried again; the redaction
        sees its ``call`` fields (``error`` among them) under the type ``call_retry``."""
        if self.level == "off":
            return
        try:  # called inside the action, which could catch an error: kept for the runner
            call = self._redacted("call_retry", {
                "position": position, "function": function, "attempt": attempt,
                "error": f"{type(error).__name__}: {error}", "wait": wait})
        except ConfigError as exc:
            self.failure = exc
            return
        record = {"context": {"event_type": "call_retry", "key": state_key.key,
                              "seq": state_key.seq, "action": state_key.action,
                              "time": time.time(), "replayed": False},
                  "call": call}
        self._write(record)

    def _redacted(self, type_name: str, data: dict[str, Any]) -> dict[str, Any]:
        if self.redact is None:
            return data
        try:
            return self.redact(type_name, data)
        except Exception as exc:
            raise ConfigError(f"the event log's redaction failed on a {type_name} record "
                              f"({type(exc).__name__}: {exc}): fix the redact function; "
                              "nothing of this input was logged") from None

    def _write(self, record: dict[str, Any]) -> None:
        self.lines.append(
            json.dumps(wire(record, "an event log record"), ensure_ascii=False) + "\n")


class EventLogger:
    """Appends event log records to a JSONL file (nothing at level ``off``), an
    input's at a time."""

    def __init__(self, path: str | Path | None, level: EventLogLevel = "standard",
                 redact: Redactor | Mapping[str, Iterable[str]] | None = None) -> None:
        """``redact`` keeps sensitive fields out of the log, for first runs and replays
        alike: a :class:`FieldRedaction` mapping (event type -> field paths), or a
        function ``(event type, fields) -> fields``."""
        if level not in LEVELS:
            raise ConfigError(f"unknown event log level {level!r}: use one of {LEVELS}")
        self.level: EventLogLevel = level if path is not None else "off"
        self.path = Path(path) if path is not None else None
        self.redact: Redactor | None = (
            FieldRedaction(redact) if isinstance(redact, Mapping) else redact)
        self._file: IO[str] | None = None
        self._lock = threading.Lock()
        if self.level != "off" and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")

    @property
    def verbose(self) -> bool:
        return self.level == "verbose"

    def batch(self) -> EventBatch:
        """A batch for one input's records (see :meth:`write`)."""
        return EventBatch(self.level, self.redact)

    def write(self, lines: list[str]) -> None:
        """Append an input's records, once the runner takes the input as done."""
        if not lines:
            return
        with self._lock:
            if self._file is not None:
                self._file.write("".join(lines))

    def prepare(self) -> dict[str, Any] | None:
        """Make the records so far durable (flush, fsync); the state a checkpoint keeps:
        the log's path and size (None: no log)."""
        with self._lock:
            if self._file is None or self.path is None:
                return None
            self._file.flush()
            os.fsync(self._file.fileno())
            return {"path": str(self.path.resolve()),
                    "offset": os.fstat(self._file.fileno()).st_size}

    def restore(self, state: dict[str, Any] | None) -> None:
        """Cut the log back to a checkpoint's size: what the lost run logged after it is
        logged again by the run that redoes those inputs. Nothing happens without a
        state (a first start appends to what the file holds), or when the checkpoint
        was taken with another log file."""
        with self._lock:
            if self._file is None or self.path is None or state is None:
                return
            if state.get("path") != str(self.path.resolve()):
                return
            offset = int(state["offset"])
            size = cut_back(self._file, self.path, offset)
            if size is not None:  # rotated or cut by the user: theirs to keep, appended to
                logging.getLogger(__name__).warning(
                    "event log %s is shorter (%d bytes) than at the last checkpoint (%d "
                    "bytes): it was rotated or changed outside actionstate; appending to it "
                    "without cutting back (records of inputs redone now may repeat "
                    "earlier ones)", self.path, size, offset)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def cut_back(file: IO[Any], path: Path, offset: int) -> int | None:
    """Flush ``file`` (open for appending to ``path``) and cut it back to ``offset``
    bytes (a checkpoint's size), leaving the position at the new end. Returns None, or
    the file's size when it is shorter than ``offset``: then nothing is cut, and the
    caller reports it (the event log warns, the JSONL sink refuses)."""
    file.flush()
    size = path.stat().st_size
    if size < offset:
        return size
    file.truncate(offset)
    file.seek(0, os.SEEK_END)
    return None


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
