"""The recovery marker and the checkpoint: typed, versioned values, read and written here.

A :class:`Marker` is what a store needs to come back: the run namespace, where
in each partition a rebuild starts, and the fence in force there. A
:class:`Checkpoint` is what a runner needs: the marker plus the source and
sink positions, per-key sequence numbers and short-term memory (as of each
key's last completed input), and the inputs in flight.

Both are plain JSON. ``version`` 4 is written: the per-key state is not in it
but in rows beside it (see :class:`~actionstate.runners.statedir.StateDir`), so
that a checkpoint costs what changed, not every key ever seen; the source and
sink positions are what the source and sink say (a file's, a Kafka topic's...).
Versions 1 (the first release's dicts, whose marker had one ``epoch`` for every
partition), 2 (with ``next_seq`` and ``short_term`` inline) and 3 (file
positions only) are read. A file source's ``sha256`` (the SHA-256 of the
input's bytes before its offset) is optional: a checkpoint without it (version
1, or written before it existed) restores without checking that the input is
unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeGuard

from actionstate.errors import ConfigError, IncompatibleStateError

__all__ = ["CHECKPOINT_VERSION", "Checkpoint", "Marker", "PendingInput", "is_count",
           "offsets_text"]

CHECKPOINT_VERSION = 4


@dataclass(frozen=True)
class Marker:
    """Where a store's rebuild starts.

    Attributes:
        namespace: the run namespace the records were written under.
        offsets: per partition, the first record a rebuild reads (the first record
            of the oldest state still held, else the end of the log when taken).
        fences: per partition, the epoch of the fence in force just before that
            offset: a record read after it with a lower epoch is a zombie's.
        epoch: the epoch of the writer that took the marker (for people reading it).
    """

    namespace: str
    offsets: dict[int, int]
    fences: dict[int, int] = field(default_factory=dict)
    epoch: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "epoch": self.epoch,
                "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
                "fences": {str(p): e for p, e in sorted(self.fences.items())}}

    @classmethod
    def from_json(cls, data: Any) -> Marker:
        """Read a marker; raises :class:`ConfigError` naming it when it is not one."""
        try:
            offsets = {int(p): int(o) for p, o in data["offsets"].items()}
            epoch = int(data.get("epoch", 0))
            if "fences" in data:
                fences = {int(p): int(e) for p, e in data["fences"].items()}
            else:  # version 1: one epoch, in force from the start of every partition
                fences = dict.fromkeys(offsets, epoch)
            return cls(str(data["namespace"]), offsets, fences, epoch)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError(
                f"recovery marker {data!r} is not one this store wrote: restore from "
                "the checkpoint that came with it, or start fresh with no marker"
            ) from None


@dataclass(frozen=True)
class PendingInput:
    """An input read but not finished at the checkpoint: run again on restore."""

    key: str
    seq: int
    record: Any
    line: int


@dataclass
class Checkpoint:
    """Everything a runner restores from (see the module doc)."""

    job: str
    marker: Marker
    store: str
    source: dict[str, Any]
    """The source's position (:meth:`~actionstate.connectors.base.Source.state`). A
    file's is ``{"path", "offset", "line"[, "sha256"]}`` (the SHA-256 of the input's
    bytes before ``offset``; None: not known); another source's names its ``kind``."""
    sink: dict[str, Any]
    """The sink's prepared state (:meth:`~actionstate.connectors.base.Sink.prepare`).
    A file's is ``{"path", "offset"}``; another sink's names its ``kind``."""
    next_seq: dict[str, int] = field(default_factory=dict)
    """Read from a version 1 or 2 checkpoint only (later ones keep it per key, beside)."""
    short_term: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Read from a version 1 or 2 checkpoint only, like ``next_seq``."""
    pending: list[PendingInput] = field(default_factory=list)
    epoch: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    time: float = field(default_factory=time.time)
    dead_letter: dict[str, Any] | None = None
    """The dead-letter sink's prepared state, when the run has one."""
    event_log: dict[str, Any] | None = None
    """``{"path", "offset"}`` of the event log when the run writes one: a restore cuts
    it back there, as it does the output file."""
    agent: str | None = None
    """The agent as ``/abs/path/file.py:Class``, when its class comes from a file:
    ``actionstate inspect`` loads it to read the agent's own event types back."""
    summary: dict[str, Any] | None = None
    """What the run that took the checkpoint had done by then, as ``--summary`` writes it
    (calls per function, latencies...): ``actionstate inspect --json`` shows it."""
    job_stats: dict[str, int] = field(default_factory=dict)
    """The counters of every run of the job so far, each as of its last checkpoint (this
    run's included; empty in checkpoints written before it was kept):
    :meth:`job_totals`."""

    def job_totals(self) -> dict[str, int]:
        """What every run of the job did, each up to its last checkpoint (from a
        checkpoint that does not keep it: the counters of the run that took it)."""
        return dict(self.job_stats or self.stats)

    def to_json(self) -> dict[str, Any]:
        data = {
            "version": CHECKPOINT_VERSION, "job": self.job, "time": self.time,
            "source": self.source, "sink": self.sink,
            "pending": [[p.key, p.seq, p.record, p.line] for p in self.pending],
            "store": self.store, "marker": self.marker.to_json(), "epoch": self.epoch,
            "stats": self.stats,
        }
        if self.dead_letter is not None:
            data["dead_letter"] = self.dead_letter
        if self.event_log is not None:
            data["event_log"] = self.event_log
        if self.agent is not None:
            data["agent"] = self.agent
        if self.summary is not None:
            data["summary"] = self.summary
        if self.job_stats:
            data["job_stats"] = self.job_stats
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> Checkpoint:
        """Read a checkpoint of version 1 to 4; ``where`` names it in errors.

        Every field is checked for its type (a count is a non-negative integer, not
        a bool or a string): a field that is missing or of the wrong type raises
        :class:`IncompatibleStateError` naming the checkpoint and the field.
        """
        version = data.get("version", 1)
        if version not in (1, 2, 3, CHECKPOINT_VERSION) or isinstance(version, bool):
            raise IncompatibleStateError(
                f"checkpoint {where} has version {version!r}, this actionstate reads 1 to "
                f"{CHECKPOINT_VERSION}: use the version that wrote it")
        inline = version < 3  # per-key state inside the checkpoint itself
        read = _Fields(data, where)
        source, sink = read.obj("source"), read.obj("sink")
        if "kind" not in source.data:  # a file: checked here, the rest by their sources
            source.text("path"), source.count("offset"), source.count("line")
            digest = source.get("sha256")
            if digest is not None and not _is_sha256(digest):
                read.bad("source.sha256", "a hex SHA-256")
        if "kind" not in sink.data:
            sink.text("path"), sink.count("offset")
        dead_letter = read.obj("dead_letter").data if "dead_letter" in data else None
        event_log = None
        if "event_log" in data:
            log = read.obj("event_log")
            log.text("path"), log.count("offset")
            event_log = log.data
        try:
            marker = Marker.from_json(read.obj("marker").data)
        except ConfigError:
            read.bad("marker", "a recovery marker")
        return cls(
            job=read.text("job"), marker=marker, store=read.text("store", ""),
            source=source.data, sink=sink.data, dead_letter=dead_letter, event_log=event_log,
            next_seq=read.counts("next_seq") if inline else {},
            short_term={key: read.obj("short_term").obj(key).data
                        for key in read.obj("short_term").data} if inline else {},
            pending=[read.pending(i, item) for i, item in enumerate(read.items("pending"))],
            epoch=read.count("epoch", 0), stats=read.mapping("stats", {}),
            time=read.number("time", 0.0),
            agent=read.text("agent") if "agent" in data else None,
            summary=read.obj("summary").data if "summary" in data else None,
            job_stats=read.counts("job_stats", {}),
        )


def offsets_text(offsets: dict[str, Any]) -> str:
    """A topic position's ``offsets`` (next offset per partition, as a source's state
    saves them) in words: ``"0:12, 1:7"``, in sorted order of the partitions' names."""
    return ", ".join(f"{p}:{o}" for p, o in sorted(offsets.items()))


_REQUIRED: Any = object()


class _Fields:
    """Typed reads of one JSON object of a checkpoint; errors name the field's path."""

    def __init__(self, data: Any, where: str, path: str = "") -> None:
        self.data, self.where, self.path = data, where, path

    def bad(self, name: str, expected: str) -> NoReturn:
        raise IncompatibleStateError(
            f"checkpoint {self.where} has a missing or malformed field {self.path + name!r} "
            f"(expected {expected}): it was changed outside actionstate; restore it or use "
            "a new --state")

    def _get(self, name: str, default: Any, expected: str) -> Any:
        if name in self.data:
            return self.data[name]
        if default is _REQUIRED:
            self.bad(name, expected)
        return default

    def get(self, name: str) -> Any:
        return self.data.get(name)

    def obj(self, name: str) -> _Fields:
        value = self._get(name, _REQUIRED, "an object")
        if not isinstance(value, dict):
            self.bad(name, "an object")
        return _Fields(value, self.where, f"{self.path}{name}.")

    def items(self, name: str) -> list[Any]:
        value = self._get(name, _REQUIRED, "a list")
        if not isinstance(value, list):
            self.bad(name, "a list")
        return value

    def text(self, name: str, default: Any = _REQUIRED) -> str:
        value = self._get(name, default, "a string")
        if not isinstance(value, str):
            self.bad(name, "a string")
        return value

    def count(self, name: str, default: Any = _REQUIRED) -> int:
        value = self._get(name, default, "a non-negative integer")
        if not is_count(value):
            self.bad(name, "a non-negative integer")
        return int(value)

    def number(self, name: str, default: Any = _REQUIRED) -> float:
        value = self._get(name, default, "a number")
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.bad(name, "a number")
        return float(value)

    def counts(self, name: str, default: Any = _REQUIRED) -> dict[str, int]:
        value = self._get(name, default, "an object of non-negative integers")
        if not isinstance(value, dict) or not all(is_count(v) for v in value.values()):
            self.bad(name, "an object of non-negative integers")
        return dict(value)

    def mapping(self, name: str, default: Any = _REQUIRED) -> dict[str, Any]:
        value = self._get(name, default, "an object")
        if not isinstance(value, dict):
            self.bad(name, "an object")
        return dict(value)

    def pending(self, index: int, item: Any) -> PendingInput:
        if not (isinstance(item, list) and len(item) == 4 and isinstance(item[0], str)
                and is_count(item[1]) and is_count(item[3])):
            self.bad(f"pending[{index}]", "[key, seq, record, line]")
        key, seq, record, line = item
        return PendingInput(key, seq, record, line)



def is_count(value: Any) -> TypeGuard[int]:
    """Whether ``value`` is a count: a non-negative integer, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_sha256(value: Any) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))
