"""The recovery marker and the checkpoint: typed, versioned values, read and written here.

A :class:`Marker` is what a store needs to come back: the run namespace, where
in each partition a rebuild starts, and the fence in force there. A
:class:`Checkpoint` is what a runner needs: the marker plus the source and
sink positions, per-key sequence numbers and short-term memory (as of each
key's last completed input), and the inputs in flight.

Both are plain JSON on disk. ``version`` 2 is written; version 1 (the first
release's dicts, whose marker had one ``epoch`` for every partition) is read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from actionstate.errors import ConfigError, IncompatibleStateError

__all__ = ["CHECKPOINT_VERSION", "Checkpoint", "Marker", "PendingInput"]

CHECKPOINT_VERSION = 2


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
    source_path: str
    sink_path: str
    source_offset: int = 0
    source_line: int = 0
    sink_offset: int = 0
    next_seq: dict[str, int] = field(default_factory=dict)
    short_term: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: list[PendingInput] = field(default_factory=list)
    epoch: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION, "job": self.job, "time": self.time,
            "source": {"path": self.source_path, "offset": self.source_offset,
                       "line": self.source_line},
            "sink": {"path": self.sink_path, "offset": self.sink_offset},
            "next_seq": self.next_seq, "short_term": self.short_term,
            "pending": [[p.key, p.seq, p.record, p.line] for p in self.pending],
            "store": self.store, "marker": self.marker.to_json(), "epoch": self.epoch,
            "stats": self.stats,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> Checkpoint:
        """Read a checkpoint of version 1 or 2; ``where`` names it in errors."""
        version = data.get("version", 1)
        if version not in (1, CHECKPOINT_VERSION):
            raise IncompatibleStateError(
                f"checkpoint {where} has version {version!r}, this actionstate reads 1 and "
                f"{CHECKPOINT_VERSION}: use the version that wrote it")
        try:
            return cls(
                job=str(data["job"]), marker=Marker.from_json(data["marker"]),
                store=str(data.get("store", "")),
                source_path=str(data["source"]["path"]),
                source_offset=int(data["source"]["offset"]),
                source_line=int(data["source"]["line"]),
                sink_path=str(data["sink"]["path"]), sink_offset=int(data["sink"]["offset"]),
                next_seq={str(k): int(v) for k, v in data["next_seq"].items()},
                short_term=dict(data["short_term"]),
                pending=[PendingInput(str(k), int(s), r, int(line))
                         for k, s, r, line in data["pending"]],
                epoch=int(data.get("epoch", 0)), stats=dict(data.get("stats", {})),
                time=float(data.get("time", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IncompatibleStateError(
                f"checkpoint {where} is missing or has a malformed field ({exc!r}): it was "
                "changed outside actionstate; restore it or use a new --state") from None
