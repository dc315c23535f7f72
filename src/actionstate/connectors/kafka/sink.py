"""The Kafka output: outputs in Kafka transactions, committed with the runner's
checkpoints, exactly once across crashes."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka import TopicPartition as TP
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from actionstate.connectors.kafka.endpoint import Endpoint, parse_endpoint, unreachable
from actionstate.errors import ConfigError, ConnectorError, IncompatibleStateError, StoreError
from actionstate.records.values import wire
from actionstate.stores.kafka.config import client
from actionstate.stores.kafka.failures import error_of, reason
from actionstate.stores.kafka.topic import retrying
from actionstate.stores.options import Option

__all__ = ["KafkaSink"]

log = logging.getLogger("actionstate.connectors.kafka")


_FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                     KafkaError.INVALID_PRODUCER_EPOCH})
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
"""A delivery purged: the broker aborted the transaction. A newer run taking over the
transactional id does that; librdkafka then reports the fence on the abort, or
(transaction.version 2) only the purge."""


class KafkaSink:
    """Writes ``(key, output)`` pairs to ``topic`` (message key: the agent key; value:
    the output's JSON) in Kafka transactions, one per checkpoint.

    The two-phase commit: :meth:`prepare` flushes the open transaction and returns its
    number ``n`` and its records; the runner saves them with its checkpoint; then
    :meth:`commit` commits the transaction, and with it, atomically, ``n`` as the
    committed offset of the consumer group named by the transactional id on partition
    0 of ``topic`` (a group nobody consumes with: only a marker). :meth:`restore` fences
    the previous run (``init_transactions`` with the same transactional id aborts its
    open transaction) and reads the marker: below ``n``, the crash came between the
    checkpoint and the commit, and the prepared records are written again in a new
    transaction. The checkpoint interval must stay well below the producer's
    ``transaction.timeout.ms`` (60000), or the broker aborts a transaction before its
    checkpoint commits it.

    The marker is a committed offset of an empty group: the broker deletes it
    ``offsets.retention.minutes`` (7 days by default) after the last commit. A state dir
    restored after that long sees no marker and writes its last checkpoint's records
    again: keep that setting above the longest pause between runs.
    """

    def __init__(self, endpoint: Endpoint, transactional_id: str | None) -> None:
        self.endpoint = endpoint
        self._user_id = transactional_id
        self._producer: Producer | None = None
        self._marker: Consumer | None = None  # group.id = transactional id
        self._id = ""
        self._last = 0  # the number of the last committed transaction
        self._records: list[list[str]] = []  # the open transaction's [key, value]s
        self._later: list[list[str]] = []  # written after prepare, before commit
        self._prepared: int | None = None
        self._failed: list[KafkaError] = []

    @classmethod
    def from_url(cls, url: str, *, options: Mapping[str, str] | None = None) -> KafkaSink:
        """The sink of ``kafka://host:port[,host:port]/topic?...``, creating the topic if
        it is missing.

        Options (URL query or ``options``): ``partitions`` (1) and ``replicationFactor``
        (1) of a topic it creates, ``kafkaConnectTimeoutMs`` (10000), librdkafka
        properties (names with a dot). A ``transactional.id`` given is used as it is
        (it must be this state dir's alone); else each state dir makes its own.
        """
        endpoint, parsed = parse_endpoint(
            "output", url, options,
            [Option("partitions", "1", integer=True), Option("replicationFactor", "1",
                                                             integer=True)])
        given = {name.removeprefix("producer."): value
                 for name, value in parsed.passthrough.items()}.get("transactional.id")
        _create_topic(endpoint, parsed.integer("partitions"), parsed.integer("replicationFactor"))
        return cls(endpoint, given or None)

    def describe(self) -> str:
        return f"output topic {self.endpoint.url}"

    def restore(self, state: dict[str, Any] | None) -> None:
        """Fence the previous run and finish the commit its last checkpoint prepared (see
        the class doc); then open a transaction."""
        if self._producer is not None:
            raise RuntimeError("KafkaSink.restore() runs once")
        txn, records = 0, []
        if state is None:
            self._id = self._user_id or f"actionstate-{uuid.uuid4().hex}"
        else:
            self.endpoint.check_state(state, {"transactional_id": str, "txn": int,
                                              "records": list})
            self._id, txn, records = state["transactional_id"], state["txn"], state["records"]
            if not all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r)
                       for r in records):
                raise IncompatibleStateError(
                    "the state dir's Kafka output state has an invalid 'records' field: it "
                    "was written by another version or edited; use a new --state")
            if self._user_id is not None and self._user_id != self._id:
                raise ConfigError(
                    f"the state dir was run with transactional.id={self._id}, not "
                    f"{self._user_id}: remove the option, or use a new --state")
        configs = self.endpoint.configs
        self._producer = client(Producer, {
            **configs.common, "partitioner": "murmur2_random", **configs.producer,
            "transactional.id": self._id, "enable.idempotence": True, "acks": "all"})
        self._marker = client(Consumer, {
            **configs.common, **configs.consumer, "group.id": self._id,
            "enable.auto.commit": False, "isolation.level": "read_committed"})
        try:
            self._producer.init_transactions(self.endpoint.timeout)
        except KafkaException as exc:
            raise self._error("start a transaction on", exc) from None
        committed = self._committed()
        log.info("Kafka output %s: transactional.id %s, transaction %d of the checkpoint, "
                 "%d committed", self.endpoint.topic, self._id, txn, committed)
        if committed < txn:
            # The checkpoint saved transaction txn, and the crash came before its commit:
            # init_transactions aborted it; write its records again.
            self._begin()
            self._records = [list(r) for r in records]
            for key, value in self._records:
                self._produce(key, value)
            self._flush()
            self._commit(txn)
        self._last = max(txn, committed)
        self._records = []
        self._begin()

    def write(self, outputs: Sequence[tuple[str, Any]]) -> None:
        """Produce the outputs in the open transaction (held until :meth:`commit` when a
        prepared one is still waiting for it)."""
        for key, output in outputs:
            record = [key, json.dumps(wire(output, "an output"), ensure_ascii=False)]
            if self._prepared is not None:
                self._later.append(record)
            else:
                self._records.append(record)
                self._produce(*record)

    def prepare(self) -> dict[str, Any]:
        """Flush the open transaction (every record acknowledged, or a
        :class:`ConnectorError`); returns ``{"kind": "kafka", "servers", "topic",
        "transactional_id", "txn": n, "records": [[key, value], ...]}``."""
        if self._producer is None:
            raise RuntimeError("KafkaSink.restore() must run before prepare()")
        if self._records:
            self._flush()
            self._prepared = self._last + 1
        # Nothing written since the last commit: the state names that commit.
        return {**self.endpoint.identity(), "transactional_id": self._id,
                "txn": self._prepared or self._last, "records": list(self._records)}

    def commit(self) -> None:
        """Commit the prepared transaction with its marker; open the next one."""
        if self._prepared is None:
            return
        assert self._producer is not None
        self._commit(self._prepared)
        self._last, self._prepared, self._records = self._prepared, None, []
        self._begin()
        later, self._later = self._later, []
        for record in later:
            self._records.append(record)
            self._produce(*record)

    def close(self) -> None:
        """Close the clients without committing: an open transaction is aborted (by the
        producer now, or by the next run's restore, or by the broker's timeout)."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                producer.purge()
                producer.close()
            except (KafkaException, SystemError) as exc:  # fenced, broker gone: nothing kept
                log.info("Kafka output %s: closed (%s)", self.endpoint.topic, exc)
        if self._marker is not None:
            self._marker.close()
            self._marker = None

    def _produce(self, key: str, value: str) -> None:
        assert self._producer is not None
        while True:
            try:
                self._producer.produce(self.endpoint.topic, value.encode(), key.encode(),
                                       on_delivery=self._delivered)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.1)
            except KafkaException as exc:
                raise self._error("write to", exc) from None

    def _delivered(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._failed.append(error)

    def _flush(self) -> None:
        assert self._producer is not None
        try:
            while self._producer.flush(1.0):
                pass
        except KafkaException as exc:  # fatal: fenced
            raise self._error("write to", exc) from None
        except SystemError as exc:
            # The same, met while a delivery callback ran: confluent-kafka 2.16 then
            # raises a SystemError (with or without the KafkaException as its cause).
            raise self._error("write to", self._fatal(exc)) from None
        if self._failed:
            failed, self._failed = self._failed, []
            fenced = [e for e in failed if e.code() in _FENCED]
            error = fenced[0] if fenced else failed[0]
            if not fenced and error.code() in _PURGED:  # the fence may show on the abort
                try:
                    self._producer.abort_transaction(self.endpoint.timeout)
                except KafkaException as why:
                    raise self._error("write to", why) from None
            raise self._error("write to", KafkaException(error))

    def _begin(self) -> None:
        producer = self._producer
        assert producer is not None
        self._call("begin a transaction on", lambda _: producer.begin_transaction())

    def _fatal(self, exc: SystemError) -> KafkaException:
        """The fatal client error behind ``exc``; a SystemError of another cause is raised."""
        if isinstance(exc.__cause__, KafkaException):
            return exc.__cause__
        assert self._producer is not None
        try:
            self._producer.poll(0)  # raises the client's fatal error again
        except KafkaException as fatal:
            return fatal
        if self._failed:  # a fence before a purge: it says more
            return KafkaException(next((e for e in self._failed if e.code() in _FENCED),
                                       self._failed[0]))
        raise exc

    def _commit(self, txn: int) -> None:
        """Add marker ``txn`` to the open transaction and commit it."""
        producer, group = self._producer, self._marker
        assert producer is not None and group is not None
        metadata = group.consumer_group_metadata()
        marker = [TP(self.endpoint.topic, 0, txn)]
        self._call("commit a transaction on", lambda timeout: (
            producer.send_offsets_to_transaction(marker, metadata, timeout)))
        self._call("commit a transaction on", producer.commit_transaction)

    def _committed(self) -> int:
        """The marker: the number of the last transaction committed (0: none)."""
        assert self._marker is not None
        try:
            [found] = self._marker.committed([TP(self.endpoint.topic, 0)],
                                             timeout=self.endpoint.timeout)
        except KafkaException as exc:
            raise self._error("read the commit marker of", exc) from None
        if found.error is not None:
            raise self._error("read the commit marker of", KafkaException(found.error))
        return 0 if found.offset == OFFSET_INVALID else int(found.offset)

    def _call(self, what: str, call: Callable[[float], object]) -> None:
        """``call(connect timeout)``, again while it fails with a retriable error, until
        the connect timeout; then the :class:`ConnectorError` saying ``what`` failed."""
        deadline = time.monotonic() + self.endpoint.timeout
        while True:
            try:
                call(self.endpoint.timeout)
                return
            except KafkaException as exc:
                error = error_of(exc)
                if (error is None or not error.retriable() or error.code() in _FENCED
                        or time.monotonic() > deadline):
                    raise self._error(what, exc) from None
                log.debug("%s Kafka output %s: %s; retrying", what, self.endpoint.topic,
                          error.str())

    def _error(self, what: str, exc: KafkaException) -> ConnectorError:
        error = error_of(exc)
        where = f"Kafka output topic {self.endpoint.topic}"
        if error is not None and error.code() in _FENCED:
            return ConnectorError(
                f"{where}: fenced: a newer run of this state dir took over the output topic "
                f"(transactional.id {self._id}); this run stops, the newer one carries on")
        if error is not None and error.code() in _PURGED:
            # Also met as a flush's SystemError, where the purge is all there is to report.
            return ConnectorError(
                f"{where}: the broker aborted this run's transaction (transactional.id "
                f"{self._id}), as it does when a newer run of this state dir takes over the "
                "output topic: this run stops, its outputs since the last checkpoint are "
                "aborted, and the run that resumes writes them again")
        if error is not None and error.code() in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT,
                                                  KafkaError._ALL_BROKERS_DOWN):
            return unreachable(self.endpoint, exc)
        return ConnectorError(
            f"cannot {what} {where} on {self.endpoint.servers} ({reason(exc)}): the outputs "
            "since the last checkpoint are aborted and the next run writes them again; "
            "check the broker's log and this client's ACLs (Write, Describe on the topic, "
            f"transactional id and group {self._id})")


def _create_topic(endpoint: Endpoint, partitions: int, replication: int) -> None:
    """Create the output topic unless it exists."""
    admin = client(AdminClient, {**endpoint.configs.common})
    try:
        found = admin.list_topics(endpoint.topic, timeout=endpoint.timeout).topics
    except KafkaException as exc:
        raise unreachable(endpoint, exc) from None
    if endpoint.topic in found and found[endpoint.topic].error is None:
        return

    def create(timeout: float) -> None:
        futures = admin.create_topics(
            [NewTopic(endpoint.topic, num_partitions=partitions,
                      replication_factor=replication)],
            request_timeout=timeout, operation_timeout=timeout)
        futures[endpoint.topic].result()

    try:
        retrying(f"create Kafka output topic {endpoint.topic}", create, endpoint.servers,
                 endpoint.timeout)
    except StoreError as exc:
        raise ConnectorError(str(exc)) from None
    except KafkaException as exc:
        error = error_of(exc)
        if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return
        raise ConnectorError(
            f"cannot create Kafka output topic {endpoint.topic} on {endpoint.servers} with "
            f"{partitions} partitions and replication factor {replication} ({reason(exc)}): "
            "create it yourself, or fix the partitions / replicationFactor options"
        ) from None
    log.info("created Kafka output topic %s (%d partitions, replication %d)",
             endpoint.topic, partitions, replication)

