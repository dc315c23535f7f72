"""KeyScanner against a real Kafka store: what a restored worker reads for a key,
and the per-writer fencing of zombies (an older worker's records written after a
newer one's are ignored)."""

from __future__ import annotations

import warnings

import pytest

from actionstate.errors import StoreError
from actionstate.records.state import CallRecord, CallResult, CallStatus, StateKey
from actionstate.stores import open_store
from actionstate.stores.base import ActionStateStore
from actionstate.testing.topics import Topics, delete_compacted_records

with warnings.catch_warnings():  # pyflink's own deprecations, at import
    warnings.simplefilter("ignore", DeprecationWarning)
    from actionstate.runners.flink.job import FlinkJob, writer_epoch
    from actionstate.runners.flink.scanner import KeyScanner

NAMESPACE = "flink-scanner-test"


@pytest.fixture
def store_url(kafka_servers: str, topics: Topics) -> str:
    return f"kafka://{kafka_servers}/{topics.name()}?partitions=1"


def writer(url: str, epoch: int) -> ActionStateStore:
    store = open_store(url, durability="sync")
    store.attach(NAMESPACE)
    store.epoch = epoch
    return store


def call(key: str, position: int, result: str) -> CallRecord:
    return CallRecord(StateKey(key, 0, "classify", "input"), position,
                      CallResult("model", "digest", CallStatus.SUCCEEDED, result))


def results(store: ActionStateStore, key: str) -> dict[int, str]:
    state = store.index.get(StateKey(key, 0, "classify", "input"))
    assert state is not None
    return {position: found.result for position, found in state.calls.items()}


def test_a_zombie_writing_after_a_newer_worker_is_ignored(store_url: str) -> None:
    """The lost worker (epoch 1) recorded call 0; the restored one (epoch 2) replayed it
    and recorded call 1; then the lost worker's zombie recorded calls 1 and 2. A later
    restore takes calls 0 and 1 as the restored worker saw them, and not the zombie's."""
    lost, restored = writer(store_url, 1), writer(store_url, 2)
    try:
        lost.put(call("k", 0, "first"), sync=True)
        restored.put(call("k", 1, "restored"), sync=True)
        lost.put(call("k", 1, "zombie"), sync=True)
        lost.put(call("k", 2, "zombie"), sync=True)
        lost.put(call("other", 0, "old writer alone"), sync=True)
    finally:
        lost.close()
        restored.close()
    reader = writer(store_url, 3)
    try:
        scanner = KeyScanner(reader, reader.end_offsets(), {})
        scanner.claim("k", None)
        scanner.claim("other", None)
        assert results(reader, "k") == {0: "first", 1: "restored"}
        assert results(reader, "other") == {0: "old writer alone"}
    finally:
        reader.close()


def test_later_submissions_and_attempts_write_under_higher_epochs() -> None:
    job = FlinkJob(agent="a:A", input="kafka://h:1/i", key="k", output="kafka://h:1/o",
                   store="memory://", job="j", submitted=1_800_000_000_000)
    later = FlinkJob(agent="a:A", input="kafka://h:1/i", key="k", output="kafka://h:1/o",
                     store="memory://", job="j", submitted=1_800_000_000_001)
    assert writer_epoch(job, 0) < writer_epoch(job, 1) < writer_epoch(job, 9_999)
    assert writer_epoch(job, 50_000) < writer_epoch(later, 0)


def test_a_range_deleted_under_a_key_is_a_clear_error(
        store_url: str, kafka_servers: str, topics: Topics) -> None:
    """Records a restored key needs were deleted (delete-records, or a delete policy
    someone set): the claim fails naming the partition and the offsets, not a replay
    that silently pays the calls again."""
    lost = writer(store_url, 1)
    try:
        for position in range(4):
            lost.put(call("k", position, f"result {position}"), sync=True)
    finally:
        lost.close()
    delete_compacted_records(kafka_servers, topics.names[-1], 0, 2)
    reader = writer(store_url, 2)
    try:
        scanner = KeyScanner(reader, reader.end_offsets(), {})
        with pytest.raises(StoreError, match="partition 0 starts at offset 2.*from offset 0"):
            scanner.claim("k", (0, 0))
    finally:
        reader.close()
