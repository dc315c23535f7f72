"""What the Kafka input and output share: their URL and options, the identity a state
saves, and the wording of a broker that does not answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import KafkaException

from actionstate.errors import ConfigError, ConnectorError, IncompatibleStateError
from actionstate.stores.kafka.config import DEFAULT_CONNECT_TIMEOUT, ClientConfigs, split_config
from actionstate.stores.kafka.failures import FIX_BROKER, reason
from actionstate.stores.options import Option, Parsed, parse_options, redact_url

__all__ = ["CONNECT_TIMEOUT", "Endpoint", "parse_endpoint", "unreachable"]

CONNECT_TIMEOUT = Option("kafkaConnectTimeoutMs", str(int(DEFAULT_CONNECT_TIMEOUT * 1000)),
                         integer=True)


@dataclass(frozen=True)
class Endpoint:
    """A topic on a cluster, the clients' librdkafka properties and the connect timeout."""

    role: str
    """``"input"`` or ``"output"``, for messages."""
    servers: str
    topic: str
    timeout: float
    """Seconds."""
    configs: ClientConfigs

    @property
    def url(self) -> str:
        return f"kafka://{self.servers}/{self.topic}"

    def identity(self) -> dict[str, Any]:
        """What a state saves to name this endpoint."""
        return {"kind": "kafka", "servers": self.servers, "topic": self.topic}

    def check_state(self, state: Mapping[str, Any], fields: Mapping[str, type]) -> None:
        """Raise :class:`IncompatibleStateError` naming a missing or mistyped field of
        ``state`` (``fields``: name -> type, beside kind/servers/topic), and
        :class:`ConfigError` when ``state`` is another topic's or cluster's."""
        expected: dict[str, type] = {"kind": str, "servers": str, "topic": str, **fields}
        for name, kind in expected.items():
            value = state.get(name)
            if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
                raise IncompatibleStateError(
                    f"the state dir's Kafka {self.role} state has no valid {name!r} field "
                    f"(found {value!r}): it was written by another version or edited; use "
                    "a new --state")
        if state["kind"] != "kafka":
            raise ConfigError(f"the state dir was run with a {state['kind']} {self.role}, not "
                              f"{self.url}: use the same {self.role} or a new --state")
        servers = sorted(str(state["servers"]).split(","))
        if state["topic"] != self.topic or servers != sorted(self.servers.split(",")):
            raise ConfigError(
                f"the state dir was run with {self.role} kafka://{state['servers']}/"
                f"{state['topic']}, not {self.url}: use the same {self.role} or a new --state")


def parse_endpoint(role: str, url: str, options: Mapping[str, Any] | None,
                   specs: Sequence[Option]) -> tuple[Endpoint, Parsed]:
    """The endpoint of ``kafka://host:port[,host:port]/topic?...`` and ``options``.

    ``specs`` are the connector's own options; a name with a dot is a librdkafka property
    (``producer.X`` / ``consumer.X`` for one client), anything else a :class:`ConfigError`
    listing the known names. ``transactional.id`` is left in ``Parsed.passthrough`` and
    out of the client configs (only the output uses it).
    """
    split = urlsplit(url)
    if split.scheme != "kafka" or not split.netloc or not split.path.strip("/"):
        raise ConfigError(f"Kafka {role} {redact_url(url)!r} is not "
                          "kafka://host:port[,host:port]/topic: give the bootstrap servers and "
                          "the topic")
    parsed = parse_options("Kafka", [*specs, CONNECT_TIMEOUT], split.query, options or {},
                           passthrough=lambda name: "." in name, what=role)
    properties = {name: value for name, value in parsed.passthrough.items()
                  if name.removeprefix("producer.") != "transactional.id"}
    endpoint = Endpoint(
        role=role, servers=split.netloc, topic=split.path.strip("/"),
        timeout=parsed.integer(CONNECT_TIMEOUT.name) / 1000,
        configs=split_config(split.netloc, properties))
    return endpoint, parsed


def unreachable(endpoint: Endpoint, exc: KafkaException) -> ConnectorError:
    """The error for a broker that did not answer within the connect timeout."""
    return ConnectorError(
        f"cannot reach Kafka at {endpoint.servers} for {endpoint.role} topic "
        f"{endpoint.topic} within {endpoint.timeout:g}s ({reason(exc)}): {FIX_BROKER}, or "
        "raise kafkaConnectTimeoutMs")
