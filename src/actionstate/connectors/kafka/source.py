"""The Kafka input: JSON records of a topic's partitions, read committed, from the
offsets a checkpoint saved."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as TP

from actionstate.connectors.base import InputRecord, Item, Rejected
from actionstate.connectors.files import KEY_OF_MESSAGE, Refused, decode_object, record_key
from actionstate.connectors.kafka.endpoint import Endpoint, parse_endpoint, unreachable
from actionstate.errors import (
    ConfigError,
    ConnectorError,
    IncompatibleStateError,
    InputError,
    StoreError,
)
from actionstate.stores.kafka.config import client
from actionstate.stores.kafka.failures import passes, reason
from actionstate.stores.kafka.topic import retrying
from actionstate.stores.options import Option

__all__ = ["KEY_OF_MESSAGE", "KafkaSource", "decode_message", "refusal"]

log = logging.getLogger("actionstate.connectors.kafka")


_BATCH, _WAIT = 500, 0.2


class KafkaSource:
    """Reads JSON objects from ``topic`` (every partition, or those selected), keyed by
    a field of the record or (``"@key"``) by the message key.

    Partitions are assigned, never subscribed: no consumer group, no offsets committed;
    the position is what :meth:`state` returns, saved with the runner's checkpoints. It
    reads with ``isolation.level=read_committed``: records of aborted or still open
    transactions are never inputs. With ``until_end`` the batches end once every
    partition reached the end it had when :meth:`restore` ran.
    """

    def __init__(self, endpoint: Endpoint, key: str, partitions: list[int] | None,
                 until_end: bool) -> None:
        self.endpoint, self.key, self.until_end = endpoint, key, until_end
        configs = endpoint.configs
        self._consumer: Consumer = client(Consumer, {
            **configs.common, **configs.consumer,
            "group.id": "actionstate-input", "enable.auto.commit": False,
            "isolation.level": "read_committed", "enable.partition.eof": True})
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-input")
        self._closed = False
        try:
            found = self._consumer.list_topics(endpoint.topic, timeout=endpoint.timeout)
        except KafkaException as exc:
            self.close()
            raise unreachable(endpoint, exc) from None
        metadata = found.topics.get(endpoint.topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            self.close()
            raise ConfigError(
                f"Kafka input topic {endpoint.topic} does not exist on {endpoint.servers}"
                f"{f' ({metadata.error.str()})' if metadata and metadata.error else ''}: "
                "create it, or fix the topic in the input URL")
        existing = sorted(metadata.partitions)
        missing = sorted(set(partitions or ()) - set(existing))
        if missing:
            self.close()
            raise ConfigError(
                f"Kafka input topic {endpoint.topic} has no partition "
                f"{','.join(map(str, missing))} (it has {len(existing)}: 0-{existing[-1]}): fix "
                "the partitions option")
        self.partitions = sorted(set(partitions)) if partitions else existing
        self._saved: dict[str, int] = {}  # the restored state's offsets (other partitions kept)
        self._admitted: dict[int, int] = {}  # partition -> next offset after admitted items
        self._read: dict[int, int] = {}  # partition -> next offset to read
        self._yielded: dict[int, int] = {}  # partition -> next offset after the last item
        self._eof: dict[int, tuple[int, int | None]] = {}  # partition -> (end, _yielded then)
        self._ends: dict[int, int] = {}
        self._starts: dict[int, int] = {}  # partition -> its first offset at the restore
        self._restored = False

    @classmethod
    def from_url(cls, url: str, key: str, *, until_end: bool = False,
                 options: Mapping[str, str] | None = None) -> KafkaSource:
        """The source of ``kafka://host:port[,host:port]/topic?partitions=0,2&...``.

        Options (URL query or ``options``): ``partitions`` (comma-separated; default
        every partition), ``kafkaConnectTimeoutMs`` (10000) and librdkafka properties
        (names with a dot: ``security.protocol``, ``sasl.*``, ``ssl.*``, ...). The topic
        must exist; a broker that does not answer within the timeout is a
        :class:`ConnectorError`.
        """
        endpoint, parsed = parse_endpoint("input", url, options, [Option("partitions")])
        listed = parsed.values["partitions"]
        selected: list[int] | None = None
        if listed:
            try:
                selected = [int(p) for p in listed.split(",") if p.strip()]
            except ValueError:
                selected = [-1]
            if not selected or min(selected) < 0:
                raise ConfigError(f"Kafka input option partitions={listed!r} must list "
                                  "partition numbers: partitions=0,2")
        if not key:
            raise ConfigError("the Kafka input needs a key: a JSON field name of the records, "
                              "or @key for the Kafka message key")
        return cls(endpoint, key, selected, until_end)

    def describe(self) -> str:
        return f"input topic {self.endpoint.url}"

    def restore(self, state: dict[str, Any] | None) -> None:
        """Read each partition from the offset ``state`` saved, or from its beginning
        (``None``, or a partition the state does not name). An offset the partition no
        longer holds (deleted by retention, or the topic recreated) is an
        :class:`InputError`."""
        endpoint = self.endpoint
        saved_offsets: dict[str, int] = {}
        if state is not None:
            endpoint.check_state(state, {"offsets": dict})
            for name, offset in state["offsets"].items():
                if not (name.isdigit() and isinstance(offset, int) and offset >= 0):
                    raise IncompatibleStateError(
                        f"the state dir's Kafka input state has an invalid 'offsets' entry "
                        f"{name!r}: {offset!r}: it was written by another version or "
                        "edited; use a new --state")
            saved_offsets = dict(state["offsets"])
        assignment, reads, ends, starts = [], {}, {}, {}
        for p in self.partitions:
            low, high = self._watermarks(p)
            saved = saved_offsets.get(str(p))
            if saved is not None and not low <= saved <= high:
                where = f"Kafka input topic {endpoint.topic}[{p}]"
                if saved < low:
                    raise InputError(
                        f"{where}: the checkpoint's position is offset {saved}, but the "
                        f"partition now starts at offset {low}: the records before it "
                        "were deleted (retention) before this run read them and are lost; "
                        "raise the topic's retention.ms, and start a new --state")
                raise InputError(
                    f"{where}: the checkpoint's position is offset {saved}, but the partition "
                    f"ends at {high}: the topic was deleted and created again since; start "
                    "a new --state")
            reads[p], ends[p], starts[p] = (low if saved is None else saved), high, low
            assignment.append(TP(endpoint.topic, p, OFFSET_BEGINNING if saved is None else saved))
        self._consumer.assign(assignment)
        self._saved, self._read, self._ends, self._starts = saved_offsets, reads, ends, starts
        self._admitted, self._yielded, self._eof = {}, {}, {}
        self._restored = True

    async def batches(self) -> AsyncIterator[Sequence[Item]]:
        """Batches of up to 500 items in order (empty when nothing arrived within 0.2 s)."""
        if not self._restored:
            raise RuntimeError("KafkaSource.restore() must run before batches()")
        while not (self.until_end and self._at_end()):
            messages = await asyncio.wrap_future(
                self._pool.submit(self._consumer.consume, _BATCH, _WAIT))
            items: list[Item] = []
            for message in messages:
                item = self._item(message)
                if item is not None:
                    items.append(item)
            yield items

    def admitted(self, item: Item) -> None:
        partition, offset = item.mark
        self._admitted[partition] = offset

    def state(self) -> dict[str, Any]:
        """``{"kind": "kafka", "servers", "topic", "offsets": {"<partition>": next offset}}``.

        A partition's offset moves past an end of partition (and so past the transaction
        markers before it) only once every item read before that end was admitted."""
        offsets = dict(self._saved)
        for p, offset in self._admitted.items():
            offsets[str(p)] = offset
        for p, (end, needed) in self._eof.items():
            if needed is None or self._admitted.get(p, -1) >= needed:
                offsets[str(p)] = max(offsets.get(str(p), 0), end)
        return {**self.endpoint.identity(), "offsets": offsets}

    def close(self) -> None:
        """Close the consumer (after a consume in flight) and its thread; once."""
        if not self._closed:
            self._closed = True
            self._pool.submit(self._consumer.close).result()
            self._pool.shutdown()

    def _watermarks(self, partition: int) -> tuple[int, int]:
        """The partition's first offset and its last stable one (read committed: the
        end before the first open transaction), retried while the partition settles."""
        endpoint = self.endpoint

        def query(timeout: float) -> tuple[int, int]:
            low, high = self._consumer.get_watermark_offsets(
                TP(endpoint.topic, partition), timeout=timeout, cached=False)
            return int(low), int(high)

        try:
            return retrying(f"read the offsets of Kafka input topic {endpoint.topic}[{partition}]",
                            query, endpoint.servers, endpoint.timeout)
        except StoreError as exc:
            raise ConnectorError(str(exc)) from None
        except KafkaException as exc:
            raise ConnectorError(
                f"cannot read the offsets of Kafka input topic {endpoint.topic}[{partition}] "
                f"from {endpoint.servers} ({reason(exc)}): check this client's ACLs (Describe "
                "on the topic)") from None

    def fraction(self) -> float | None:
        """With ``until_end``, the share of the records up to the end offsets read so far
        (for progress); None for a topic without an end."""
        if not self.until_end:
            return None
        total = sum(end - self._starts[p] for p, end in self._ends.items())
        done = sum(min(self._read[p], end) - self._starts[p] for p, end in self._ends.items())
        return min(1.0, done / total) if total > 0 else 1.0

    def _at_end(self) -> bool:
        return all(self._read[p] >= end for p, end in self._ends.items())

    def _item(self, message: Message) -> Item | None:
        """The item of ``message``; None for an end of partition or an error that passes."""
        error = message.error()
        partition, offset = message.partition(), message.offset()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF and partition is not None:
                end = offset or 0
                if self.until_end:  # never past the records this run leaves unread
                    end = min(end, self._ends[partition])
                self._read[partition] = max(self._read[partition], end)
                self._eof[partition] = (end, self._yielded.get(partition))
                return None
            if passes(error) and not error.fatal():
                log.warning("Kafka input topic %s: %s; retrying", self.endpoint.topic,
                            error.str())
                return None
            raise ConnectorError(
                f"cannot read Kafka input topic {self.endpoint.topic} from "
                f"{self.endpoint.servers} ({reason(KafkaException(error))}): check the "
                "topic, this client's ACLs (Read, Describe) and the broker's log")
        assert partition is not None and offset is not None
        if self.until_end and offset >= self._ends[partition]:
            self._read[partition] = max(self._read[partition], self._ends[partition])
            return None  # produced after the run started: left for the next run
        self._read[partition] = self._yielded[partition] = offset + 1
        return self._decode(partition, offset, message.key(), message.value())

    def _decode(self, partition: int, offset: int, raw_key: bytes | None,
                raw: bytes | None) -> Item:
        mark = (partition, offset + 1)
        try:
            key, record = decode_message(raw_key, raw, self.key)
        except Refused as refused:
            return Rejected(refusal(self.endpoint.topic, partition, offset, refused),
                            raw or b"", raw_key, offset, mark)
        return InputRecord(key, record, offset, mark)


def decode_message(raw_key: bytes | None, raw: bytes | None,
                   key_field: str) -> tuple[str, dict[str, Any]]:
    """The agent key and the record of one Kafka message (as the Flink runner reads
    them too); raises :class:`Refused` saying what is wrong with it."""
    if raw is None:
        raise Refused("the record has no value (a tombstone)")
    record = decode_object(raw)
    try:  # only read when the key is the message key (@key)
        message_key = (raw_key.decode("utf-8")
                       if raw_key is not None and key_field == KEY_OF_MESSAGE else None)
    except UnicodeDecodeError:
        raise Refused("the message key is not valid UTF-8: produce UTF-8 keys, "
                      "or choose a JSON field with --key") from None
    return record_key(record, key_field, message_key), record


def refusal(topic: str, partition: int, offset: int, refused: Refused) -> str:
    """The error of a refused message: where it is, what is wrong, the fixes."""
    return (f"{topic}[{partition}]@{offset}: {refused}; fix what produces to {topic}, "
            "or set such records aside with --dead-letter")
