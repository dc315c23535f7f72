"""The Kafka store's options (see the package doc), and its librdkafka properties split
among the clients."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import KafkaException

from actionstate.errors import ConfigError
from actionstate.stores.kafka.failures import reason, scrub
from actionstate.stores.options import Option, is_secret, parse_options, url_servers

__all__ = ["DEFAULT_PARTITIONS", "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_CONNECT_TIMEOUT",
           "ClientConfigs", "KafkaSettings", "check_settings", "client", "parse_url",
           "redacted", "split_config"]

log = logging.getLogger("actionstate.stores.kafka")

DEFAULT_PARTITIONS = 64
DEFAULT_MAX_MESSAGE_BYTES = 16 << 20
DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds."""

_SERVERS, _TOPIC = "kafkaBootstrapServers", "kafkaActionStateTopic"
_OPTIONS = (
    Option(_SERVERS),
    Option(_TOPIC),
    Option("kafkaActionStateTopicNumPartitions", str(DEFAULT_PARTITIONS), ("partitions",),
           integer=True),
    Option("kafkaActionStateTopicReplicationFactor", "1", ("replicationFactor",), integer=True),
    Option("kafkaActionStateTopicMaxMessageBytes", str(DEFAULT_MAX_MESSAGE_BYTES), integer=True),
    Option("kafkaRetainedCheckpoints", "1", integer=True),
    Option("kafkaActionStateTopicRetentionMs", None, ("retentionMs",), integer=True),
    Option("kafkaConnectTimeoutMs", str(int(DEFAULT_CONNECT_TIMEOUT * 1000)), integer=True),
)

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
_FIXED = {"enable.idempotence": ("true",), "acks": ("all", "-1"),
          "request.required.acks": ("all", "-1")}


def redacted(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with the value of every secret property (``sasl.password``,
    ``sasl.jaas.config``, ``ssl.key.password``...) shown as ``***``."""
    return {name: "***" if is_secret(name) else value for name, value in config.items()}


@dataclass(frozen=True, repr=False)
class KafkaSettings:
    """What a ``kafka://`` URL and its options say, in the store constructor's terms."""

    servers: str
    topic: str
    partitions: int
    replication_factor: int
    max_message_bytes: int
    retained_checkpoints: int
    retention_ms: int | None
    """The topic's retention.ms (cleanup.policy compact,delete), None: compacted only."""
    connect_timeout: float
    """Seconds."""
    client_config: dict[str, str]
    """librdkafka properties, passed through."""

    def __repr__(self) -> str:  # secrets shown as ***
        fields = {**vars(self), "client_config": redacted(self.client_config)}
        return f"KafkaSettings({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


def parse_url(url: str, options: Mapping[str, Any]) -> KafkaSettings:
    """The settings of ``kafka://servers/topic?option=value`` and keyword ``options``.

    The URL's host gives ``kafkaBootstrapServers`` and its path ``kafkaActionStateTopic``,
    under the one rule of :mod:`actionstate.stores.options`: a setting given twice must
    agree. The host may also be one server of a list an option gives (a URL made by
    :func:`~actionstate.stores.url_from_options` names the first): the list is used.
    """
    split = urlsplit(url)
    from_url = {_SERVERS: url_servers(split.netloc, split.query, options, _SERVERS),
                _TOPIC: split.path.lstrip("/")}
    parsed = parse_options(
        "Kafka", _OPTIONS, split.query, options,
        from_url={name: value for name, value in from_url.items() if value},
        passthrough=lambda name: "." in name or name in _PRODUCER_ONLY)
    return KafkaSettings(
        servers=parsed.values[_SERVERS] or "",
        topic=parsed.values[_TOPIC] or "",
        partitions=parsed.integer("kafkaActionStateTopicNumPartitions"),
        replication_factor=parsed.integer("kafkaActionStateTopicReplicationFactor"),
        max_message_bytes=parsed.integer("kafkaActionStateTopicMaxMessageBytes"),
        retained_checkpoints=parsed.integer("kafkaRetainedCheckpoints"),
        retention_ms=(parsed.integer("kafkaActionStateTopicRetentionMs")
                      if parsed.values["kafkaActionStateTopicRetentionMs"] is not None else None),
        connect_timeout=parsed.integer("kafkaConnectTimeoutMs") / 1000,
        client_config=parsed.passthrough,
    )


def check_settings(servers: str, topic: str, partitions: int, replication_factor: int,
                   retained_checkpoints: int, max_message_bytes: int,
                   retention_ms: int | None) -> None:
    """ConfigError unless the store's servers, topic and numbers are valid."""
    if not servers or not topic:
        raise ConfigError("a Kafka store needs servers and a topic: kafka://host:port/topic")
    for name, value in (("partitions", partitions), ("replication factor", replication_factor),
                        ("retained checkpoints", retained_checkpoints),
                        ("max message bytes", max_message_bytes)):
        if value < 1:
            raise ConfigError(f"Kafka store {name} must be at least 1, got {value}")
    if retention_ms is not None and retention_ms < 60_000:
        raise ConfigError(
            f"kafkaActionStateTopicRetentionMs={retention_ms} is under a minute: records "
            "a restore needs would be deleted; give at least the longest time a job may "
            "be down plus its checkpoint interval (e.g. 604800000, a week)")


@dataclass(frozen=True, repr=False)
class ClientConfigs:
    """librdkafka properties for every client, the producer only, and the consumer only."""

    common: dict[str, Any]
    producer: dict[str, Any]
    consumer: dict[str, Any]

    def __repr__(self) -> str:  # secrets shown as ***
        return (f"ClientConfigs(common={redacted(self.common)!r}, producer="
                f"{redacted(self.producer)!r}, consumer={redacted(self.consumer)!r})")


def split_config(servers: str, config: Mapping[str, str]) -> ClientConfigs:
    """The store's librdkafka defaults with ``config`` over them, split by client.

    ``producer.X`` and ``consumer.X`` go to one client as ``X``; a property only one
    client knows goes to that one. Settings that would lose or duplicate records are
    a :class:`ConfigError`.
    """
    common: dict[str, Any] = {"bootstrap.servers": servers, "socket.nagle.disable": True}
    producer: dict[str, Any] = {}
    consumer: dict[str, Any] = {
        "group.id": "actionstate-reader", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "auto.offset.reset": "error",
        "enable.partition.eof": True, "isolation.level": "read_uncommitted",
        # Prefetch at most 8 MB queued: a rebuild's memory beyond the states it holds
        # (32 MB and the default 50 MB cost 30 - 40 MB more peak RSS, and were no
        # faster: the rebuild decodes slower than the broker sends). At most 1 MB per
        # fetch: a response's records are handed over once all of it is in, so the
        # first come ~8 ms sooner than with 8 MB (a rebuild of 10^4 records: 1.04 -
        # 1.06x the rate; 10^5 and 10^6 within noise).
        "fetch.wait.max.ms": 10, "queued.max.messages.kbytes": 8192,
        "fetch.max.bytes": 1 << 20,
        # A partition whose prefetch queue is full (the rebuild decodes slower than the
        # broker sends) is fetched again this soon: librdkafka's default, 1 s, halved
        # the rebuild's speed (about 55k -> 110k records/s read, 1.2 KB records).
        "fetch.queue.backoff.ms": 20,
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
    return ClientConfigs(common, producer, consumer)


def client(factory: Any, config: Mapping[str, Any]) -> Any:
    """A librdkafka client (its log to this package's logger); a bad property is a
    :class:`ConfigError`."""
    try:
        return factory({**config, "logger": log})
    except (KafkaException, ValueError, TypeError) as exc:
        why = scrub(reason(exc) if isinstance(exc, KafkaException) else str(exc), config)
        raise ConfigError(f"bad Kafka client setting ({why}): fix or remove that "
                          "option") from None
