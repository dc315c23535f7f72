"""What librdkafka's errors mean to the Kafka store: which pass by themselves, and how
to word the ones that do not."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from actionstate.errors import StoreError
from actionstate.stores.options import is_secret

__all__ = ["FIX_BROKER", "denied", "error_of", "hint", "passes", "reason", "scrub",
           "security_problem", "settle_error"]

FIX_BROKER = "start a broker (for local runs: scripts/services/kafka start) or fix the address"

_SETTLING = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.FENCED_LEADER_EPOCH,
    KafkaError.UNKNOWN_LEADER_EPOCH, KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_CONTROLLER,
    KafkaError.OFFSET_NOT_AVAILABLE, KafkaError.REPLICA_NOT_AVAILABLE,
    KafkaError.BROKER_NOT_AVAILABLE, KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC, KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._NOENT,
})
"""Errors that pass: a topic whose partitions are still getting leaders (just created;
e.g. "Leader epoch is newer than broker epoch" while the broker catches up with the
new leader epoch; the admin client's ListOffsets says "Failed to query partition
leaders: No leaders found", a local _NOENT, right after a broker restart), a busy
controller, a broker connection being re-established.
They are retried until the connect timeout."""

_UNREACHABLE = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                          KafkaError._RESOLVE, KafkaError._TIMED_OUT})
"""Errors that, still there at the timeout, mean the broker is not reachable at all."""


def error_of(exc: KafkaException) -> KafkaError | None:
    """The :class:`KafkaError` an exception carries, if any."""
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def passes(error: KafkaError) -> bool:
    """True for an error that goes away by itself (retried until the connect timeout)."""
    return bool(error.retriable()) or error.code() in _SETTLING


def reason(exc: KafkaException) -> str:
    """librdkafka's words for what went wrong."""
    error = error_of(exc)
    return str(error.str()) if error is not None else str(exc)


def hint(problem: KafkaException | KafkaError) -> str:
    """What to do about a record the broker refused, when the error says ("" if not)."""
    error = error_of(problem) if isinstance(problem, KafkaException) else problem
    if error is not None and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
        return (" - a record is larger than the topic's max.message.bytes: raise it on the "
                "topic and set kafkaActionStateTopicMaxMessageBytes to match")
    return ""


def settle_error(what: str, error: KafkaError, servers: str, timeout: float) -> StoreError:
    """The error for an operation that still failed with ``error`` at the connect timeout."""
    if error.code() in _UNREACHABLE:
        return StoreError(
            f"cannot {what}: Kafka at {servers} did not answer within "
            f"{timeout:g}s ({error.str()}): {FIX_BROKER}")
    return StoreError(
        f"cannot {what} on {servers}: still failing with {error.str()!r} after "
        f"{timeout:g}s of retries (a just-created topic settles within "
        "seconds): check the broker's log (scripts/services/kafka status for the local "
        "one), or raise kafkaConnectTimeoutMs")


_DENIED = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL,
                     KafkaError.SASL_AUTHENTICATION_FAILED})
"""Errors of a connection the broker (or this client) refused: credentials, SASL
mechanism, TLS. librdkafka reconnects after them, but they do not pass by themselves."""

FIX_CA = ("set ssl.ca.location to the CA certificate that signed the broker's (the local "
          "broker of scripts/services/kafka start --secure: scripts/services/kafka "
          "client-config --secure prints it), and connect by a name or address the "
          "certificate lists")


def denied(error: KafkaError) -> bool:
    """True for an authentication or TLS failure (see :func:`security_problem`)."""
    return error.code() in _DENIED


def scrub(text: str, config: Mapping[str, Any]) -> str:
    """``text`` with the value of every secret option of ``config`` replaced by ``***``."""
    for name, value in config.items():
        if is_secret(name) and isinstance(value, str) and value:
            text = text.replace(value, "***")
    return text


def security_problem(error: KafkaError, config: Mapping[str, Any]) -> str:
    """What an authentication or TLS failure means and what to set, for a client with
    ``config`` (options named, never a secret's value), then librdkafka's words."""
    detail = scrub(str(error.str()), config)
    mechanism = str(config.get("sasl.mechanism") or config.get("sasl.mechanisms") or "GSSAPI")
    if error.code() == KafkaError._SSL:
        if "certificate" in detail.lower():
            problem = f"TLS handshake failed: the broker's certificate is not trusted: {FIX_CA}"
        else:
            problem = ("TLS handshake failed: check that security.protocol and the ssl.* "
                       "options match the broker's listener")
    elif "mechanism" in detail and "handshake failed" in detail:
        problem = (f"the broker does not take SASL mechanism {mechanism}: set sasl.mechanism "
                   "to one its listener enables")
    else:
        user = config.get("sasl.username")
        who = f"user {user!r}" if user else "a client without sasl.username"
        problem = (f"authentication failed for {who} ({mechanism}): check sasl.username and "
                   "sasl.password (and that the user exists on the broker)")
    return f"{problem} (librdkafka: {detail})"
