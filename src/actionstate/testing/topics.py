"""Kafka topics for tests: made with unique names and deleted after, produced to in
transactions, read back as a ``read_committed`` consumer sees them (the kafka extra)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from actionstate.testing.services import delete_topics

__all__ = ["Message", "Topics", "delete_compacted_records", "produce", "read_committed"]

Message = tuple[int, bytes | None, bytes | None]
"""(partition, key, value) to produce."""


class Topics:
    """New topics with unique names; :meth:`delete` deletes them."""

    def __init__(self, servers: str) -> None:
        self.servers = servers
        self.names: list[str] = []

    def name(self) -> str:
        self.names.append(f"actionstate-test-{uuid.uuid4().hex[:12]}")
        return self.names[-1]

    def create(self, partitions: int = 1) -> str:
        name = self.name()
        admin = AdminClient({"bootstrap.servers": self.servers})
        admin.create_topics([NewTopic(name, num_partitions=partitions,
                                      replication_factor=1)])[name].result()
        deadline = time.monotonic() + 30
        while True:  # until every partition has a leader
            found = admin.list_topics(name, timeout=10).topics.get(name)
            if (found is not None and found.error is None and len(found.partitions) == partitions
                    and all(p.leader >= 0 for p in found.partitions.values())):
                return name
            assert time.monotonic() < deadline, f"topic {name} got no leaders in 30 s"

    def delete(self) -> None:
        delete_topics(self.servers, self.names)


def delete_compacted_records(servers: str, topic: str, partition: int, before: int) -> None:
    """Delete ``topic``'s records below offset ``before`` in ``partition``, although it is
    compacted only (as the Kafka store makes it), as an operator would: allow deletion
    (cleanup.policy compact,delete), delete-records, then compact only again.

    The broker applies a policy change a moment after the alter returns (the controller
    has committed it; the broker's log config follows), and refuses delete-records with
    POLICY_VIOLATION until then: that answer is asked again, for at most 30 s."""
    admin = AdminClient({"bootstrap.servers": servers})

    def policy(value: str) -> None:
        resource = ConfigResource("topic", topic, incremental_configs=[ConfigEntry(
            "cleanup.policy", value, incremental_operation=AlterConfigOpType.SET)])
        admin.incremental_alter_configs([resource])[resource].result()

    policy("compact,delete")
    deadline = time.monotonic() + 30
    while True:
        done = admin.delete_records([TopicPartition(topic, partition, before)])
        try:
            next(iter(done.values())).result()
            break
        except KafkaException as exc:
            if (exc.args[0].code() != KafkaError.POLICY_VIOLATION
                    or time.monotonic() > deadline):
                raise
    policy("compact")


def produce(servers: str, topic: str, messages: list[Message], *, commit: bool = True) -> None:
    """Produce ``messages`` in one transaction (so that commit markers follow them), then
    commit it (or abort it)."""
    producer = Producer({"bootstrap.servers": servers,
                         "transactional.id": f"actionstate-test-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for partition, key, value in messages:
        producer.produce(topic, value, key, partition=partition)
    if commit:
        producer.commit_transaction(30)
    else:
        producer.flush(30)
        producer.abort_transaction(30)


def read_committed(servers: str, topic: str, *, committed: bool = True
                   ) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every committed record of ``topic``, as a read_committed consumer
    sees it now (``committed=False``: every record, aborted ones too, as a
    read_uncommitted consumer sees them)."""
    isolation = "read_committed" if committed else "read_uncommitted"
    consumer = Consumer({"bootstrap.servers": servers, "group.id": "actionstate-test",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": isolation})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = _ends(consumer, servers, topic, list(partitions), committed)
    todo = {p for p, end in ends.items() if end > 0}
    consumer.assign([TopicPartition(topic, p, 0) for p in todo])
    found: list[tuple[bytes | None, bytes | None]] = []
    deadline = time.monotonic() + 30
    while todo:
        assert time.monotonic() < deadline, f"{topic}: partitions {todo} not read in 30 s"
        for message in consumer.consume(500, 1.0):
            p, offset, error = message.partition(), message.offset(), message.error()
            assert p is not None and offset is not None
            if error is None:
                found.append((message.key(), message.value()))
                offset += 1
            elif error.code() != KafkaError._PARTITION_EOF:
                raise AssertionError(error.str())
            if offset >= ends[p]:
                todo.discard(p)
    consumer.close()
    return found


def _ends(consumer: Consumer, servers: str, topic: str, partitions: list[int],
          committed: bool) -> dict[int, int]:
    """Per partition, the offset a consumer of ``consumer``'s isolation reads up to now.

    For read_committed that is the last stable offset, which lags the log's end for a
    moment after a commit returns: the broker writes the commit's markers into the
    partitions after it answers. Ask again while it lags, for at most 2 s (then a
    transaction is really open, and the stable offset is the answer)."""
    ends = _watermarks(consumer, topic, partitions)
    if not committed:
        return ends
    log = Consumer({"bootstrap.servers": servers, "group.id": "actionstate-test",
                    "isolation.level": "read_uncommitted"})
    try:
        deadline = time.monotonic() + 2.0
        while (any(ends[p] < end for p, end in _watermarks(log, topic, partitions).items())
               and time.monotonic() < deadline):
            time.sleep(0.02)  # the poll interval of the broker's markers
            ends = _watermarks(consumer, topic, partitions)
    finally:
        log.close()
    return ends


def _watermarks(consumer: Consumer, topic: str, partitions: list[int]) -> dict[int, int]:
    """The high watermark of each partition as ``consumer``'s isolation sees it."""
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                              cached=False)[1] for p in partitions}
