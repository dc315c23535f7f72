"""Sources and sinks in the program's own memory: an iterable of records in, a
callback out (for runs started from Python, see :func:`actionstate.run`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from actionstate.connectors.base import InputRecord, Item, Rejected
from actionstate.connectors.files import Refused, check_key, field_key
from actionstate.errors import ConfigError, InputError

__all__ = ["CallbackSink", "IterableSource"]

_BATCH = 256


class IterableSource:
    """Records from an iterable or async iterable; each a JSON-able dict (or any value,
    with ``key`` a function).

    ``key`` is the record field holding the agent key, or a function of the record
    returning it. The position is the number of records admitted: after a crash,
    a restore skips that many, so the iterable must give the same records in the
    same order on every run (a list, a file read again, a query with a fixed order),
    like a file that may only grow.
    """

    def __init__(self, records: Iterable[Any] | AsyncIterable[Any],
                 key: str | Callable[[Any], str], *, name: str = "iterable") -> None:
        if not isinstance(records, Iterable | AsyncIterable):
            raise ConfigError(f"source {records!r} is not an iterable or async iterable of "
                              "records: give a list, a generator or an async generator")
        self._records, self._key, self.name = records, key, name
        self._skip = 0
        self._count = 0

    def describe(self) -> str:
        return f"{self.name} source"

    def restore(self, state: dict[str, Any] | None) -> None:
        if state is None:
            self._skip = self._count = 0
            return
        if state.get("kind") != "iterable":
            raise ConfigError(f"the checkpoint was taken with another input ({state}), not "
                              f"{self.describe()}: use the same input, or a new state dir")
        self._skip = self._count = int(state["count"])

    async def batches(self) -> AsyncIterator[Sequence[Item]]:
        batch: list[Item] = []
        index = 0
        async for record in _aiter(self._records):
            index += 1
            if index <= self._skip:
                continue
            batch.append(self._item(record, index))
            if len(batch) == _BATCH:
                yield batch
                batch = []
        if index < self._skip:
            raise InputError(
                f"{self.describe()} gave {index} records, fewer than the {self._skip} the "
                "checkpoint had read: give the same records again (it may only grow), or "
                "use a new state dir")
        if batch:
            yield batch

    def _item(self, record: Any, index: int) -> Item:
        where = f"{self.describe()}, record {index}"
        try:
            if callable(self._key):
                key = check_key(self._key(record), "the key function's result", "key=")
            else:
                if not isinstance(record, dict):
                    raise Refused("not a dict; give dicts, or a key function (key=)")
                key = field_key(record, self._key, "key=")
        except Refused as refused:
            raw = json.dumps(record, default=repr, ensure_ascii=False).encode()
            return Rejected(f"{where}: {refused}", raw, None, index, index)
        return InputRecord(key, record, index, index)

    def admitted(self, item: Item) -> None:
        self._count = item.mark

    def state(self) -> dict[str, Any]:
        return {"kind": "iterable", "count": self._count}

    def close(self) -> None:
        pass


async def _aiter(records: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(records, AsyncIterable):
        async for record in records:
            yield record
    else:
        for record in records:
            yield record


class CallbackSink:
    """Calls ``callback(key, output)`` for each output, in order, on the runner's loop.

    At least once: an output reaches the callback when it is durable (with
    ``group`` durability, after its group commit). After a crash, the outputs
    delivered since the last checkpoint are delivered again (the inputs behind
    them run again, their recorded calls replayed, not paid again). For exactly
    once, write to a file or a Kafka topic.
    """

    def __init__(self, callback: Callable[[str, Any], object], *, name: str = "callback") -> None:
        if not callable(callback):
            raise ConfigError(f"sink {callback!r} is not callable: give a function of "
                              "(key, output)")
        self._callback, self.name = callback, name
        self._count = 0

    def describe(self) -> str:
        return f"{self.name} sink"

    def restore(self, state: dict[str, Any] | None) -> None:
        self._count = 0 if state is None else int(state.get("count", 0))

    def write(self, outputs: Sequence[tuple[str, Any]]) -> None:
        for key, output in outputs:
            self._callback(key, output)
            self._count += 1

    def prepare(self) -> dict[str, Any]:
        return {"kind": "callback", "count": self._count}

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass
