"""The Kafka store's medium: records produced to, and read back from, one compacted topic."""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Self

from confluent_kafka import KafkaError, KafkaException, Producer

from actionstate.errors import FencedError, StoreError
from actionstate.records.codec import decode_record
from actionstate.records.index import Position
from actionstate.records.state import DropRecord, FenceRecord, Record
from actionstate.stores.base import ActionStateStore, Durability, Marker
from actionstate.stores.kafka.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PARTITIONS,
    check_settings,
    client,
    parse_url,
    split_config,
)
from actionstate.stores.kafka.failures import (
    denied,
    error_of,
    hint,
    passes,
    reason,
    security_problem,
    settle_error,
)
from actionstate.stores.kafka.partition import partition_of
from actionstate.stores.kafka.retention import Retention
from actionstate.stores.kafka.scan import RebuildReader, past_end, scan
from actionstate.stores.kafka.topic import KafkaTopic

__all__ = ["WAIT_STEP", "KafkaActionStateStore"]

log = logging.getLogger("actionstate.stores.kafka")

WAIT_STEP = 5.0
"""Seconds between "still waiting for the broker" warnings while records are unacknowledged."""
_FLUSH_STEP = 0.05
"""Seconds a flush waits in librdkafka at a time before it looks at what was acknowledged
(records put meanwhile, on another thread, are left to the next flush)."""


class KafkaActionStateStore(ActionStateStore):
    """Action states as delta records in one compacted Kafka topic.

    Contract:

    * The topic is created on first use (``cleanup.policy=compact``, the configured
      partitions and replication factor); an existing topic is reused and must be
      compacted without ``delete``, else opening fails. Errors of a topic that is
      still settling (just created: partitions without a leader, leader epochs the
      broker has not caught up with) are retried for ``kafkaConnectTimeoutMs``.
    * Every record of one agent key goes to partition ``sha256(key) mod partitions``
      (the client's partitioner is not used). A claim (:class:`FenceRecord` of epoch 0)
      goes to partition 0 only, and the epoch it takes is its offset there plus one
      (the ``sync`` append returns that exact offset); a fence with an epoch (the
      pre-fence written before the claim, the exact epoch's after it) goes to every
      other partition.
    * Zombies are not refused: a fenced-off writer's records are written, and every
      rebuild ignores them (the index drops a record whose epoch is below a fence
      that precedes it in its partition).
    * Message key ``<namespace>/<writer>/<counter hex>`` is unique per record, so
      compaction never removes a delta; the value is the codec's bytes; a tombstone
      (value None) deletes a record once compaction runs.
    * The producer is idempotent with ``acks=all``. ``sync``: :meth:`append` returns
      when the broker acknowledged the record, with its real position. ``group``:
      :meth:`append` only enqueues and returns a lower bound of the record's offset
      (the partition's last known end); :meth:`flush` waits for every record. A record
      the broker did not store raises :class:`StoreError`; while the broker is
      unreachable the producer retries for ``delivery.timeout.ms`` (120 s) and the
      waiting call logs a warning every few seconds.
    * :meth:`read` consumes each partition from its start offset up to its explicit
      stop offset, skipping other namespaces and tombstones; a start offset below the
      partition's log start (records deleted) raises :class:`StoreError`.
    * :meth:`release` tombstones own-namespace records below the oldest of the last
      ``kafkaRetainedCheckpoints`` markers, after checking partition 0 for a newer claim
      (:class:`FencedError`). It remembers 16 bytes per record written (or rebuilt)
      since then; nothing else is kept per record.
    * Not thread-safe: use one store from one thread (the runner's event loop).
    """

    release_deletes = True

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        durability: Durability = "sync",
        *,
        partitions: int = DEFAULT_PARTITIONS,
        replication_factor: int = 1,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retained_checkpoints: int = 1,
        retention_ms: int | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        client_config: Mapping[str, str] | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(durability, f"kafka://{bootstrap_servers}/{topic}" if url is None
                         else url)  # the url property masks secret values
        check_settings(bootstrap_servers, topic, partitions, replication_factor,
                       retained_checkpoints, max_message_bytes, retention_ms)
        self.servers, self.topic = bootstrap_servers, topic
        self._timeout = connect_timeout
        configs = split_config(bootstrap_servers, client_config or {})
        self._common, self._reader_conf = configs.common, {**configs.common,
                                                           **configs.consumer}
        self._ahead: RebuildReader | None = None
        """A rebuild's reader, opened before its claim."""
        self._producer_conf: dict[str, Any] = {
            "linger.ms": 0 if durability == "sync" else 5,
            "batch.num.messages": 10000,
            "batch.size": 4 << 20,
            "delivery.timeout.ms": 120000,
            "message.max.bytes": max_message_bytes + 65536,
            **configs.producer,
            "enable.idempotence": True,
            "acks": "all",
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
        }
        self._writer = uuid.uuid4().hex[:16]
        self._prefix = f"{self.namespace}/{self._writer}/".encode()
        self._counter = 0
        self._produced = 0  # messages handed to the producer (by the putting thread)
        self._acknowledged = 0  # of those, the ones whose delivery report came
        self._reports = threading.Lock()
        """Delivery reports run on whichever thread polls: a put's or a flush's."""
        self._next: dict[int, int] = {}
        self._failures: list[tuple[int, KafkaError]] = []
        self._fatal: KafkaError | None = None
        self._retention = Retention(retained_checkpoints)
        self._releasing = True
        """Records are tracked for :meth:`release`: not in a store attached beside other
        writers (a Flink job's: it never releases; the topic's retention does)."""
        self._rebuilding = False
        self._closed = False
        # The producer first: it gets its idempotence producer id while the topic is
        # checked (created later, its first record waited ~0.5 s for the id).
        self._producer: Any = client(Producer, {**self._common, **self._producer_conf})
        self._topic = KafkaTopic(topic, self._common, connect_timeout)
        self.partitions = self._topic.open(partitions, replication_factor, max_message_bytes,
                                           retention_ms)
        self._next = self.end_offsets()
        self._claims_checked = 0
        """Partition 0 holds no newer claim of this namespace below this offset."""

    @classmethod
    def from_url(cls, url: str, durability: Durability = "sync", **options: Any) -> Self:
        """The store ``kafka://servers/topic?option=value`` names (see the package doc)."""
        settings = parse_url(url, options)
        return cls(settings.servers, settings.topic, durability,
                   partitions=settings.partitions,
                   replication_factor=settings.replication_factor,
                   max_message_bytes=settings.max_message_bytes,
                   retained_checkpoints=settings.retained_checkpoints,
                   retention_ms=settings.retention_ms,
                   connect_timeout=settings.connect_timeout,
                   client_config=settings.client_config, url=url)

    def rebuild(self, marker: Marker | None, *, read_only: bool = False,
                done: Callable[[str], int] | None = None) -> int:
        # The claim and fences are written before the read, which tracks them for
        # release in log order with the records before them: deliveries are not
        # tracked meanwhile (release needs each partition's runs in offset order).
        self._rebuilding = True
        try:
            return super().rebuild(marker, read_only=read_only, done=done)
        finally:
            self._rebuilding = False
            if self._ahead is not None:  # not read through, or kept after the last read
                self._ahead.close()
                self._ahead = None

    def _past_end(self, part: int, first: int, end: int) -> str:
        return past_end(self._topic.name, part, first, end)

    def _read_ahead(self, start: dict[int, int], ends: dict[int, int]) -> None:
        self._ahead = RebuildReader(self._topic, self._reader_conf, self.servers,
                                    self.namespace, start, ends, self.partitions)

    def attach(self, namespace: str) -> None:
        super().attach(namespace)
        self._releasing = False

    def use_namespace(self, namespace: str) -> None:
        super().use_namespace(namespace)
        self._prefix = f"{namespace}/{self._writer}/".encode()
        self._retention.clear()

    def append(self, record: Record, data: bytes, sync: bool) -> Position:
        if self._closed:
            raise StoreError(f"the Kafka store for topic {self.topic} is closed: open it again")
        if self._fatal is not None:
            raise StoreError(f"the Kafka producer for topic {self.topic} failed for good "
                             f"({self._fatal.str()}): restart the run; it resumes from its "
                             "last checkpoint")
        if isinstance(record, FenceRecord):
            # A claim: partition 0 alone (the epoch is its offset there + 1). A fence
            # with an epoch (pre-fence or the claimed epoch's): every other partition.
            targets = range(1) if record.epoch == 0 else range(1, self.partitions)
            if not targets:
                return (0, self._next.get(0, 0))  # one partition: the claim fenced it
        else:
            agent_key = record.key if isinstance(record, DropRecord) else record.key.key
            targets = range(p := partition_of(agent_key, self.partitions), p + 1)
        first = targets[0]
        # The lower bound of the record's offset is read before it is produced: once it
        # is, its own delivery report may come at any moment (served by a poll here or
        # by a flush on another thread) and move the partition's end past it; a bound
        # read then would be past the record, and a marker built on it would skip it.
        with self._reports:
            lower = self._next.get(first, 0)
        if sync:  # the exact offset, from the first message's own delivery report
            offsets: list[int] = []

            def delivered(error: KafkaError | None, message: Any) -> None:
                self._on_delivery(error, message)
                if error is None:
                    offsets.append(message.offset())

        for partition in targets:
            key = self._prefix + b"%x" % self._counter
            self._counter += 1
            self._produce(partition, key, data,
                          delivered if sync and partition == first else None)
        if sync:
            self._drain()
            return (first, offsets[0])
        self._producer.poll(0)
        return (first, lower)

    def flush(self) -> None:
        if not self._closed:
            self._drain()

    def key_bound(self, key: str) -> Position:
        partition = partition_of(key, self.partitions)
        with self._reports:  # the end this writer knows: acknowledged records
            return (partition, self._next.get(partition, 0))

    @property
    def partition_count(self) -> int:
        return self.partitions

    def end_offsets(self) -> dict[int, int]:
        return self._topic.end_offsets(range(self.partitions))

    def read(
        self, namespace: str, start: dict[int, int], stop: dict[int, int]
    ) -> Iterator[tuple[Position, bytes, str]]:
        track = (self._retention.track_read if self._releasing and namespace == self.namespace
                 else None)
        if self._ahead is not None and self._ahead.serves(namespace, start):
            return self._ahead.read(namespace, start, stop, track, lambda: self._rebuilding)
        return scan(self._topic, self._reader_conf, self.servers, namespace, start, stop,
                    track)

    def release(self, marker: Marker) -> None:
        """Tombstone own records below the oldest retained checkpoint's marker, unless a
        newer run claimed this namespace (:class:`FencedError`: they may be its in-flight
        states; see :meth:`_check_claims`)."""
        if marker.namespace != self.namespace or self._closed or not self._releasing:
            return
        expired = self._retention.checkpoint(marker.offsets)
        first = next(expired, None)
        if first is None:
            return
        self._check_claims()
        for partition, key in itertools.chain((first,), expired):
            self._produce(partition, key, None, self._on_tombstone)
        self._producer.poll(0)

    def _check_claims(self) -> None:
        """Raise :class:`FencedError` if partition 0 holds a claim of this namespace after
        this store's own (its offset is ``epoch - 1``): a newer run restored this one.
        It reads partition 0 from where the last check ended (the read tracks records of
        this namespace for release, as a rebuild's does: above the claim, only this
        store's, already tracked, unless a newer run wrote, and then this raises). A
        claim that lands after the check, before the tombstones, is not seen (no
        medium-side fence here)."""
        start = max(self._claims_checked, self.epoch)
        stop = self._topic.end_offsets([0])[0]
        for (_, offset), data, where in self.read(self.namespace, {0: start}, {0: stop}):
            if b'"fence"' in data:
                record = decode_record(data, where, self.keyring, sealed_ok=True)
                if isinstance(record, FenceRecord) and record.claim:
                    raise FencedError(
                        f"Kafka topic {self.topic}: a newer run restored this run's records "
                        f"and claimed epoch {offset + 1} (this process has {self.epoch}); "
                        "this process is a zombie and deletes nothing: stop it, the newer "
                        "run carries on")
        self._claims_checked = max(start, stop)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._producer.close()

    # -- helpers --------------------------------------------------------------------

    def _produce(self, partition: int, key: bytes, value: bytes | None, on_delivery: Any) -> None:
        """Enqueue one message (``on_delivery`` None: the store's delivery callback)."""
        deadline: float | None = None
        while True:
            try:
                if on_delivery is None:
                    self._producer.produce(self.topic, value, key, partition)
                else:
                    self._producer.produce(self.topic, value, key, partition, on_delivery)
                self._produced += 1
                return
            except BufferError:  # the local queue is full: serve deliveries, then retry
                self._producer.poll(0.1)
            except KafkaException as exc:
                error = error_of(exc)
                if error is not None and passes(error):  # its metadata is still coming
                    deadline = deadline or time.monotonic() + self._timeout
                    if time.monotonic() < deadline:
                        self._producer.poll(0.05)
                        continue
                    raise settle_error(
                        f"send a record to Kafka topic {self.topic} partition {partition}",
                        error, self.servers, self._timeout) from None
                raise StoreError(f"cannot send a record to Kafka topic {self.topic} partition "
                                 f"{partition} ({reason(exc)}){hint(exc)}: check the topic "
                                 f"and the broker at {self.servers}, then restart the run (it "
                                 "resumes from its last checkpoint)") from None

    def _drain(self) -> None:
        """Wait for the delivery reports of every message produced so far (not of those a
        put on another thread produces meanwhile: a flush on a worker thread ends)."""
        target = self._produced
        started = warned = time.monotonic()
        while self._acknowledged < target:
            # A rebuild's claim reads a piece meanwhile; flush sends at once (no linger)
            # and serves the reports come so far.
            self._producer.flush(0 if self._meanwhile() else _FLUSH_STEP)
            if time.monotonic() - warned >= WAIT_STEP:
                warned = time.monotonic()
                log.warning(
                    "Kafka at %s has not acknowledged %d record(s) for topic %s after %.0fs; "
                    "the producer keeps retrying (up to delivery.timeout.ms=%s) and this call "
                    "waits", self.servers, target - self._acknowledged, self.topic,
                    warned - started, self._producer_conf["delivery.timeout.ms"])
        with self._reports:
            failures, self._failures = self._failures, []
        if failures:
            partition, error = failures[0]
            raise StoreError(
                f"Kafka did not store {len(failures)} record(s) in topic {self.topic} (first: "
                f"partition {partition}: {error.str()}){hint(error)}; the run cannot go on "
                f"without them: check the broker at {self.servers}, then restart the run (it "
                "resumes from its last checkpoint)"
            )

    def _on_delivery(self, error: KafkaError | None, message: Any) -> None:
        with self._reports:
            try:
                partition = message.partition()
                if error is not None:
                    self._failures.append((partition, error))
                    return
                offset = message.offset()
                if offset >= self._next.get(partition, 0):
                    self._next[partition] = offset + 1
                key = message.key()
                if self._releasing and not self._rebuilding and key.startswith(self._prefix):
                    self._retention.track(partition, offset, self._prefix,
                                          key[len(self._prefix):])
            finally:  # counted last: a waiting put then finds its offset in _next
                self._acknowledged += 1

    def _on_tombstone(self, error: KafkaError | None, message: Any) -> None:
        with self._reports:
            self._acknowledged += 1
        if error is not None:
            log.warning("Kafka tombstone for topic %s partition %s failed (%s); the record "
                        "stays until a later release", self.topic, message.partition(),
                        error.str())

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
            log.error("Kafka producer for topic %s failed for good: %s", self.topic, error.str())
        elif denied(error):
            log.warning("Kafka producer for topic %s at %s: %s", self.topic, self.servers,
                        security_problem(error, self._common))
        else:
            log.info("Kafka client error for %s (%s); the client reconnects and retries",
                     self.servers, error.str())
