"""Which of its own records the Kafka store may delete: it remembers where each went."""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["Retention"]


@dataclass(slots=True)
class _Run:
    """Consecutive own-namespace records of one writer in one partition."""

    prefix: bytes
    offsets: array[int] = field(default_factory=lambda: array("q"))
    counters: array[int] = field(default_factory=lambda: array("q"))


class Retention:
    """The run namespace's records written or read by one store, 16 bytes each (offset
    and key counter, in runs of one writer's key prefix), and the offsets of the last
    ``retained`` checkpoints' markers: what no retained checkpoint needs may go."""

    def __init__(self, retained: int) -> None:
        self.retained = retained
        self._runs: dict[int, deque[_Run]] = {}
        self._tracked: dict[int, int] = {}
        self._markers: deque[dict[int, int]] = deque()

    def __len__(self) -> int:
        """How many records are remembered."""
        return sum(len(run.offsets) for runs in self._runs.values() for run in runs)

    def clear(self) -> None:
        """Forget everything (another namespace is used now)."""
        self._runs.clear()
        self._tracked.clear()
        self._markers.clear()

    def track(self, partition: int, offset: int, prefix: bytes, counter: bytes) -> None:
        """Remember the record ``prefix + counter`` (hex) at ``offset``; ``prefix`` ends with
        ``b"/"``. Offsets of a partition come in order, and one already tracked is ignored."""
        self.track_read(partition, offset, prefix[:-1], counter)

    def track_read(self, partition: int, offset: int, head: bytes, counter: bytes) -> None:
        """Remember the record ``head + b"/" + counter`` (hex) at ``offset`` (what
        :meth:`track` does, and a rebuild once per record read: the prefix is built only
        when a run of another writer begins)."""
        if offset <= self._tracked.get(partition, -1):
            return
        self._tracked[partition] = offset
        runs = self._runs.get(partition)
        if runs is None:
            runs = self._runs[partition] = deque()
        run = runs[-1] if runs else None
        if run is None or len(run.prefix) != len(head) + 1 or not run.prefix.startswith(head):
            run = _Run(head + b"/")
            runs.append(run)
        run.offsets.append(offset)
        run.counters.append(int(counter, 16))

    def checkpoint(self, offsets: Mapping[int, int]) -> Iterator[tuple[int, bytes]]:
        """Retain a checkpoint's marker ``offsets`` (now); the iterator yields (partition,
        message key) of every remembered record below the oldest retained marker, and
        forgets each run of them once it has yielded them."""
        self._markers.append(dict(offsets))
        while len(self._markers) > self.retained:
            self._markers.popleft()
        return self._expired(self._markers[0])

    def _expired(self, oldest: Mapping[int, int]) -> Iterator[tuple[int, bytes]]:
        for partition, runs in list(self._runs.items()):  # deliveries may add partitions
            below = oldest.get(partition, 0)
            while runs and runs[0].offsets[0] < below:
                run = runs[0]
                count = bisect_left(run.offsets, below)
                for counter in run.counters[:count]:
                    yield partition, run.prefix + b"%x" % counter
                if count == len(run.offsets):
                    runs.popleft()
                else:
                    del run.offsets[:count]
                    del run.counters[:count]
