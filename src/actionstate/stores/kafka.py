"""``kafka://host:9092/topic``: action states in a compacted Kafka topic (extra ``kafka``).

Options (URL query parameters or keyword arguments of
:func:`~actionstate.stores.open_store`; Flink Agents' names and defaults):

==========================================  ==========  ===========================================
option                                      default     meaning
==========================================  ==========  ===========================================
``kafkaBootstrapServers``                   URL host    ``host:port[,host:port...]``
``kafkaActionStateTopic``                   URL path    topic name
``kafkaActionStateTopicNumPartitions``      64          partitions of a topic this store creates
                                                        (alias ``partitions``)
``kafkaActionStateTopicReplicationFactor``  1           replication factor of a created topic
                                                        (alias ``replicationFactor``)
``kafkaActionStateTopicMaxMessageBytes``    16 MiB      largest record (topic ``max.message.bytes``)
``kafkaRetainedCheckpoints``                1           checkpoints whose records are kept
``kafkaConnectTimeoutMs``                   10000       how long to wait for the broker, and for
                                                        a just-created topic to settle
a librdkafka property                       --          passed to the clients, e.g.
                                                        ``security.protocol``, ``sasl.*``,
                                                        ``ssl.*``, ``compression.type``,
                                                        ``delivery.timeout.ms`` (120000);
                                                        ``producer.X`` / ``consumer.X`` for one
==========================================  ==========  ===========================================
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qsl

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # no __all__ there
    AdminClient,
    ConfigResource,
    NewTopic,
    OffsetSpec,
)

from actionstate.durable.index import Position
from actionstate.durable.state import DropRecord, FenceRecord, Record
from actionstate.errors import ConfigError, StoreError
from actionstate.stores.base import ActionStateStore, Durability, Marker

__all__ = ["KafkaActionStateStore", "partition_of"]

_T = TypeVar("_T")

log = logging.getLogger("actionstate")
_client_log = logging.getLogger("actionstate.kafka")

_FIX_BROKER = "start a broker (for local runs: scripts/services/kafka start) or fix the address"
_WAIT_STEP = 5.0
"""Seconds between "still waiting for the broker" warnings while records are unacknowledged."""
_READ_STALL = 60.0
"""Seconds a read may go without any message or end-of-partition event before it fails."""
_PRODUCER_ONLY = frozenset({
    "acks", "request.required.acks", "linger.ms", "queue.buffering.max.ms",
    "queue.buffering.max.messages", "queue.buffering.max.kbytes", "batch.num.messages",
    "batch.size", "compression.type", "compression.codec", "compression.level",
    "delivery.timeout.ms", "message.timeout.ms", "retries", "message.send.max.retries",
    "enable.idempotence", "enable.gapless.guarantee", "max.in.flight.requests.per.connection",
    "max.in.flight", "request.timeout.ms", "partitioner",
    "sticky.partitioning.linger.ms",
})
_CONSUMER_ONLY_PREFIXES = ("fetch.", "queued.", "max.partition.fetch.bytes", "isolation.level",
                           "auto.offset.reset", "enable.partition.eof", "check.crcs", "group.")
_LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]
_EARLIEST = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
_SETTLING = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.FENCED_LEADER_EPOCH,
    KafkaError.UNKNOWN_LEADER_EPOCH, KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_CONTROLLER,
    KafkaError.OFFSET_NOT_AVAILABLE, KafkaError.REPLICA_NOT_AVAILABLE,
    KafkaError.BROKER_NOT_AVAILABLE, KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC, KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
})
"""Errors that pass: a topic whose partitions are still getting leaders (just created;
e.g. "Leader epoch is newer than broker epoch" while the broker catches up with the
new leader epoch), a busy controller, a broker connection being re-established.
They are retried until the connect timeout."""
_UNREACHABLE = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                          KafkaError._RESOLVE, KafkaError._TIMED_OUT})
"""Errors that, still there at the timeout, mean the broker is not reachable at all."""
_FIXED = {"enable.idempotence": ("true",), "acks": ("all", "-1"),
          "request.required.acks": ("all", "-1")}


def partition_of(agent_key: str, partitions: int) -> int:
    """The partition every record of ``agent_key`` goes to: SHA-256 of its UTF-8, mod n."""
    digest = hashlib.sha256(agent_key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % partitions


@dataclass(slots=True)
class _Run:
    """Consecutive own-namespace records of one writer in one partition (for release)."""

    prefix: bytes
    offsets: array[int] = field(default_factory=lambda: array("q"))
    counters: array[int] = field(default_factory=lambda: array("q"))


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
      ``kafkaRetainedCheckpoints`` markers. It remembers 16 bytes per record written
      (or rebuilt) since then; nothing else is kept per record.
    * Not thread-safe: use one store from one thread (the runner's event loop).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        durability: Durability = "sync",
        *,
        partitions: int = 64,
        replication_factor: int = 1,
        max_message_bytes: int = 16 << 20,
        retained_checkpoints: int = 1,
        connect_timeout: float = 10.0,
        client_config: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(durability)
        if not bootstrap_servers or not topic:
            raise ConfigError("a Kafka store needs servers and a topic: kafka://host:port/topic")
        for name, value in (("partitions", partitions), ("replication factor", replication_factor),
                            ("retained checkpoints", retained_checkpoints),
                            ("max message bytes", max_message_bytes)):
            if value < 1:
                raise ConfigError(f"Kafka store {name} must be at least 1, got {value}")
        self.servers, self.topic = bootstrap_servers, topic
        self.url = f"kafka://{bootstrap_servers}/{topic}"
        self._timeout = connect_timeout
        self._retain = retained_checkpoints
        self._common, self._producer_conf, self._consumer_conf = _split_config(
            bootstrap_servers, dict(client_config or {}))
        self._producer_conf = {
            "linger.ms": 0 if durability == "sync" else 5,
            "batch.num.messages": 10000,
            "batch.size": 4 << 20,
            "delivery.timeout.ms": 120000,
            "message.max.bytes": max_message_bytes + 65536,
            **self._producer_conf,
            "enable.idempotence": True,
            "acks": "all",
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
        }
        self._writer = uuid.uuid4().hex[:16]
        self._prefix = f"{self.namespace}/{self._writer}/".encode()
        self._counter = 0
        self._next: dict[int, int] = {}
        self._failures: list[tuple[int, KafkaError]] = []
        self._fatal: KafkaError | None = None
        self._runs: dict[int, deque[_Run]] = {}
        self._tracked: dict[int, int] = {}
        self._markers: deque[dict[int, int]] = deque()
        self._rebuilding = False
        self._closed = False
        # The producer first: it gets its idempotence producer id while the topic is
        # checked (created later, its first record waited ~0.5 s for the id).
        self._producer: Any = _client(Producer, {**self._common, **self._producer_conf})
        self._admin = _client(AdminClient, self._common)
        self.partitions = self._open_topic(partitions, replication_factor, max_message_bytes)
        self._next = self.end_offsets()

    @classmethod
    def from_url(cls, url: SplitResult, durability: Durability = "sync",
                 **options: Any) -> KafkaActionStateStore:
        """The store ``kafka://servers/topic?option=value`` names (see the module table)."""
        merged: dict[str, Any] = dict(parse_qsl(url.query, keep_blank_values=True))
        merged.update(options)
        merged.pop("actionStateStoreBackend", None)
        servers = _agree("servers", url.netloc, merged.pop("kafkaBootstrapServers", None))
        topic = _agree("topic", url.path.lstrip("/"), merged.pop("kafkaActionStateTopic", None))
        kwargs: dict[str, Any] = {}
        for names, arg in ((("kafkaActionStateTopicNumPartitions", "partitions"), "partitions"),
                           (("kafkaActionStateTopicReplicationFactor", "replicationFactor"),
                            "replication_factor"),
                           (("kafkaActionStateTopicMaxMessageBytes",), "max_message_bytes"),
                           (("kafkaRetainedCheckpoints",), "retained_checkpoints"),
                           (("kafkaConnectTimeoutMs",), "connect_timeout")):
            for name in names:
                if name in merged:
                    kwargs[arg] = _integer(name, merged.pop(name))
        if "connect_timeout" in kwargs:
            kwargs["connect_timeout"] /= 1000
        unknown = sorted(k for k in merged if "." not in k and k not in _PRODUCER_ONLY)
        if unknown:
            raise ConfigError(
                f"unknown Kafka store option(s) {unknown}: use kafkaBootstrapServers, "
                "kafkaActionStateTopic, kafkaActionStateTopicNumPartitions, "
                "kafkaActionStateTopicReplicationFactor, kafkaActionStateTopicMaxMessageBytes, "
                "kafkaRetainedCheckpoints, kafkaConnectTimeoutMs, or a librdkafka property "
                "such as security.protocol"
            )
        return cls(servers, topic, durability, client_config={k: str(v) for k, v in merged.items()},
                   **kwargs)

    # -- topic ------------------------------------------------------------------

    def _open_topic(self, partitions: int, replication: int, max_bytes: int) -> int:
        """Check the broker answers, create or verify the topic; returns its partitions."""
        try:
            metadata = self._admin.list_topics(timeout=self._timeout)
        except KafkaException as exc:
            secured = any(k.startswith(("security.", "sasl.", "ssl.")) for k in self._common)
            raise StoreError(
                f"cannot reach Kafka at {self.servers} within {self._timeout:g}s "
                f"({_reason(exc)}): {_FIX_BROKER} (kafka://host:port/topic or "
                "kafkaBootstrapServers)" + (", and check that security.protocol, sasl.* and "
                                            "ssl.* match the broker's listener" if secured else "")
            ) from None
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None:
            created = self._create_topic(partitions, replication, max_bytes)
        else:
            created = False
        count = self._wait_for_leaders()
        if not created:
            self._check_compacted()
        if count != partitions:
            log.info("Kafka topic %s exists with %d partitions (configured %d); using %d",
                     self.topic, count, partitions, count)
        return count

    def _create_topic(self, partitions: int, replication: int, max_bytes: int) -> bool:
        """Create the topic; False when another client created it first."""
        topic = NewTopic(self.topic, num_partitions=partitions, replication_factor=replication,
                         config={"cleanup.policy": "compact", "max.message.bytes": str(max_bytes)})

        def create(timeout: float) -> None:
            futures = self._admin.create_topics([topic], request_timeout=timeout,
                                                operation_timeout=timeout)
            futures[self.topic].result()

        try:
            # A retry after a timed-out attempt that did create it finds it existing.
            self._retrying(f"create Kafka topic {self.topic}", create)
        except KafkaException as exc:
            error = _error_of(exc)
            if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return False
            raise StoreError(
                f"cannot create Kafka topic {self.topic} on {self.servers} with {partitions} "
                f"partitions and replication factor {replication} ({_reason(exc)}): create "
                "it yourself with cleanup.policy=compact, or fix "
                "kafkaActionStateTopicNumPartitions / kafkaActionStateTopicReplicationFactor"
            ) from None
        log.info("created compacted Kafka topic %s (%d partitions, replication %d)",
                 self.topic, partitions, replication)
        return True

    def _wait_for_leaders(self) -> int:
        """Wait until every partition of the topic has a leader; returns how many there are."""
        deadline = time.monotonic() + self._timeout
        problem = "has partitions without a leader"
        while True:
            try:
                found = self._admin.list_topics(self.topic, timeout=self._timeout).topics.get(
                    self.topic)
            except KafkaException as exc:
                found = None
                problem = f"gets no answer from the broker ({_reason(exc)})"
            else:
                if found is None or found.error is not None:
                    why = "not listed" if found is None else found.error.str()
                    problem = f"is not ready on the broker ({why})"
            if (found is not None and found.error is None and found.partitions
                    and all(p.leader >= 0 for p in found.partitions.values())):
                return len(found.partitions)
            if time.monotonic() > deadline:
                raise StoreError(
                    f"Kafka topic {self.topic} on {self.servers} still {problem} after "
                    f"{self._timeout:g}s (a new topic normally settles within seconds): check "
                    "that the broker runs and its log (scripts/services/kafka status for the "
                    "local one), or raise kafkaConnectTimeoutMs")
            time.sleep(0.05)

    def _check_compacted(self) -> None:
        resource = ConfigResource("topic", self.topic)
        try:
            entries = self._retrying(
                f"read the configuration of Kafka topic {self.topic}",
                lambda timeout: self._admin.describe_configs(
                    [resource], request_timeout=timeout)[resource].result())
        except KafkaException as exc:
            raise StoreError(f"cannot read the configuration of Kafka topic {self.topic} on "
                             f"{self.servers} ({_reason(exc)}): check that this client may "
                             "describe the topic's configuration (DescribeConfigs ACL)") from None
        entry = entries.get("cleanup.policy")
        policy = {p.strip() for p in (entry.value if entry else "delete").split(",")}
        if policy != {"compact"}:
            raise StoreError(
                f"Kafka topic {self.topic} has cleanup.policy={','.join(sorted(policy))}: an "
                "action state topic must be compacted only, or records are deleted while "
                "checkpoints still need them; set cleanup.policy=compact on it (kafka-configs "
                "--alter --add-config cleanup.policy=compact) or use a new topic"
            )

    # -- the medium -----------------------------------------------------------------

    def rebuild(self, marker: Marker | None, *, read_only: bool = False) -> int:
        # The claim and fences are written before the read, which tracks them for
        # release in log order with the records before them: deliveries are not
        # tracked meanwhile (release needs each partition's runs in offset order).
        self._rebuilding = True
        try:
            return super().rebuild(marker, read_only=read_only)
        finally:
            self._rebuilding = False

    def use_namespace(self, namespace: str) -> None:
        super().use_namespace(namespace)
        self._prefix = f"{namespace}/{self._writer}/".encode()
        self._runs.clear()
        self._tracked.clear()
        self._markers.clear()

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
        for partition in targets:
            key = self._prefix + b"%x" % self._counter
            self._counter += 1
            self._produce(partition, key, data, None)
        first = targets[0]
        if sync:
            self._drain()
            return (first, self._next[first] - 1)
        self._producer.poll(0)
        return (first, self._next[first])

    def flush(self) -> None:
        if not self._closed:
            self._drain()

    @property
    def partition_count(self) -> int:
        return self.partitions

    def end_offsets(self) -> dict[int, int]:
        return self._list_offsets(_LATEST, range(self.partitions))

    def read(
        self, namespace: str, start: dict[int, int], stop: dict[int, int]
    ) -> Iterator[tuple[Position, bytes, str]]:
        ranges = {p: (start.get(p, 0), end) for p, end in stop.items() if start.get(p, 0) < end}
        if not ranges:
            return
        log_starts = self._list_offsets(_EARLIEST, ranges)
        for p, (first, _) in sorted(ranges.items()):
            if first < log_starts[p]:
                raise StoreError(
                    f"Kafka topic {self.topic} partition {p} starts at offset {log_starts[p]}, "
                    f"but the recovery marker needs its records from offset {first}: they were "
                    "deleted (retention or delete-records), so the states they held are lost; "
                    "restore from a newer checkpoint or start fresh without one"
                )
        ns = namespace.encode()
        track = namespace == self.namespace
        consumer = _client(Consumer, {**self._common, **self._consumer_conf})
        try:
            consumer.assign([TopicPartition(self.topic, p, first)
                             for p, (first, _) in ranges.items()])
            last_event = time.monotonic()
            settling: float | None = None  # since when only passing errors came
            while ranges:
                # Block for one message, then take what is already queued, without waiting.
                polled = consumer.poll(0.5)
                messages: list[Any] = [] if polled is None else [
                    polled, *consumer.consume(num_messages=10000, timeout=0)]
                now = time.monotonic()
                if now - last_event > _READ_STALL:
                    raise StoreError(
                        f"reading Kafka topic {self.topic} from {self.servers} stalled for "
                        f"{_READ_STALL:g}s with partitions {sorted(ranges)} unfinished: check "
                        "the broker (scripts/services/kafka status for the local one) and retry")
                for message in messages:
                    p, offset = message.partition(), message.offset()
                    bounds = ranges.get(p)
                    if bounds is None:
                        continue
                    error = message.error()
                    if error is not None:
                        code = error.code()
                        if code in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
                            raise StoreError(
                                f"Kafka topic {self.topic} partition {p} no longer has the "
                                f"records from offset {bounds[0]} a rebuild needs ({error.str()})"
                                ": they were deleted (retention or delete-records), so the states "
                                "they held are lost; restore from a newer checkpoint or start "
                                "fresh without one")
                        if code != KafkaError._PARTITION_EOF:
                            if not _passes(error):
                                raise StoreError(
                                    f"cannot read Kafka topic {self.topic} partition {p} from "
                                    f"{self.servers} ({error.str()}): check the broker and retry")
                            # The consumer retries by itself (a topic still settling).
                            settling = now if settling is None else settling
                            if now - settling > self._timeout:
                                raise self._settle_error(
                                    f"read Kafka topic {self.topic} partition {p}", error)
                            continue
                        last_event, settling = now, None
                        if offset >= bounds[1]:
                            self._finish(consumer, ranges, p)
                        continue
                    last_event, settling = now, None
                    if offset + 1 >= bounds[1]:
                        self._finish(consumer, ranges, p)
                        if offset >= bounds[1]:
                            continue
                    key, value = message.key(), message.value()
                    if value is None or key is None:
                        continue
                    head, _, counter = key.rpartition(b"/")
                    if head.rpartition(b"/")[0] != ns:
                        continue
                    if track:
                        self._track(p, offset, head + b"/", counter)
                    yield ((p, offset), value,
                           f"kafka topic {self.topic} partition {p} offset {offset}")
        finally:
            try:
                consumer.close()
            except (KafkaException, RuntimeError):  # closing is best effort
                pass

    def release(self, marker: Marker) -> None:
        """Tombstone own records below the oldest retained checkpoint's marker."""
        if marker.namespace != self.namespace or self._closed:
            return
        self._markers.append(dict(marker.offsets))
        while len(self._markers) > self._retain:
            self._markers.popleft()
        oldest = self._markers[0]
        for partition, runs in self._runs.items():
            below = oldest.get(partition, 0)
            while runs and runs[0].offsets[0] < below:
                run = runs[0]
                count = bisect_left(run.offsets, below)
                for counter in run.counters[:count]:
                    self._produce(partition, run.prefix + b"%x" % counter, None,
                                  self._on_tombstone)
                if count == len(run.offsets):
                    runs.popleft()
                else:
                    del run.offsets[:count]
                    del run.counters[:count]
        self._producer.poll(0)

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
                return
            except BufferError:  # the local queue is full: serve deliveries, then retry
                self._producer.poll(0.1)
            except KafkaException as exc:
                error = _error_of(exc)
                if error is not None and _passes(error):  # its metadata is still coming
                    deadline = deadline or time.monotonic() + self._timeout
                    if time.monotonic() < deadline:
                        self._producer.poll(0.05)
                        continue
                    raise self._settle_error(
                        f"send a record to Kafka topic {self.topic} partition {partition}",
                        error) from None
                raise StoreError(f"cannot send a record to Kafka topic {self.topic} partition "
                                 f"{partition} ({_reason(exc)}){_hint(exc)}: check the topic "
                                 f"and the broker at {self.servers}, then restart the run (it "
                                 "resumes from its last checkpoint)") from None

    def _drain(self) -> None:
        started = time.monotonic()
        while (left := self._producer.flush(_WAIT_STEP)) > 0:
            log.warning(
                "Kafka at %s has not acknowledged %d record(s) for topic %s after %.0fs; the "
                "producer keeps retrying (up to delivery.timeout.ms=%s) and this call waits",
                self.servers, left, self.topic, time.monotonic() - started,
                self._producer_conf["delivery.timeout.ms"])
        if self._failures:
            failures, self._failures = self._failures, []
            partition, error = failures[0]
            raise StoreError(
                f"Kafka did not store {len(failures)} record(s) in topic {self.topic} (first: "
                f"partition {partition}: {error.str()}){_hint(error)}; the run cannot go on "
                f"without them: check the broker at {self.servers}, then restart the run (it "
                "resumes from its last checkpoint)"
            )

    def _on_delivery(self, error: KafkaError | None, message: Any) -> None:
        partition = message.partition()
        if error is not None:
            self._failures.append((partition, error))
            return
        offset = message.offset()
        if offset >= self._next.get(partition, 0):
            self._next[partition] = offset + 1
        key = message.key()
        if not self._rebuilding and key.startswith(self._prefix):
            self._track(partition, offset, self._prefix, key[len(self._prefix):])

    def _on_tombstone(self, error: KafkaError | None, message: Any) -> None:
        if error is not None:
            log.warning("Kafka tombstone for topic %s partition %s failed (%s); the record "
                        "stays until a later release", self.topic, message.partition(),
                        error.str())

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
            log.error("Kafka producer for topic %s failed for good: %s", self.topic, error.str())
        else:
            log.info("Kafka client error for %s (%s); the client reconnects and retries",
                     self.servers, error.str())

    def _track(self, partition: int, offset: int, prefix: bytes, counter: bytes) -> None:
        if offset <= self._tracked.get(partition, -1):
            return
        self._tracked[partition] = offset
        runs = self._runs.setdefault(partition, deque())
        if not runs or runs[-1].prefix != prefix:
            runs.append(_Run(prefix))
        runs[-1].offsets.append(offset)
        runs[-1].counters.append(int(counter, 16))

    def _finish(self, consumer: Any, ranges: dict[int, tuple[int, int]], partition: int) -> None:
        del ranges[partition]
        consumer.pause([TopicPartition(self.topic, partition)])

    def _list_offsets(self, spec: Any, partitions: Any) -> dict[int, int]:
        """Per partition, the offset ``spec`` names; retries while leadership settles."""
        request = {TopicPartition(self.topic, p): spec for p in partitions}

        def list_offsets(timeout: float) -> dict[int, int]:
            futures = self._admin.list_offsets(
                request, isolation_level=IsolationLevel.READ_UNCOMMITTED,
                request_timeout=timeout)
            return {tp.partition: future.result().offset for tp, future in futures.items()}

        try:
            return self._retrying(f"read the offsets of Kafka topic {self.topic}", list_offsets)
        except KafkaException as exc:
            raise StoreError(
                f"cannot read the offsets of Kafka topic {self.topic} from {self.servers} "
                f"({_reason(exc)}): check the topic exists and this client may describe it"
            ) from None

    def _retrying(self, what: str, attempt: Callable[[float], _T]) -> _T:
        """``attempt(timeout)``, again while it fails with an error that passes (see
        ``_SETTLING``), until the connect timeout; then a :class:`StoreError` saying
        ``what`` failed and why. An error that does not pass is raised as it is."""
        deadline = time.monotonic() + self._timeout
        pause = 0.05
        while True:
            try:
                return attempt(max(deadline - time.monotonic(), 1.0))
            except KafkaException as exc:
                error = _error_of(exc)
                if error is None or not _passes(error):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._settle_error(what, error) from None
                log.debug("%s: %s; retrying", what, error.str())
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.5)

    def _settle_error(self, what: str, error: KafkaError) -> StoreError:
        """The error for an operation that still failed with ``error`` at the timeout."""
        if error.code() in _UNREACHABLE:
            return StoreError(
                f"cannot {what}: Kafka at {self.servers} did not answer within "
                f"{self._timeout:g}s ({error.str()}): {_FIX_BROKER}")
        return StoreError(
            f"cannot {what} on {self.servers}: still failing with {error.str()!r} after "
            f"{self._timeout:g}s of retries (a just-created topic settles within "
            "seconds): check the broker's log (scripts/services/kafka status for the local "
            "one), or raise kafkaConnectTimeoutMs")


def _split_config(servers: str, config: dict[str, str]) -> tuple[
        dict[str, Any], dict[str, Any], dict[str, Any]]:
    """librdkafka properties for every client, the producer only, and the consumer only."""
    common: dict[str, Any] = {"bootstrap.servers": servers, "socket.nagle.disable": True}
    producer: dict[str, Any] = {}
    consumer: dict[str, Any] = {
        "group.id": "actionstate-reader", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "auto.offset.reset": "error",
        "enable.partition.eof": True, "isolation.level": "read_uncommitted",
        "fetch.wait.max.ms": 100, "queued.max.messages.kbytes": 32768,
    }
    for name, value in config.items():
        if name.removeprefix("producer.") == "transactional.id":
            raise ConfigError("the Kafka store's producer is idempotent, not transactional: "
                              "remove transactional.id")
        if name in _FIXED and value.lower() not in _FIXED[name]:
            raise ConfigError(f"Kafka store option {name}={value} would let records be lost "
                              f"or duplicated: the store needs {name}={_FIXED[name][0]}")
        if name.startswith("producer."):
            producer[name.removeprefix("producer.")] = value
        elif name.startswith("consumer."):
            consumer[name.removeprefix("consumer.")] = value
        elif name in _PRODUCER_ONLY:
            producer[name] = value
        elif name.startswith(_CONSUMER_ONLY_PREFIXES):
            consumer[name] = value
        else:
            common[name] = value
    return common, producer, consumer


def _client(factory: Any, config: dict[str, Any]) -> Any:
    """A librdkafka client; a bad property is a :class:`ConfigError`."""
    try:
        return factory({**config, "logger": _client_log})
    except (KafkaException, ValueError, TypeError) as exc:
        reason = _reason(exc) if isinstance(exc, KafkaException) else str(exc)
        raise ConfigError(f"bad Kafka client setting ({reason}): fix or remove that "
                          "option") from None


def _agree(what: str, from_url: str, given: Any) -> str:
    """The URL's servers or topic, or the option's when the URL has none or agrees."""
    if given is None or str(given) == from_url:
        return from_url
    option = str(given)
    if not from_url or (what == "servers" and from_url in option.split(",")):
        return option
    raise ConfigError(f"the Kafka store URL names {what} {from_url!r} but the option says "
                      f"{option!r}: give one of them")


def _integer(name: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"Kafka store option {name}={value!r} must be an integer") from None


def _error_of(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def _passes(error: KafkaError) -> bool:
    """True for an error that goes away by itself (retried until the connect timeout)."""
    return bool(error.retriable()) or error.code() in _SETTLING


def _reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return str(error.str()) if isinstance(error, KafkaError) else str(exc)


def _hint(problem: KafkaException | KafkaError) -> str:
    error = problem.args[0] if isinstance(problem, KafkaException) and problem.args else problem
    if isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
        return (" - a record is larger than the topic's max.message.bytes: raise it on the "
                "topic and set kafkaActionStateTopicMaxMessageBytes to match")
    return ""
