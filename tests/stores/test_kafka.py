"""The Kafka store: the store contract and Kafka's own concerns, against a real broker."""

import dataclasses
import logging
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # no __all__ there
    AdminClient,
    ConfigResource,
    NewTopic,
)

from actionstate.errors import ConfigError, FencedError, StoreError
from actionstate.records.codec import decode_record
from actionstate.records.index import Position
from actionstate.records.state import (
    CallRecord,
    CallResult,
    CallStatus,
    FenceRecord,
    Record,
    StateKey,
)
from actionstate.stores import ActionStateStore, Durability, Marker, open_store
from actionstate.stores.kafka import KafkaActionStateStore, partition_of
from actionstate.stores.kafka import store as kafka_store
from actionstate.stores.kafka import topic as kafka_topic
from actionstate.stores.kafka.config import parse_url
from actionstate.testing.contract import EncryptedStoreContract, StoreContract
from actionstate.testing.services import SERVICES, delete_topics, services_cache
from actionstate.testing.topics import delete_compacted_records

SERVICE = SERVICES / "kafka"

@pytest.fixture
def topic(kafka_servers: str) -> Iterator[str]:
    """A fresh topic name, deleted after the test."""
    name = f"actionstate-test-{uuid.uuid4().hex[:12]}"
    yield name
    delete_topics(kafka_servers, [name])


class TestKafkaStore(StoreContract):
    @pytest.fixture
    def store_url(self, kafka_servers: str, topic: str) -> str:
        return f"kafka://{kafka_servers}/{topic}?partitions=4"


class TestKafkaEncryptedStore(EncryptedStoreContract, TestKafkaStore):
    """The contract with payloads sealed (AES-256-GCM), key rotation, missing/wrong keys."""


def _put(store: ActionStateStore, key: str, seq: int, position: int = 0) -> StateKey:
    sk = StateKey(key, seq, "act", "e" * 64)
    store.put(CallRecord(sk, position, CallResult("f", "d" * 64, CallStatus.SUCCEEDED,
                                                  f"{key}/{seq}/{position}")))
    return sk


def _from_start(marker: Marker) -> Marker:
    """``marker`` moved to the start of every partition (the whole run is read back)."""
    return dataclasses.replace(marker, offsets={}, fences={})


def _raw(servers: str, topic: str) -> list[tuple[int, int, bytes, bytes | None]]:
    """Every message of ``topic`` as (partition, offset, key, value), tombstones included."""
    consumer = Consumer({"bootstrap.servers": servers, "group.id": "actionstate-test",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions}
    todo = {p for p, end in ends.items() if end > 0}
    consumer.assign([TopicPartition(topic, p, 0) for p in todo])
    messages: list[tuple[int, int, bytes, bytes | None]] = []
    while todo:
        message = consumer.poll(10)
        assert message is not None, f"no message from {topic} in 10 s"
        p, offset, key = message.partition(), message.offset(), message.key()
        assert p is not None and offset is not None
        if message.error() is None:
            assert isinstance(key, bytes)
            messages.append((p, offset, key, message.value()))
            offset += 1
        if offset >= ends[p]:
            todo.discard(p)
    consumer.close()
    return messages


def _records(servers: str, topic: str) -> list[tuple[int, int, Record]]:
    return [(p, offset, decode_record(value, f"{p}@{offset}"))
            for p, offset, _, value in _raw(servers, topic) if value is not None]


@pytest.fixture
def url(kafka_servers: str, topic: str) -> str:
    return f"kafka://{kafka_servers}/{topic}?partitions=4"


@pytest.fixture
def store(url: str) -> Iterator[ActionStateStore]:
    store = open_store(url)
    store.rebuild(None)
    yield store
    store.close()


def test_rebuild_across_partitions_starts_at_each_partitions_marker(
        store: ActionStateStore, url: str, kafka_servers: str, topic: str) -> None:
    keys = [f"user_{i}" for i in range(24)]
    assert {partition_of(k, 4) for k in keys} == {0, 1, 2, 3}
    live = [k for k in keys if partition_of(k, 4) in (0, 1)]
    for k in keys:
        _put(store, k, 0)
        store.prune(k, 0)
    for k in live:
        _put(store, k, 1)
    marker = store.recovery_marker()
    first_live: dict[int, int] = {}
    for p, offset, record in _records(kafka_servers, topic):
        if isinstance(record, CallRecord) and record.key.seq == 1:
            first_live.setdefault(p, offset)
    ends = store.end_offsets()
    assert marker.offsets == {0: first_live[0], 1: first_live[1], 2: ends[2], 3: ends[3]}
    for k in keys:
        _put(store, k, 2)
    restored = open_store(url)
    # Only records after the marker, and the restored store's own claim and 3 fences.
    assert restored.rebuild(marker) == len(live) + len(keys) + 4
    # Look at the states without get (a get of the pruned seq 0 would drop seqs 1 and 2).
    assert {(sk.key, sk.seq) for sk, _ in restored.states()} == {
        *((k, 1) for k in live), *((k, 2) for k in keys)}
    for k in live:
        state = restored.get(StateKey(k, 1, "act", "e" * 64))
        assert state is not None and state.calls[0].result == f"{k}/1/0"
    restored.close()


def test_each_key_lands_in_one_partition_and_fences_in_all(
        store: ActionStateStore, url: str, kafka_servers: str, topic: str) -> None:
    keys = ["a_b", "a_b_", "_", "__", "", "ключ_1", "键", "🔑_x", "with space", "a/b\\c"]
    assert len({partition_of(k, 4) for k in keys}) >= 3
    for k in keys:
        for position in range(3):
            _put(store, k, 5, position)
    fences: dict[int, list[tuple[int, FenceRecord]]] = {}
    for p, offset, record in _records(kafka_servers, topic):
        if isinstance(record, FenceRecord):
            fences.setdefault(p, []).append((offset, record))
        else:
            assert isinstance(record, CallRecord)
            assert p == partition_of(record.key.key, 4), record.key.key
    # The claim goes to partition 0 alone and takes its offset + 1 as the epoch;
    # fences go to every other partition.
    [(claim_offset, claim)] = fences.pop(0)
    assert claim.epoch == 0 and claim.claim and store.epoch == claim_offset + 1
    assert sorted(fences) == [1, 2, 3]
    for copies in fences.values():  # a pre-fence, and the exact epoch if it differs
        assert copies[-1][1] == FenceRecord(store.epoch)
        assert all(not f.claim and 0 < f.epoch <= store.epoch for _, f in copies)
    assert store.partition_count == 4
    restored = open_store(url)
    restored.rebuild(_from_start(store.recovery_marker()))
    for k in keys:
        state = restored.get(StateKey(k, 5, "act", "e" * 64))
        assert state is not None and [c.result for c in state.calls.values()] == [
            f"{k}/5/{i}" for i in range(3)]
    restored.close()


def test_group_mode_positions_are_lower_bounds(url: str, kafka_servers: str, topic: str) -> None:
    store = open_store(url, durability="group")
    store.rebuild(None)
    keys = [f"g{i}" for i in range(6)]
    for seq in range(30):
        _put(store, keys[seq % 6], seq)
    store.flush()
    for k in keys:
        store.prune(k, 23)
    guessed = store.index.first_positions()
    real: dict[int, int] = {}
    for p, offset, record in _records(kafka_servers, topic):
        if isinstance(record, CallRecord) and record.key.seq >= 24:
            real.setdefault(p, offset)
    assert guessed.keys() == real.keys()
    assert all(guessed[p] <= real[p] for p in real), (guessed, real)
    marker = store.recovery_marker()
    assert {p: o for p, o in marker.offsets.items() if p in real} == guessed
    restored = open_store(url)
    restored.rebuild(marker)
    assert {sk.seq for sk, _ in restored.states()} >= set(range(24, 30))
    store.close()
    restored.close()


class _ReportsAtOnce:
    """A producer whose ``poll`` waits for every delivery report, as a loaded machine
    may serve a record's report right after producing it (or a flush on another thread
    does)."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def poll(self, timeout: float) -> int:
        return int(self._producer.flush(10))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


@pytest.mark.parametrize("durability", ["group", "sync"])
def test_a_position_is_never_past_its_record_when_its_report_comes_at_once(
        url: str, kafka_servers: str, topic: str, durability: Durability) -> None:
    """A position read after the record's own delivery report was served was the offset
    after it: a marker built on it skipped the record, and a restart paid the call again
    (seen under load in test_recovery's two crashes on Kafka, about 1 run in 8)."""
    store = open_store(url, durability=durability)
    store.rebuild(None)
    store._producer = _ReportsAtOnce(store._producer)  # type: ignore[attr-defined]
    sks = [_put(store, "one-key", seq) for seq in range(3)]
    store.flush()
    marker = store.recovery_marker()
    [real] = [offset for p, offset, record in _records(kafka_servers, topic)
              if isinstance(record, CallRecord) and record.key == sks[0]]
    assert marker.offsets[partition_of("one-key", 4)] <= real
    restored = open_store(url)
    restored.rebuild(marker)
    assert {sk for sk, _ in restored.states()} == set(sks), "every state is found again"
    store.close()
    restored.close()


def test_release_tombstones_records_no_retained_checkpoint_needs(
        url: str, kafka_servers: str, topic: str) -> None:
    store = open_store(url + "&kafkaRetainedCheckpoints=2")
    store.rebuild(None)

    def checkpoint(seq: int) -> Marker:
        for position in range(3):
            _put(store, "k", seq, position)
        store.prune("k", seq)
        marker = store.recovery_marker()
        store.release(marker)
        store.flush()
        return marker

    def tombstoned() -> set[bytes]:
        return {key for _, _, key, value in _raw(kafka_servers, topic) if value is None}

    def keys_below(marker: Marker) -> set[bytes]:
        return {key for p, offset, key, value in _raw(kafka_servers, topic)
                if value is not None and offset < marker.offsets[p]}

    first = checkpoint(0)
    assert tombstoned() == keys_below(first) and len(keys_below(first)) == 4 + 3
    second = checkpoint(1)
    assert tombstoned() == keys_below(first), "the older retained checkpoint needs seq 1"
    checkpoint(2)
    assert tombstoned() == keys_below(second) and len(keys_below(second)) == 4 + 6
    store.close()


def test_records_read_by_a_rebuild_are_released_later(url: str, kafka_servers: str,
                                                       topic: str) -> None:
    store = open_store(url)
    store.rebuild(None)
    _put(store, "k", 0)
    marker = store.recovery_marker()
    store.close()
    restored = open_store(url)
    restored.rebuild(marker)
    restored.prune("k", 0)
    restored.release(restored.recovery_marker())
    restored.flush()
    tombstones = {key for _, _, key, value in _raw(kafka_servers, topic) if value is None}
    call_keys = {key for p, _, key, value in _raw(kafka_servers, topic)
                 if value is not None and isinstance(decode_record(value, "x"), CallRecord)}
    assert call_keys <= tombstones
    restored.close()


def test_a_store_attached_beside_other_writers_remembers_nothing_for_release(
        url: str, kafka_servers: str, topic: str) -> None:
    """A Flink job's subtasks attach to one namespace and never release (the topic's
    retention cleans up): what they write and read is not remembered, 16 bytes a record
    for the life of a worker. A store that releases remembers both (the control)."""
    owner = open_store(url)
    owner.rebuild(None)
    for seq in range(3):
        _put(owner, "k", seq)
    owner.flush()
    attached = open_store(url)
    assert isinstance(owner, KafkaActionStateStore)
    assert isinstance(attached, KafkaActionStateStore)
    attached.attach(owner.namespace)
    for seq in range(3):
        _put(attached, "j", seq)
    attached.flush()
    read = list(attached.records({p: 0 for p in range(4)}, attached.end_offsets()))
    assert len(read) > 6, "it read its own records and the owner's"
    assert len(attached._retention) == 0
    assert len(owner._retention) > 0, "the control: a releasing store remembers its writes"
    attached.release(attached.recovery_marker())  # nothing to do, nothing sent
    attached.close()
    owner.close()


def test_read_ends_at_stop_offsets_across_gaps(
        store: ActionStateStore, url: str, kafka_servers: str, topic: str) -> None:
    """Offsets without a record (compacted away; here a transaction marker) end no read late."""
    sk = _put(store, "gap", 0)
    p = partition_of("gap", 4)
    producer = Producer({"bootstrap.servers": kafka_servers, "transactional.id": topic})
    producer.init_transactions(10)
    producer.begin_transaction()
    producer.produce(topic, b"not ours", b"other/run/1", partition=p)
    producer.commit_transaction(10)
    restored = open_store(url)
    begin = time.monotonic()
    # The first run's claim and 3 fences, its call, the restored store's claim and fences.
    assert restored.rebuild(_from_start(store.recovery_marker())) == 4 + 1 + 4
    assert time.monotonic() - begin < 5, "the read waited for records that do not exist"
    assert restored.get(sk) is not None
    restored.close()


def test_marker_below_the_log_start_is_a_clear_error(
        store: ActionStateStore, url: str, kafka_servers: str, topic: str) -> None:
    for position in range(4):
        _put(store, "lost", 0, position)
    marker = _from_start(store.recovery_marker())
    p = partition_of("lost", 4)
    delete_compacted_records(kafka_servers, topic, p, 3)
    with pytest.raises(StoreError, match=f"partition {p} starts at offset 3.*from offset 0"):
        open_store(url).rebuild(marker)


def test_a_marker_past_the_topic_end_is_a_clear_error(
        store: ActionStateStore, url: str, kafka_servers: str, topic: str) -> None:
    """The topic was deleted and created again since the checkpoint: its records are
    gone, and a rebuild says so (it does not read nothing and carry on)."""
    for position in range(4):
        _put(store, "gone", 0, position)
    marker = store.recovery_marker()
    store.close()
    delete_topics(kafka_servers, [topic])
    again = open_store(url)  # creates the topic again, empty
    p = partition_of("gone", 4)
    with pytest.raises(StoreError, match=r"partition \d+ ends at offset \d+, but the "
                       r"recovery marker starts at offset \d+: the topic was deleted"):
        again.rebuild(marker)
    assert marker.offsets[p] > 0
    again.close()


def test_unreachable_broker_is_a_clear_error_in_bounded_time() -> None:
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:1 within 1s.*scripts/services/kafka st"):
        open_store("kafka://127.0.0.1:1/x", kafkaConnectTimeoutMs=1000)


def test_existing_topic_must_be_compacted(kafka_servers: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_servers})
    admin.create_topics([NewTopic(topic, 2, 1, config={"cleanup.policy": "delete"})])[
        topic].result()
    with pytest.raises(StoreError, match="cleanup.policy=delete"):
        open_store(f"kafka://{kafka_servers}/{topic}")


def test_a_retention_lets_the_broker_delete_old_records_and_is_checked_on_open(
        kafka_servers: str, topic: str) -> None:
    """kafkaActionStateTopicRetentionMs: the topic is created compact,delete with that
    retention.ms (what a Flink job, which never deletes records itself, uses to clean
    up); a reopen with another retention, or without one, is refused naming both."""
    week = 7 * 24 * 3600 * 1000
    store = open_store(f"kafka://{kafka_servers}/{topic}?retentionMs={week}")
    store.close()
    admin = AdminClient({"bootstrap.servers": kafka_servers})
    resource = ConfigResource("topic", topic)
    found = admin.describe_configs([resource])[resource].result()
    assert found["cleanup.policy"].value == "compact,delete"
    assert found["retention.ms"].value == str(week)
    open_store(f"kafka://{kafka_servers}/{topic}",
               kafkaActionStateTopicRetentionMs=str(week)).close()
    with pytest.raises(StoreError, match=f"kafkaActionStateTopicRetentionMs={week}"):
        open_store(f"kafka://{kafka_servers}/{topic}")
    with pytest.raises(StoreError, match=f"retention.ms={week}, not compact,delete and 86400000"):
        open_store(f"kafka://{kafka_servers}/{topic}?retentionMs=86400000")
    with pytest.raises(ConfigError, match="under a minute"):
        open_store(f"kafka://{kafka_servers}/{topic}?retentionMs=1000")


def test_existing_topic_keeps_its_partition_count(kafka_servers: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_servers})
    admin.create_topics([NewTopic(topic, 2, 1, config={"cleanup.policy": "compact"})])[
        topic].result()
    store = open_store(f"kafka://{kafka_servers}/{topic}?partitions=8")
    assert isinstance(store, KafkaActionStateStore) and store.partitions == 2
    store.close()


def test_zombie_writes_racing_a_claim_in_another_partition_count_for_all_or_none(
        store: ActionStateStore, url: str, kafka_servers: str, topic: str) -> None:
    """In a partition other than the claim's: a zombie's write before the successor's
    pre-fence there counts for every rebuild; one after it (before or after the claim)
    for none."""
    sk = StateKey("z", 0, "act", "e" * 64)
    assert partition_of("z", 4) != 0
    _put(store, "z", 0, 0)
    marker = store.recovery_marker()
    successor = open_store(url)
    real_append = successor.append
    appended: list[FenceRecord] = []

    def racing_append(record: Record, data: bytes, sync: bool) -> Position:
        assert isinstance(record, FenceRecord)
        if not appended:
            _put(store, "z", 0, 1)  # before the pre-fence: counts
        position = real_append(record, data, sync)
        appended.append(record)
        if len(appended) == 1:
            _put(store, "z", 0, 2)  # after the pre-fence, before the claim: ignored
        elif record.claim:
            _put(store, "z", 0, 3)  # after the claim: ignored
        return position

    successor.append = racing_append  # type: ignore[method-assign]
    successor.rebuild(marker)
    successor.append = real_append  # type: ignore[method-assign]
    assert [bool(r.claim) for r in appended[:2]] == [False, True], "a pre-fence, then the claim"
    _put(store, "z", 0, 4)  # after everything: ignored
    successor.put(CallRecord(sk, 2, CallResult("f", "d" * 64, CallStatus.SUCCEEDED, "new")))
    readers = [open_store(url), open_store(url)]
    readers[0].rebuild(marker, read_only=True)
    readers[1].rebuild(successor.recovery_marker(), read_only=True)
    for reader in (successor, *readers):
        state = reader.get(sk)
        assert state is not None
        assert {p: c.result for p, c in state.calls.items()} == {0: "z/0/0", 1: "z/0/1",
                                                                 2: "new"}
    zombie_calls = [r for p, _, r in _records(kafka_servers, topic)
                    if isinstance(r, CallRecord) and r.epoch == store.epoch]
    assert len(zombie_calls) == 5, "the zombie's writes are in the log, ignored"
    for s in (successor, *readers):
        s.close()


def test_a_zombie_release_produces_no_tombstone_and_the_successors_does(
        store: ActionStateStore, url: str, kafka_servers: str, topic: str) -> None:
    """The zombie finds the successor's claim in partition 0 before it produces any
    tombstone; the successor's own release, with no newer claim, tombstones as before."""
    _put(store, "zr", 0)
    marker = store.recovery_marker()
    successor = open_store(url)
    successor.rebuild(marker)
    store.prune("zr", 0)
    with pytest.raises(FencedError, match="zombie"):
        store.release(store.recovery_marker())
    store.flush()
    assert [m for m in _raw(kafka_servers, topic) if m[3] is None] == []
    successor.prune("zr", 0)
    successor.release(successor.recovery_marker())
    successor.flush()
    messages = _raw(kafka_servers, topic)
    tombstoned = {key for _, _, key, value in messages if value is None}
    call_key = next(key for _, _, key, value in messages
                    if value is not None and isinstance(decode_record(value, ""), CallRecord))
    assert call_key in tombstoned
    successor.close()


def test_one_partition_takes_a_claim_and_no_fence(kafka_servers: str, topic: str) -> None:
    url = f"kafka://{kafka_servers}/{topic}?partitions=1"
    first = open_store(url)
    first.rebuild(None)
    assert first.partition_count == 1
    _put(first, "k", 0, 0)
    marker = first.recovery_marker()
    second = open_store(url)
    second.rebuild(marker)
    assert second.epoch > first.epoch
    _put(first, "k", 0, 1)  # a zombie's: ignored
    _put(second, "k", 0, 2)
    kinds = [type(r).__name__ for _, _, r in _records(kafka_servers, topic)]
    assert kinds == ["FenceRecord", "CallRecord", "FenceRecord", "CallRecord", "CallRecord"]
    latest = open_store(url)
    latest.rebuild(second.recovery_marker(), read_only=True)
    state = latest.get(StateKey("k", 0, "act", "e" * 64))
    assert state is not None and sorted(state.calls) == [0, 2]
    for s in (first, second, latest):
        s.close()


def test_a_claim_that_fails_closes_the_consumer_opened_ahead_and_a_rebuild_resumes(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rebuild's consumer is opened before the claim (to fetch meanwhile). When the
    claim fails, the rebuild closes it: no consumer is left fetching, and a later rebuild
    of the same store reads everything with a consumer of its own."""
    first = open_store(url)
    first.rebuild(None)
    keys = [_put(first, f"k{i}", 0) for i in range(8)]
    first.flush()
    marker = _from_start(first.recovery_marker())
    first.close()
    store = open_store(url)
    assert isinstance(store, KafkaActionStateStore)
    opened: list[Any] = []
    real_read_ahead, real_claim = store._read_ahead, store._claim

    def read_ahead(start: dict[int, int], ends: dict[int, int]) -> None:
        real_read_ahead(start, ends)
        assert store._ahead is not None
        opened.append(store._ahead.consumer)

    def claim(ends: Any = None) -> None:  # fault injection: the broker refuses the claim
        raise StoreError("injected: the claim's produce failed")

    monkeypatch.setattr(store, "_read_ahead", read_ahead)
    monkeypatch.setattr(store, "_claim", claim)
    with pytest.raises(StoreError, match="injected"):
        store.rebuild(marker)
    assert len(opened) == 1 and store._ahead is None
    with pytest.raises(RuntimeError, match="closed"):  # closed, not left fetching
        opened[0].assignment()
    monkeypatch.setattr(store, "_claim", real_claim)
    assert store.rebuild(marker) >= len(keys)
    assert len(opened) == 2 and opened[1] is not opened[0]
    assert all(store.get(key) is not None for key in keys)
    with pytest.raises(RuntimeError, match="closed"):  # the read closed its consumer too
        opened[1].assignment()
    store.close()


def _failed(error: int) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_exception(KafkaException(KafkaError(error)))
    return future


class _SettlingAdmin:
    """An AdminClient whose first requests fail the way those on a just-created topic
    can; ``failures`` maps a method to the error codes its next calls fail with."""

    def __init__(self, config: dict[str, Any], failures: dict[str, list[int]]) -> None:
        self._admin = AdminClient(config)
        self._failures = failures

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._admin, name)
        codes = self._failures.get(name)

        def call(request: Any, *args: Any, **kwargs: Any) -> Any:
            if not codes:
                return real(request, *args, **kwargs)
            error = codes.pop(0)
            keys = [getattr(item, "topic", item) if name == "create_topics" else item
                    for item in request]
            return {key: _failed(error) for key in keys}

        return call if codes is not None else real


def test_errors_of_a_settling_topic_are_retried(
        kafka_servers: str, topic: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 7: "Leader epoch is newer than broker epoch" and its kin pass; a store
    opened on a just-created topic waits them out instead of failing."""
    failures = {
        "create_topics": [KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_CONTROLLER],
        "list_offsets": [KafkaError.UNKNOWN_LEADER_EPOCH, KafkaError.NOT_LEADER_FOR_PARTITION,
                         KafkaError.FENCED_LEADER_EPOCH, KafkaError.LEADER_NOT_AVAILABLE,
                         KafkaError.UNKNOWN_TOPIC_OR_PART],
    }
    monkeypatch.setattr(kafka_topic, "AdminClient",
                        lambda config: _SettlingAdmin(config, failures))
    store = open_store(f"kafka://{kafka_servers}/{topic}?partitions=2")
    assert failures["create_topics"] == []
    store.rebuild(None)
    failures["list_offsets"] += [KafkaError.UNKNOWN_LEADER_EPOCH] * 2
    sk = _put(store, "k", 0)
    reader = open_store(f"kafka://{kafka_servers}/{topic}")  # exists now: describe_configs
    failures["list_offsets"] += [KafkaError.UNKNOWN_LEADER_EPOCH]
    reader.rebuild(_from_start(store.recovery_marker()), read_only=True)
    assert reader.get(sk) is not None
    assert failures["list_offsets"] == []
    store.close()
    reader.close()


def test_a_topic_that_does_not_settle_is_a_clear_error_at_the_timeout(
        kafka_servers: str, topic: str, monkeypatch: pytest.MonkeyPatch) -> None:
    failures = {"list_offsets": [KafkaError.UNKNOWN_LEADER_EPOCH] * 1000}
    monkeypatch.setattr(kafka_topic, "AdminClient",
                        lambda config: _SettlingAdmin(config, failures))
    begin = time.monotonic()
    with pytest.raises(StoreError) as info:
        open_store(f"kafka://{kafka_servers}/{topic}", kafkaConnectTimeoutMs=1000)
    assert time.monotonic() - begin < 5
    message = str(info.value)
    assert topic in message and "Leader epoch is newer than broker epoch" in message
    assert "after 1s" in message and "kafkaConnectTimeoutMs" in message
    assert "start a broker" not in message, "the broker is there: do not say start one"


def test_just_created_topics_work_at_once(kafka_servers: str) -> None:
    """Issue 7: 40 topics, each opened right after it is created (by someone else, or by
    the store itself), four at a time, all take puts and read them back."""
    names = [f"actionstate-new-{uuid.uuid4().hex[:12]}" for _ in range(40)]
    admin = AdminClient({"bootstrap.servers": kafka_servers})

    def one(i: int, name: str) -> None:
        if i % 2:
            admin.create_topics([NewTopic(name, 8, 1, config={"cleanup.policy": "compact"})])[
                name].result()
        store = open_store(f"kafka://{kafka_servers}/{name}?partitions=8")
        store.rebuild(None)
        sk = _put(store, f"key{i}", 0)
        reader = open_store(f"kafka://{kafka_servers}/{name}")
        reader.rebuild(_from_start(store.recovery_marker()), read_only=True)
        state = reader.get(sk)
        assert state is not None and state.calls[0].result == f"key{i}/0/0"
        store.close()
        reader.close()

    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(len(names)), names))
    finally:
        delete_topics(kafka_servers, names)


@pytest.mark.parametrize("durability", ["sync", "group"])
def test_a_record_the_broker_refuses_is_an_error(url: str, durability: Durability) -> None:
    store = open_store(url, durability, kafkaActionStateTopicMaxMessageBytes=50_000)
    store.rebuild(None)
    sk = StateKey("big", 0, "act", "e" * 64)
    record = CallRecord(sk, 0, CallResult("f", "d" * 64, CallStatus.SUCCEEDED, "x" * 100_000))
    with pytest.raises(StoreError, match="max.message.bytes"):
        store.put(record)
        store.flush()
    _put(store, "small", 0)
    store.flush()
    store.close()


def test_options_flink_names_and_bad_values(kafka_servers: str, topic: str) -> None:
    url = f"kafka://{kafka_servers}/{topic}?partitions=3"
    # The same setting twice (URL host and path, query, keyword; alias and name) agreeing.
    librdkafka: dict[str, Any] = {"client.id": "t"}
    store = open_store(url, kafkaBootstrapServers=kafka_servers, kafkaActionStateTopic=topic,
                       kafkaActionStateTopicNumPartitions=3, partitions="3",
                       kafkaActionStateTopicReplicationFactor=1, **librdkafka)
    assert isinstance(store, KafkaActionStateStore) and store.partitions == 3
    assert store.url == url, "the store keeps the URL it was opened with"
    store.close()
    base = f"kafka://{kafka_servers}/{topic}"
    cases: list[tuple[str, dict[str, Any], str]] = [
        (base + "?partitions=many", {}, "kafkaActionStateTopicNumPartitions='many' must be an "
                                        "integer"),
        (base, {"kafkaRetainedCheckpoints": 0}, "retained checkpoints must be at least 1"),
        (base, {"acks": "1"}, "acks=all"),
        (base, {"enable.idempotence": "false"}, "enable.idempotence=true"),
        (base, {"producer.transactional.id": "x"}, "remove transactional.id"),
        (base, {"no.such.property": "1"}, "bad Kafka client setting"),
        (f"kafka:///{topic}", {}, "needs servers and a topic"),
    ]
    for bad_url, options, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            open_store(bad_url, **options)


def test_constructor_opens_the_store_directly(kafka_servers: str, topic: str) -> None:
    store = KafkaActionStateStore(kafka_servers, topic, partitions=2, connect_timeout=5.0)
    assert store.url == f"kafka://{kafka_servers}/{topic}" and store.partition_count == 2
    store.close()


@pytest.mark.parametrize(("url", "options", "first", "second"), [
    ("kafka://a:1/t", {"kafkaActionStateTopic": "u"},
     "kafkaActionStateTopic='t' in the URL", "kafkaActionStateTopic='u' in the options"),
    ("kafka://a:1/t", {"kafkaBootstrapServers": "b:2"},
     "kafkaBootstrapServers='a:1' in the URL", "kafkaBootstrapServers='b:2' in the options"),
    ("kafka://a:1/t?partitions=4", {"partitions": 8},
     "partitions='4' in the URL query", "partitions='8' in the options"),
    ("kafka://a:1/t?partitions=4", {"kafkaActionStateTopicNumPartitions": "5"},
     "partitions='4' in the URL query", "kafkaActionStateTopicNumPartitions='5' in the options"),
    ("kafka://a:1/t?kafkaConnectTimeoutMs=100", {"kafkaConnectTimeoutMs": 200},
     "kafkaConnectTimeoutMs='100' in the URL query",
     "kafkaConnectTimeoutMs='200' in the options"),
    ("kafka://a:1/t?linger.ms=1", {"linger.ms": "2"},
     "linger.ms='1' in the URL query", "linger.ms='2' in the options"),
])
def test_a_setting_given_twice_must_agree(url: str, options: dict[str, Any], first: str,
                                          second: str) -> None:
    """No silent precedence: the error names both places (before any connection)."""
    with pytest.raises(ConfigError, match="disagree: give the setting once") as info:
        open_store(url, **options)
    assert first in str(info.value) and second in str(info.value)


def test_the_url_host_may_be_one_of_the_servers_an_option_lists() -> None:
    """``url_from_options`` puts the first server in the URL; the option lists them all."""
    for url, options in [("kafka://a:1/t", {"kafkaBootstrapServers": "a:1,b:2"}),
                         ("kafka://b:2/t?kafkaBootstrapServers=a:1,b:2", {}),
                         ("kafka:///t", {"kafkaBootstrapServers": "a:1,b:2"})]:
        assert parse_url(url, options).servers == "a:1,b:2"
    with pytest.raises(ConfigError, match="disagree"):
        parse_url("kafka://c:3/t", {"kafkaBootstrapServers": "a:1,b:2"})


def test_defaults_and_conversions() -> None:
    settings = parse_url("kafka://a:1/t?kafkaConnectTimeoutMs=2500&replicationFactor=3",
                         {"actionStateStoreBackend": "kafka"})
    assert (settings.servers, settings.topic, settings.partitions, settings.replication_factor,
            settings.max_message_bytes, settings.retained_checkpoints,
            settings.connect_timeout, settings.client_config) == (
        "a:1", "t", 64, 3, 16 << 20, 1, 2.5, {})


def test_an_unknown_option_is_an_error_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        open_store("kafka://127.0.0.1:1/t", kafkaTopic="x")
    message = str(info.value)
    assert "unknown Kafka store option 'kafkaTopic'" in message
    for known in ("kafkaBootstrapServers", "kafkaActionStateTopic",
                  "kafkaActionStateTopicNumPartitions", "partitions",
                  "kafkaActionStateTopicReplicationFactor", "replicationFactor",
                  "kafkaActionStateTopicMaxMessageBytes", "kafkaRetainedCheckpoints",
                  "kafkaConnectTimeoutMs"):
        assert known in message


def test_librdkafka_properties_pass_through() -> None:
    """Names with a dot, and the producer's own names without one, go to the clients."""
    passed = {"client.id": "t", "producer.linger.ms": "2", "consumer.fetch.min.bytes": "1",
              "acks": "all", "retries": "3", "security.protocol": "PLAINTEXT"}
    assert parse_url("kafka://a:1/t?client.id=t", passed).client_config == passed


RESTART_TEST = "test_sync_put_waits_out_a_broker_restart"


@pytest.fixture(scope="module", autouse=True)
def private_broker(request: pytest.FixtureRequest, kafka_servers: str,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str] | None]:
    """A second broker, for the test that stops and restarts one; None if it does not run.

    It starts in the background when this module's first test runs, so that its
    startup overlaps the other tests. Its jars are hard links to the shared broker's
    (fetched by ``kafka_servers``), its data a temporary directory, its ports free ones.
    """
    if not any(item.name == RESTART_TEST for item in request.session.items):
        yield None
        return
    home = tmp_path_factory.mktemp("private-kafka")
    cache = services_cache()
    version = re.search(r"<kafka.version>(.*)</kafka.version>",
                        (SERVICE.parent / "kafka-pom.xml").read_text())
    assert version is not None
    lib = Path("kafka") / version[1] / "lib"

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(cache / lib, home / lib, copy_function=link)
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    env = {**os.environ, "ACTIONSTATE_CACHE": str(home), "KAFKA_PORT": str(ports[0]),
           "KAFKA_CONTROLLER_PORT": str(ports[1]), "KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m"}
    starting = subprocess.Popen([str(SERVICE), "start"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        yield env
    finally:
        starting.communicate(timeout=120)
        subprocess.run([str(SERVICE), "stop"], env=env, capture_output=True, timeout=60)


@pytest.mark.slow
def test_sync_put_waits_out_a_broker_restart(
        private_broker: dict[str, str] | None, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While the broker is down a sync put waits (and says so); nothing is lost or doubled."""
    assert private_broker is not None
    env, service = private_broker, [str(SERVICE)]
    servers = subprocess.run(service + ["start"], env=env, capture_output=True, text=True,
                             check=True, timeout=120).stdout.split()[-1]  # waits for it
    monkeypatch.setattr(kafka_store, "WAIT_STEP", 0.5)
    url = f"kafka://{servers}/outage?partitions=2"
    store = open_store(url)
    store.rebuild(None)
    _put(store, "k", 0, 0)
    subprocess.run(service + ["stop"], env=env, capture_output=True, check=True, timeout=60)
    restart = subprocess.Popen(service + ["start"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    with caplog.at_level(logging.WARNING, logger="actionstate.stores.kafka"):
        for position in range(1, 4):
            _put(store, "k", 0, position)
    assert restart.wait(120) == 0
    assert "has not acknowledged 1 record(s) for topic outage" in caplog.text
    restored = open_store(url)
    # Each run's claim and fence (2 partitions) and the 4 calls.
    assert restored.rebuild(_from_start(store.recovery_marker())) == 2 + 4 + 2
    state = restored.get(StateKey("k", 0, "act", "e" * 64))
    assert state is not None and [c.result for c in state.calls.values()] == [
        f"k/0/{i}" for i in range(4)]
    store.close()
    restored.close()
