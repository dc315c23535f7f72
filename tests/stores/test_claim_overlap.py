"""A rebuild reads the records before its claim while the claim waits on the medium
(Kafka's acks, Fluss's), and ends with the same states as a read without a claim."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from actionstate.records.state import CallRecord, CallResult, CallStatus, StateKey
from actionstate.stores import ActionStateStore, open_store
from actionstate.testing.services import Tables, delete_topics, start_service

RECORDS = 3000


@pytest.fixture(params=["kafka", "fluss"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "kafka":
        servers = start_service("kafka")
        topic = f"actionstate-test-{uuid.uuid4().hex[:12]}"
        yield f"kafka://{servers}/{topic}?partitions=16"
        delete_topics(servers, [topic])
    else:
        tables = Tables(start_service("fluss"))
        yield tables.url("buckets=16")
        tables.drop()


def _written(url: str) -> Any:
    """A run of RECORDS calls on 200 keys, and a marker from which all are read."""
    store = open_store(url, durability="group")
    store.rebuild(None)
    for i in range(RECORDS):
        sk = StateKey(f"key-{i % 200}", i // 200, "act", "e" * 64)
        store.put(CallRecord(sk, 0, CallResult("f", "d" * 64, CallStatus.SUCCEEDED,
                                               f"result {i}")))
    store.flush()
    marker = dataclasses.replace(store.recovery_marker(), offsets={}, fences={})
    store.close()
    return marker


def _states(store: ActionStateStore) -> dict[StateKey, Any]:
    return {sk: {p: c.result for p, c in state.calls.items()} for sk, state in store.states()}


def test_a_rebuild_reads_during_its_claim_and_ends_as_a_read_without_one(url: str) -> None:
    marker = _written(url)
    store = open_store(url)
    applied_at_claim: list[int] = []
    real_claim = store._claim

    def claim(ends: dict[int, int] | None = None) -> None:
        real_claim(ends)
        applied_at_claim.append(store._applied)

    store._claim = claim  # type: ignore[method-assign]
    count = store.rebuild(marker)
    # The claim waited at least once on its medium, and read a piece meanwhile (256
    # records); before this change it read nothing until the claim was in.
    assert applied_at_claim and applied_at_claim[0] >= 256
    assert count >= RECORDS  # the run's records, then the fences of the claims
    reader = open_store(url)
    reader.rebuild(marker, read_only=True)
    states = _states(store)
    assert len(states) == RECORDS and states == _states(reader)
    assert {r for calls in states.values() for r in calls.values()} == {
        f"result {i}" for i in range(RECORDS)}
    for s in (store, reader):
        s.close()
