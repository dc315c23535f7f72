"""The store's topic on the broker: created or checked when the store opens, and its
offsets listed, retrying the errors of a topic that is still settling."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from confluent_kafka import IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # no __all__ there
    AdminClient,
    ConfigResource,
    NewTopic,
    OffsetSpec,
)

from actionstate.errors import StoreError
from actionstate.stores.kafka.config import client
from actionstate.stores.kafka.failures import (
    FIX_BROKER,
    denied,
    error_of,
    passes,
    reason,
    security_problem,
    settle_error,
)

__all__ = ["KafkaTopic", "retrying"]

_T = TypeVar("_T")

log = logging.getLogger("actionstate.stores.kafka")

_CONNECT_STEP = 0.5
"""Seconds of the first wait for the broker's first answer; the client's errors are looked
at after each wait, and each wait is twice the one before."""
_LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]
_EARLIEST = OffsetSpec.earliest()  # type: ignore[no-untyped-call]


class KafkaTopic:
    """One compacted topic, through an admin client with the store's ``config``.

    Errors that pass (see :func:`~actionstate.stores.kafka.failures.passes`) are
    retried for ``timeout`` seconds, then raised as a :class:`StoreError`.
    """

    def __init__(self, name: str, config: Mapping[str, Any], timeout: float) -> None:
        self.name = name
        self.servers = str(config["bootstrap.servers"])
        self.timeout = timeout
        self._secured = any(k.startswith(("security.", "sasl.", "ssl.")) for k in config)
        self._config = config
        self._denied: KafkaError | None = None
        """The last authentication or TLS failure the client reported (its error_cb)."""
        self._admin = client(AdminClient, {**config, "error_cb": self._on_error})

    def open(self, partitions: int, replication: int, max_bytes: int,
             retention_ms: int | None = None) -> int:
        """Check the broker answers, create or verify the topic; returns its partitions.
        ``retention_ms``: the broker deletes records older than that (cleanup.policy
        compact,delete); None: compacted only."""
        metadata = self._connect()
        found = metadata.topics.get(self.name)
        if found is None or found.error is not None:
            created = self._create(partitions, replication, max_bytes, retention_ms)
        else:
            created = False
        count = self._wait_for_leaders()
        if not created:
            self._check_policy(retention_ms)
        if count != partitions:
            log.info("Kafka topic %s exists with %d partitions (configured %d); using %d",
                     self.name, count, partitions, count)
        return count

    def _connect(self) -> Any:
        """The cluster's metadata, once the broker answers (within the timeout). A failed
        authentication or TLS handshake ends the wait at once: librdkafka would only
        retry it, and the metadata request would say no more than "transport failure"."""
        deadline = time.monotonic() + self.timeout
        step = _CONNECT_STEP
        while True:
            try:
                return self._admin.list_topics(
                    timeout=max(min(step, deadline - time.monotonic()), 0.01))
            except KafkaException as exc:
                step *= 2  # a broker slow to answer gets longer waits
                error = error_of(exc)
                if error is not None and denied(error):
                    self._denied = error
                else:
                    self._admin.poll(0)  # serves error_cb: what the connections ran into
                if self._denied is not None:
                    problem = security_problem(self._denied, self._config)
                    raise StoreError(f"cannot connect to Kafka at {self.servers}: "
                                     f"{problem}") from None
                if time.monotonic() < deadline:
                    continue
                raise StoreError(
                    f"cannot reach Kafka at {self.servers} within {self.timeout:g}s "
                    f"({reason(exc)}): {FIX_BROKER} (kafka://host:port/topic or "
                    "kafkaBootstrapServers)" + (", and check that security.protocol, sasl.* "
                                                "and ssl.* match the broker's listener"
                                                if self._secured else
                                                "; if its listener needs TLS or SASL, set "
                                                "security.protocol, sasl.* and ssl.*")
                ) from None

    def _on_error(self, error: KafkaError) -> None:
        if denied(error):
            self._denied = error

    def end_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """Per partition, the offset the next record will get."""
        return self._list_offsets(_LATEST, partitions)

    def start_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """Per partition, the offset of the first record still there."""
        return self._list_offsets(_EARLIEST, partitions)

    def _create(self, partitions: int, replication: int, max_bytes: int,
                retention_ms: int | None) -> bool:
        """Create the topic; False when another client created it first."""
        config = {"cleanup.policy": "compact", "max.message.bytes": str(max_bytes)}
        if retention_ms is not None:
            config.update({"cleanup.policy": "compact,delete", "retention.ms": str(retention_ms)})
        topic = NewTopic(self.name, num_partitions=partitions, replication_factor=replication,
                         config=config)

        def create(timeout: float) -> None:
            futures = self._admin.create_topics([topic], request_timeout=timeout,
                                                operation_timeout=timeout)
            futures[self.name].result()

        try:
            # A retry after a timed-out attempt that did create it finds it existing.
            self._retrying(f"create Kafka topic {self.name}", create)
        except KafkaException as exc:
            error = error_of(exc)
            if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return False
            raise StoreError(
                f"cannot create Kafka topic {self.name} on {self.servers} with {partitions} "
                f"partitions and replication factor {replication} ({reason(exc)}): create "
                "it yourself with cleanup.policy=compact, or fix "
                "kafkaActionStateTopicNumPartitions / kafkaActionStateTopicReplicationFactor"
            ) from None
        log.info("created compacted Kafka topic %s (%d partitions, replication %d)",
                 self.name, partitions, replication)
        return True

    def _wait_for_leaders(self) -> int:
        """Wait until every partition of the topic has a leader; returns how many there are."""
        deadline = time.monotonic() + self.timeout
        problem = "has partitions without a leader"
        while True:
            try:
                found = self._admin.list_topics(self.name, timeout=self.timeout).topics.get(
                    self.name)
            except KafkaException as exc:
                found = None
                problem = f"gets no answer from the broker ({reason(exc)})"
            else:
                if found is None or found.error is not None:
                    why = "not listed" if found is None else found.error.str()
                    problem = f"is not ready on the broker ({why})"
            if (found is not None and found.error is None and found.partitions
                    and all(p.leader >= 0 for p in found.partitions.values())):
                return len(found.partitions)
            if time.monotonic() > deadline:
                raise StoreError(
                    f"Kafka topic {self.name} on {self.servers} still {problem} after "
                    f"{self.timeout:g}s (a new topic normally settles within seconds): check "
                    "that the broker runs and its log (scripts/services/kafka status for the "
                    "local one), or raise kafkaConnectTimeoutMs")
            time.sleep(0.05)

    def _check_policy(self, retention_ms: int | None) -> None:
        """The topic's cleanup is the one configured: compacted only, or with
        ``retention_ms`` compacted and deleted after exactly that retention."""
        resource = ConfigResource("topic", self.name)
        try:
            entries = self._retrying(
                f"read the configuration of Kafka topic {self.name}",
                lambda timeout: self._admin.describe_configs(
                    [resource], request_timeout=timeout)[resource].result())
        except KafkaException as exc:
            raise StoreError(f"cannot read the configuration of Kafka topic {self.name} on "
                             f"{self.servers} ({reason(exc)}): check that this client may "
                             "describe the topic's configuration (DescribeConfigs ACL)") from None
        entry = entries.get("cleanup.policy")
        policy = {p.strip() for p in (entry.value if entry else "delete").split(",")}
        retention = entries.get("retention.ms")
        found_ms = retention.value if retention is not None else None
        if retention_ms is None and policy != {"compact"}:
            raise StoreError(
                f"Kafka topic {self.name} has cleanup.policy={','.join(sorted(policy))}: an "
                "action state topic must be compacted only, or records are deleted while "
                "checkpoints still need them; set cleanup.policy=compact on it (kafka-configs "
                "--alter --add-config cleanup.policy=compact) or use a new topic, or, to let "
                f"the broker delete old records, give kafkaActionStateTopicRetentionMs="
                f"{found_ms} (its retention.ms) with cleanup.policy=compact,delete")
        if retention_ms is not None and (policy != {"compact", "delete"}
                                         or found_ms != str(retention_ms)):
            raise StoreError(
                f"Kafka topic {self.name} has cleanup.policy={','.join(sorted(policy))} and "
                f"retention.ms={found_ms}, not compact,delete and {retention_ms} as "
                "kafkaActionStateTopicRetentionMs says: set them on the topic (kafka-configs "
                "--alter --add-config) or give the option the topic's retention")

    def _list_offsets(self, spec: Any, partitions: Iterable[int]) -> dict[int, int]:
        """Per partition, the offset ``spec`` names; retries while leadership settles."""
        request = {TopicPartition(self.name, p): spec for p in partitions}

        def list_offsets(timeout: float) -> dict[int, int]:
            futures = self._admin.list_offsets(
                request, isolation_level=IsolationLevel.READ_UNCOMMITTED,
                request_timeout=timeout)
            return {tp.partition: future.result().offset for tp, future in futures.items()}

        try:
            return self._retrying(f"read the offsets of Kafka topic {self.name}", list_offsets)
        except KafkaException as exc:
            raise StoreError(
                f"cannot read the offsets of Kafka topic {self.name} from {self.servers} "
                f"({reason(exc)}): check the topic exists and this client may describe it"
            ) from None

    def _retrying(self, what: str, attempt: Callable[[float], _T]) -> _T:
        return retrying(what, attempt, self.servers, self.timeout)


def retrying(what: str, attempt: Callable[[float], _T], servers: str, timeout: float) -> _T:
    """``attempt(timeout left)``, again while it fails with an error that passes, for
    ``timeout`` seconds; then a :class:`StoreError` saying ``what`` failed on ``servers``
    and why. An error that does not pass is raised as it is."""
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        try:
            return attempt(max(deadline - time.monotonic(), 1.0))
        except KafkaException as exc:
            error = error_of(exc)
            if error is None or not passes(error):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise settle_error(what, error, servers, timeout) from None
            log.debug("%s: %s; retrying", what, error.str())
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.5)
