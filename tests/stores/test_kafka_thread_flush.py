"""The Kafka store's flush on a worker thread while puts go on (ActionStateStore.flush)."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator

import pytest

from actionstate.records.state import CallRecord, CallResult, CallStatus, StateKey
from actionstate.stores import open_store
from actionstate.testing.services import delete_topics


@pytest.fixture
def topic(kafka_servers: str) -> Iterator[str]:
    name = f"actionstate-test-{uuid.uuid4().hex[:12]}"
    yield name
    delete_topics(kafka_servers, [name])


def test_flushes_on_a_thread_end_while_puts_go_on_and_lose_nothing(
        kafka_servers: str, topic: str) -> None:
    url = f"kafka://{kafka_servers}/{topic}?partitions=3"
    store = open_store(url, durability="group")
    store.rebuild(None)
    start = dataclasses.replace(store.recovery_marker(), offsets={}, fences={})
    stop = threading.Event()
    flushes = [0]

    def flusher() -> None:
        while not stop.is_set():
            store.flush()  # must end although puts keep coming
            flushes[0] += 1

    thread = threading.Thread(target=flusher)
    thread.start()
    keys = [StateKey(f"k{n}", 0, "act", "e" * 64) for n in range(20)]
    try:
        for n in range(3000):
            record = CallRecord(keys[n % 20], n // 20,
                                CallResult("f", "d", CallStatus.SUCCEEDED, n))
            store.put(record, sync=n % 1000 == 999)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and flushes[0] > 1
    store.flush()
    again = open_store(url)
    again.rebuild(start)
    results = sorted(c.result for k in keys if (s := again.get(k)) for c in s.calls.values())
    assert results == list(range(3000))
    store.close()
    again.close()
