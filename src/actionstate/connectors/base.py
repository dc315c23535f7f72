"""What a runner reads inputs from and writes outputs to: the :class:`Source` and
:class:`Sink` protocols, and the items a source yields.

A runner drives both around its checkpoints:

* On start it calls ``restore(state)`` on each, with what their ``state()`` /
  ``prepare()`` returned for the last checkpoint (``None`` on a fresh start).
  A source then reads from the position after the last admitted input; a sink
  drops or aborts the outputs written after that checkpoint, so that the inputs
  run again do not write them twice.
* It reads batches from ``source.batches()``. Each item is an
  :class:`InputRecord` or, for a record that cannot be an input, a
  :class:`Rejected` one. It admits items in order and tells the source with
  ``admitted(item)``; ``state()`` is the position after the admitted items, and
  an input admitted but not finished at a checkpoint is saved with the
  checkpoint (and run again after a crash), so the position never runs ahead of
  the work.
* It writes each finished input's outputs with ``sink.write([(key, output),
  ...])`` once they are durable (with ``group`` durability: after the group
  commit that covers them).
* At a checkpoint it calls ``sink.prepare()`` (outputs written so far are
  durable; the returned JSON goes into the checkpoint), saves the checkpoint,
  then calls ``sink.commit()``. A sink whose outputs become visible at commit
  (a Kafka transaction) puts what it needs to finish that commit after a crash
  into the prepared state.

Every state is a JSON object, saved with the checkpoint. Positions of a source
are its own business: byte offsets and a digest in a file, per-partition
offsets in a topic, a count of items in an iterable.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["InputRecord", "Rejected", "Sink", "Source"]


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One input: its agent key, the decoded record, and where it was read.

    ``where`` is a number a person can find the record by (a file's line number, a
    partition's offset), saved with the inputs in flight; ``mark`` is what the source
    needs to move its position past the record in :meth:`Source.admitted`.
    """

    key: str
    record: Any
    where: int
    mark: Any = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that cannot be an input (not JSON, no key, ...).

    ``error`` says what is wrong and where (``path:line``, ``topic[partition]@offset``)
    and how to fix it. ``raw`` and ``raw_key`` are the record's bytes as read, for a
    dead-letter sink; ``mark`` is as in :class:`InputRecord`. A runner stops at a
    rejected record (after the inputs before it finished and were checkpointed),
    unless it has a dead-letter sink: then the record goes there and the run goes on.
    """

    error: str
    raw: bytes
    raw_key: bytes | None
    where: int
    mark: Any = None

    @property
    def key(self) -> str:
        """The dead-letter record's key: the record's own key, else ``""``."""
        return self.raw_key.decode("utf-8", "replace") if self.raw_key is not None else ""

    def letter(self, source: str) -> dict[str, Any]:
        """The dead-letter record: the error, the ``source`` and where in it, and the
        record as text (``record_base64`` instead when it is not UTF-8)."""
        try:
            text: str | None = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        letter: dict[str, Any] = {"error": self.error, "source": source, "where": self.where,
                                  "record": text}
        if text is None:
            letter["record_base64"] = base64.b64encode(self.raw).decode()
        return letter


Item = InputRecord | Rejected


@runtime_checkable
class Source(Protocol):
    """Where inputs come from (see the module doc for how a runner drives it)."""

    def describe(self) -> str:
        """What this source is, for messages: ``"input file in.jsonl"``."""
        ...

    def restore(self, state: dict[str, Any] | None) -> None:
        """Read from the position ``state`` saved (``None``: from the start). Raises
        :class:`~actionstate.errors.ConfigError` when the state is another source's,
        :class:`~actionstate.errors.InputError` when the source no longer holds what
        the state says was read."""
        ...

    def batches(self) -> AsyncIterator[Sequence[Item]]:
        """Items in order, a batch at a time (a batch may be empty: nothing arrived
        yet). The iterator ends at the end of a bounded source and runs until it is
        cancelled on an unbounded one."""
        ...

    def admitted(self, item: Item) -> None:
        """``item`` (the next one in order) is the runner's now."""
        ...

    def state(self) -> dict[str, Any]:
        """JSON: the position after the admitted items (and what identifies the source)."""
        ...

    def close(self) -> None:
        """Release the source's resources (after the last checkpoint)."""
        ...


@runtime_checkable
class Sink(Protocol):
    """Where outputs go (see the module doc for how a runner drives it)."""

    def describe(self) -> str:
        """What this sink is, for messages: ``"output file out.jsonl"``."""
        ...

    def restore(self, state: dict[str, Any] | None) -> None:
        """Go back to the checkpoint that saved ``state`` (``None``: a fresh start,
        nothing written yet): outputs written after it are dropped or aborted, and
        a commit that checkpoint prepared and a crash interrupted is finished."""
        ...

    def write(self, outputs: Sequence[tuple[str, Any]]) -> None:
        """Write ``(agent key, output)`` pairs, in order (buffered until :meth:`prepare`)."""
        ...

    def prepare(self) -> dict[str, Any]:
        """Make every output written so far durable; returns the JSON state the
        checkpoint saves (what :meth:`restore` needs)."""
        ...

    def commit(self) -> None:
        """The checkpoint holding the last :meth:`prepare` state is saved: make its
        outputs final (visible to readers that see only committed data)."""
        ...

    def close(self) -> None:
        """Release the sink's resources (after the last checkpoint)."""
        ...
