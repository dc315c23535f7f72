"""Reading a run's records back from the topic, partition by partition, between two
offsets, with a consumer of the store's own."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from actionstate.errors import StoreError
from actionstate.records.index import Position
from actionstate.stores.kafka.config import client
from actionstate.stores.kafka.failures import passes, settle_error
from actionstate.stores.kafka.topic import KafkaTopic

__all__ = ["RebuildReader", "check_log_starts", "close_reader", "past_end", "reader", "scan"]

_BATCH = 256
"""Messages taken from the consumer at a time: about 0.3 MB, decoded while in the CPU
cache (1,000 at a time: 6% slower; 10,000: also a 20 ms wait before the first)."""

_READ_STALL = 60.0
"""Seconds a read may go without any message or end-of-partition event before it fails."""


def reader(config: Mapping[str, Any], topic: str, start: Mapping[int, int]) -> Any:
    """A consumer with ``config`` assigned to ``topic``'s partitions at ``start``: it
    connects and fetches in the background from now on."""
    consumer = client(Consumer, config)
    consumer.assign([TopicPartition(topic, p, first) for p, first in start.items()])
    return consumer


def scan(
    topic: KafkaTopic, config: Mapping[str, Any], servers: str, namespace: str,
    start: dict[int, int], stop: dict[int, int],
    track: Callable[[int, int, bytes, bytes], None] | None, consumer: Any = None,
    carry: list[Any] | None = None, continued: bool = False,
) -> Iterator[tuple[Position, bytes, str]]:
    """The records of ``namespace`` from ``start`` up to (excluding) ``stop``, per partition
    in log order: (position, value, where), ``where`` naming the record in errors.

    A consumer with ``config`` reads them from ``servers`` (named in errors) and is
    closed here; or ``consumer``, which the caller closes (and whose range it checked
    with :func:`check_log_starts`): a :func:`reader` at ``start``, or (``continued``) the
    consumer of the read before, which ended at ``start``.
    ``carry``, if given, gets the messages the read took past its stop (the consumer
    fetches on), and a continued read takes them first. ``track``, if given, is told of
    each (partition, offset, key head, key counter).

    Raises:
        StoreError: the records are gone (retention or delete-records), the read stalled,
            or the broker answered with an error that does not pass (or passed too long).
    """
    name = topic.name
    ranges = {p: (start.get(p, 0), end) for p, end in stop.items() if start.get(p, 0) < end}
    owned = consumer is None
    messages: list[Any] = []
    if carry:
        messages = carry[:]
        carry.clear()
    try:  # a consumer made here is closed whatever happens
        if not ranges:
            if carry is not None:
                carry += messages
            return
        if owned:
            check_log_starts(topic, ranges)
        ns = namespace.encode()
        where = f"kafka topic {name} partition "
        if consumer is None:
            consumer = reader(config, name, {p: first for p, (first, _) in ranges.items()})
        elif continued:  # those with nothing to read last time were paused
            consumer.resume([TopicPartition(name, p) for p in ranges])
        else:  # assigned at every partition's start: those with nothing to read wait
            consumer.pause([tp for tp in consumer.assignment() if tp.partition not in ranges])
        last_event = time.monotonic()
        settling: float | None = None  # since when only passing errors came
        while ranges:
            if not messages:
                # Block for one message, then take what is already queued, without waiting.
                polled = consumer.poll(0.5)
                if polled is not None:
                    messages = [polled, *consumer.consume(num_messages=_BATCH, timeout=0)]
            now = time.monotonic()
            if now - last_event > _READ_STALL:
                raise StoreError(
                    f"reading Kafka topic {name} from {servers} stalled for "
                    f"{_READ_STALL:g}s with partitions {sorted(ranges)} unfinished: check "
                    "the broker (scripts/services/kafka status for the local one) and retry")
            batch, messages = messages, []
            for message in batch:
                p, offset = message.partition(), message.offset()
                bounds = ranges.get(p)
                if bounds is None:  # past the stop (read through, or nothing to read)
                    if carry is not None and message.error() is None:
                        carry.append(message)
                    continue
                error = message.error()
                if error is None:  # a record: the common case first
                    last_event, settling = now, None
                    if offset + 1 >= bounds[1]:
                        del ranges[p]  # (not paused: a pause call costs ~0.2 ms)
                        if offset >= bounds[1]:  # (compaction left a gap before it)
                            if carry is not None:
                                carry.append(message)
                            continue
                    key, value = message.key(), message.value()
                    if value is None or key is None:
                        continue
                    head, _, counter = key.rpartition(b"/")
                    if head.rpartition(b"/")[0] != ns:
                        continue
                    if track is not None:
                        track(p, offset, head, counter)
                    yield (p, offset), value, f"{where}{p} offset {offset}"
                    continue
                code = error.code()
                if code in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
                    raise StoreError(
                        f"Kafka topic {name} partition {p} no longer has the "
                        f"records from offset {bounds[0]} a rebuild needs ({error.str()})"
                        ": they were deleted (retention or delete-records), so the states "
                        "they held are lost; restore from a newer checkpoint or start "
                        "fresh without one")
                if code != KafkaError._PARTITION_EOF:
                    if not passes(error):
                        raise StoreError(
                            f"cannot read Kafka topic {name} partition {p} from "
                            f"{servers} ({error.str()}): check the broker and retry")
                    # The consumer retries by itself (a topic still settling).
                    settling = now if settling is None else settling
                    if now - settling > topic.timeout:
                        raise settle_error(
                            f"read Kafka topic {name} partition {p}", error,
                            servers, topic.timeout)
                    continue
                last_event, settling = now, None
                if offset >= bounds[1]:
                    del ranges[p]
    finally:
        if owned and consumer is not None:
            close_reader(consumer)


class RebuildReader:
    """A rebuild's consumer: opened before the claim, so that it connects and fetches
    while the claim is written (~20 ms before its first record, ~30 ms for the fences
    of 64 partitions), and kept from one of the rebuild's reads to the next, with the
    messages it took past the last read's stop.

    The range is checked before the consumer exists: one closed while it handles an
    offset out of range can hang for good in librdkafka (confluentinc/librdkafka#4514,
    open), and a rebuild that finds the range gone closes it at once.
    """

    def __init__(self, topic: KafkaTopic, config: Mapping[str, Any], servers: str,
                 namespace: str, start: Mapping[int, int], ends: Mapping[int, int],
                 partitions: int) -> None:
        self.start = {p: start.get(p, 0) for p in range(partitions)}
        check_log_starts(topic, {p: (first, end) for p, first in self.start.items()
                                 if first < (end := ends.get(p, 0))})
        self.topic, self.config, self.servers, self.namespace = topic, config, servers, namespace
        self.consumer = reader(config, topic.name, self.start)
        self.carry: list[Any] | None = None  # None: not read yet
        self.taken = False

    def serves(self, namespace: str, start: Mapping[int, int]) -> bool:
        """Whether a read of ``namespace`` from ``start`` is this reader's to do."""
        return not self.taken and namespace == self.namespace and all(
            first == start.get(p, 0) for p, first in self.start.items())

    def read(self, namespace: str, start: dict[int, int], stop: dict[int, int],
             track: Callable[[int, int, bytes, bytes], None] | None,
             keep: Callable[[], bool]) -> Iterator[tuple[Position, bytes, str]]:
        """:func:`scan` with this consumer, taken once the read begins (a read never
        begun leaves it to the rebuild to close). Read through while ``keep()``, it
        goes on from ``stop`` (the claim's fences, after the records before it); else
        it is closed."""
        self.taken = True
        continued = self.carry is not None
        self.carry = self.carry if self.carry is not None else []
        kept = False
        try:
            yield from scan(self.topic, self.config, self.servers, namespace, start, stop,
                            track, self.consumer, self.carry, continued)
            if keep():
                self.start = {p: stop.get(p, 0) for p in self.start}
                self.taken = False
                kept = True
        finally:
            if not kept:
                self.close()

    def close(self) -> None:
        close_reader(self.consumer)


def past_end(topic: str, part: int, first: int, end: int) -> str:
    """Why a marker past a partition's end is refused (see ``ActionStateStore._past_end``)."""
    return (f"Kafka topic {topic} partition {part} ends at offset {end}, but the recovery "
            f"marker starts at offset {first}: the topic was deleted and created again (or "
            "emptied) since the checkpoint, so the states it held are lost; start fresh "
            "without a checkpoint, or restore the topic")


def check_log_starts(topic: KafkaTopic, ranges: Mapping[int, tuple[int, int]]) -> None:
    """StoreError unless ``topic`` still has the records of ``ranges`` (partition:
    (start, stop), each start below its stop)."""
    if not ranges:
        return
    log_starts = topic.start_offsets(ranges)
    for p, (first, _) in sorted(ranges.items()):
        if first < log_starts[p]:
            raise StoreError(
                f"Kafka topic {topic.name} partition {p} starts at offset {log_starts[p]}, "
                f"but the recovery marker needs its records from offset {first}: they were "
                "deleted (retention or delete-records), so the states they held are lost; "
                "restore from a newer checkpoint or start fresh without one")


def close_reader(consumer: Any) -> None:
    """Close a consumer, best effort."""
    try:
        consumer.close()
    except (KafkaException, RuntimeError):  # closing is best effort
        pass
