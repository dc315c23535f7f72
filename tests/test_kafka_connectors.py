"""The Kafka input and exactly-once output, against the real local broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from actionstate.connectors.base import InputRecord, Item, Rejected, Sink, Source
from actionstate.connectors.kafka import KafkaSink, KafkaSource
from actionstate.errors import ConfigError, ConnectorError, IncompatibleStateError, InputError
from actionstate.testing.services import CHECKOUT
from actionstate.testing.topics import Topics, produce, read_committed


@pytest.fixture
def topics(kafka_servers: str) -> Iterator[Topics]:
    made = Topics(kafka_servers)
    yield made
    made.delete()


def record(key: str, n: int) -> bytes:
    return json.dumps({"k": key, "n": n}).encode()


def collect(source: Source, admit: int | None = None, stop_after: int | None = None
            ) -> list[Item]:
    """Every item of the source's batches (until they end, or ``stop_after`` items were
    read), admitting the first ``admit`` (all by default)."""

    async def run() -> list[Item]:
        items: list[Item] = []
        batches = source.batches()
        async for batch in batches:
            for item in batch:
                if admit is None or len(items) < admit:
                    source.admitted(item)
                items.append(item)
            if stop_after is not None and len(items) >= stop_after:
                break
        await batches.aclose()  # type: ignore[attr-defined]
        return items

    return asyncio.run(asyncio.wait_for(run(), 60))


def high_watermark(servers: str, topic: str) -> int:
    """Offsets written to ``topic``'s partitions, committed or not."""
    consumer = Consumer({"bootstrap.servers": servers, "group.id": "actionstate-test",
                         "isolation.level": "read_uncommitted"})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    total = sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                               cached=False)[1] for p in partitions)
    consumer.close()
    return total


# --- the input ---------------------------------------------------------------------


def test_reads_every_partition_and_a_subset(kafka_servers: str, topics: Topics) -> None:
    topic = topics.create(3)
    produce(kafka_servers, topic, [(p, None, record(f"u{p}", i)) for p in range(3)
                                   for i in range(4)])
    source = KafkaSource.from_url(f"kafka://{kafka_servers}/{topic}", "k", until_end=True)
    assert isinstance(source, Source)
    source.restore(None)
    assert source.fraction() == 0.0, "nothing read yet"
    items = collect(source)
    assert source.fraction() == 1.0, "read to the end offsets: the progress's 100%"
    source.close()
    assert all(isinstance(i, InputRecord) for i in items)
    got = {(i.mark[0], i.where): (i.key, i.record["n"]) for i in items
           if isinstance(i, InputRecord)}
    assert got == {(p, i): (f"u{p}", i) for p in range(3) for i in range(4)}
    assert all(i.mark == (i.mark[0], i.where + 1) for i in items)

    subset = KafkaSource.from_url(f"kafka://{kafka_servers}/{topic}?partitions=0,2", "k",
                                  until_end=True)
    subset.restore(None)
    unbounded = KafkaSource.from_url(f"kafka://{kafka_servers}/{topic}", "k")
    unbounded.restore(None)
    assert unbounded.fraction() is None, "a topic without an end has no share to show"
    unbounded.close()
    assert sorted((i.key, i.where) for i in collect(subset)) == [
        (f"u{p}", i) for p in (0, 2) for i in range(4)]
    assert subset.state()["offsets"] == {"0": 5, "2": 5}  # past the commit markers
    subset.close()


def test_restore_continues_after_the_admitted_records(kafka_servers: str,
                                                      topics: Topics) -> None:
    topic = topics.create(2)
    produce(kafka_servers, topic, [(i % 2, None, record(f"u{i}", i)) for i in range(10)])
    url = f"kafka://{kafka_servers}/{topic}"
    first = KafkaSource.from_url(url, "k", until_end=True)
    first.restore(None)
    read = collect(first, admit=3)
    first.close()
    assert len(read) == 10
    admitted, rest = read[:3], read[3:]
    state = json.loads(json.dumps(first.state()))
    assert state["kind"] == "kafka" and state["topic"] == topic
    assert state["offsets"] == {str(p): max(i.where for i in admitted if i.mark[0] == p) + 1
                                for p in {i.mark[0] for i in admitted}}

    # unbounded: stops only when told to
    second = KafkaSource.from_url(url, "k")
    second.restore(state)
    again = collect(second, stop_after=len(rest))
    second.close()
    assert sorted((i.key, i.where) for i in again) == sorted((i.key, i.where) for i in rest)


def test_key_from_the_message_key(kafka_servers: str, topics: Topics) -> None:
    topic = topics.create(1)
    produce(kafka_servers, topic, [(0, b"alice", b'{"n": 1}'), (0, "bö".encode(), b"{}")])
    source = KafkaSource.from_url(f"kafka://{kafka_servers}/{topic}", "@key", until_end=True)
    source.restore(None)
    items = collect(source)
    source.close()
    assert [(i.key, i.record) for i in items if isinstance(i, InputRecord)] == [
        ("alice", {"n": 1}), ("bö", {})]


def test_until_end_stops_at_the_end_it_found_on_transactional_input(
        kafka_servers: str, topics: Topics) -> None:
    topic = topics.create(2)
    produce(kafka_servers, topic, [(p, None, record("a", p)) for p in (0, 1)])
    produce(kafka_servers, topic, [(0, None, record("aborted", 0))], commit=False)
    produce(kafka_servers, topic, [(0, None, record("b", 0))])
    source = KafkaSource.from_url(f"kafka://{kafka_servers}/{topic}", "k", until_end=True)
    source.restore(None)
    produce(kafka_servers, topic, [(p, None, record("late", p)) for p in (0, 1)])
    items = collect(source)
    source.close()
    assert sorted((i.key, i.mark[0]) for i in items) == [("a", 0), ("a", 1), ("b", 0)]


def test_every_kind_of_bad_record_is_rejected_with_where_it_is(
        kafka_servers: str, topics: Topics) -> None:
    topic = topics.create(1)
    bad: list[tuple[bytes | None, bytes | None, str]] = [
        (b"k1", b"\xff{}", "not valid UTF-8"),
        (b"k2", b"{nope", "not a JSON object"),
        (b"k3", b"[1, 2]", "not a JSON object (an array)"),
        (b"k4", b'{"x": 1}', "no key field 'k'"),
        (b"k5", b'{"k": 5}', "quote the key"),
        (b"k6", b'{"k": null}', "is null, not a string"),
        (b"k7", None, "tombstone"),
    ]
    produce(kafka_servers, topic, [(0, key, value) for key, value, _ in bad]
            + [(0, None, record("good", 0))])
    source = KafkaSource.from_url(f"kafka://{kafka_servers}/{topic}", "k", until_end=True)
    source.restore(None)
    items = collect(source)
    source.close()
    assert len(items) == len(bad) + 1
    for offset, (item, (key, value, words)) in enumerate(zip(items, bad, strict=False)):
        assert isinstance(item, Rejected), item
        assert item.error.startswith(f"{topic}[0]@{offset}: ") and words in item.error, item
        assert (item.raw, item.raw_key, item.where) == (value or b"", key, offset)
        assert item.mark == (0, offset + 1)
    assert isinstance(items[-1], InputRecord) and items[-1].key == "good"

    produce(kafka_servers, topic, [(0, None, b"{}")])  # after the commit marker
    by_key = KafkaSource.from_url(f"kafka://{kafka_servers}/{topic}", "@key", until_end=True)
    by_key.restore(source.state())
    [unkeyed] = collect(by_key)
    by_key.close()
    assert isinstance(unkeyed, Rejected) and "no message key" in unkeyed.error
    assert unkeyed.error.startswith(f"{topic}[0]@{len(bad) + 2}: ")


def test_a_state_of_another_input_or_a_malformed_one_is_refused(
        kafka_servers: str, topics: Topics) -> None:
    topic, other = topics.create(1), topics.create(1)
    source = KafkaSource.from_url(f"kafka://{kafka_servers}/{topic}", "k")
    state = {"kind": "kafka", "servers": kafka_servers, "topic": other, "offsets": {}}
    with pytest.raises(ConfigError, match=f"was run with input kafka://.*/{other}, not "
                                          f"kafka://.*/{topic}: use the same input or a new"):
        source.restore(state)
    with pytest.raises(IncompatibleStateError, match="'offsets'"):
        source.restore(state | {"topic": topic, "offsets": []})
    with pytest.raises(IncompatibleStateError, match="'offsets' entry 'x'"):
        source.restore(state | {"topic": topic, "offsets": {"x": 1}})
    source.close()


def test_records_deleted_before_they_were_read_are_an_input_error(
        kafka_servers: str, topics: Topics) -> None:
    topic = topics.create(1)
    produce(kafka_servers, topic, [(0, None, record("a", i)) for i in range(4)])
    admin = AdminClient({"bootstrap.servers": kafka_servers})
    for deleted in admin.delete_records([TopicPartition(topic, 0, 2)]).values():
        deleted.result()
    source = KafkaSource.from_url(f"kafka://{kafka_servers}/{topic}", "k", until_end=True)
    with pytest.raises(InputError, match=rf"{topic}\[0\].*offset 1.*starts at offset 2"):
        source.restore({"kind": "kafka", "servers": kafka_servers, "topic": topic,
                        "offsets": {"0": 1}})
    source.restore(None)  # from the start that is left
    assert [i.where for i in collect(source)] == [2, 3]
    source.close()


def test_bad_urls_options_and_topics(kafka_servers: str, topics: Topics) -> None:
    topic = topics.create(2)
    with pytest.raises(ConfigError, match="unknown Kafka input option 'bogus'.*partitions"):
        KafkaSource.from_url(f"kafka://{kafka_servers}/{topic}?bogus=1", "k")
    with pytest.raises(ConfigError, match="has no partition 5"):
        KafkaSource.from_url(f"kafka://{kafka_servers}/{topic}?partitions=0,5", "k")
    with pytest.raises(ConfigError, match="partitions=0,2"):
        KafkaSource.from_url(f"kafka://{kafka_servers}/{topic}?partitions=a", "k")
    missing = topics.name()
    with pytest.raises(ConfigError, match=f"topic {missing} does not exist.*create it"):
        KafkaSource.from_url(f"kafka://{kafka_servers}/{missing}", "k")
    with pytest.raises(ConfigError, match="kafka://host:port"):
        KafkaSource.from_url(f"kafka://{kafka_servers}/", "k")


@pytest.mark.parametrize("connector", ["input", "output"])
def test_an_unreachable_broker_fails_within_the_connect_timeout(connector: str) -> None:
    url, options = "kafka://127.0.0.1:1/t", {"kafkaConnectTimeoutMs": "1500"}
    started = time.monotonic()
    with pytest.raises(ConnectorError, match=r"127\.0\.0\.1:1.*scripts/services/kafka start"):
        if connector == "input":
            KafkaSource.from_url(url, "k", options=options)
        else:
            KafkaSink.from_url(url, options=options)
    assert time.monotonic() - started < 6


# --- the output ----------------------------------------------------------------------


def open_sink(servers: str, topic: str, state: dict[str, Any] | None) -> KafkaSink:
    sink = KafkaSink.from_url(f"kafka://{servers}/{topic}?partitions=3")
    sink.restore(state)
    return sink


def values(servers: str, topic: str) -> list[Any]:
    return sorted((json.loads(v or b"null")["n"] for _, v in read_committed(servers, topic)))


def test_outputs_are_invisible_until_commit(kafka_servers: str, topics: Topics) -> None:
    topic = topics.name()
    sink = open_sink(kafka_servers, topic, None)
    assert isinstance(sink, Sink)
    sink.write([("alice", {"n": 1, "text": "héllo"}), ("bob", {"n": 2})])
    state = sink.prepare()
    assert json.loads(json.dumps(state)) == state
    assert state["txn"] == 1 and state["transactional_id"].startswith("actionstate-")
    assert high_watermark(kafka_servers, topic) == 2  # on the broker, not yet committed
    assert read_committed(kafka_servers, topic) == []
    sink.commit()
    assert sorted(read_committed(kafka_servers, topic)) == [
        (b"alice", '{"n": 1, "text": "héllo"}'.encode()), (b"bob", b'{"n": 2}')]
    assert sink.prepare()["txn"] == 1  # nothing new: the state names the last commit
    sink.close()


CRASH = """
import json, os, sys
from actionstate.connectors.kafka import KafkaSink
sink = KafkaSink.from_url(sys.argv[1])
sink.restore(None)
sink.write([(f"k{i}", {"n": i}) for i in range(3)])
state = sink.prepare()
if sys.argv[2] == "commit":
    sink.commit()
print(json.dumps(state), flush=True)
os._exit(0)  # a crash: nothing closed
"""


def crashed_run(servers: str, topic: str, commit: bool) -> dict[str, Any]:
    """The state a run prepared (and committed, with ``commit``) before it died."""
    done = subprocess.run(
        [sys.executable, "-c", CRASH, f"kafka://{servers}/{topic}?partitions=3",
         "commit" if commit else "prepare"],
        capture_output=True, text=True, timeout=120, check=False, cwd=CHECKOUT,
        env={**os.environ, "PYTHONPATH": str(CHECKOUT / "src")})
    assert done.returncode == 0, done.stderr
    state: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return state


def test_a_crash_between_checkpoint_and_commit_is_finished_by_restore(
        kafka_servers: str, topics: Topics) -> None:
    topic = topics.name()
    state = crashed_run(kafka_servers, topic, commit=False)
    assert state["txn"] == 1 and len(state["records"]) == 3
    assert values(kafka_servers, topic) == []  # the open transaction is not visible
    # Control: a state that says transaction 1 needs no commit re-sends nothing.
    control = open_sink(kafka_servers, topic, state | {"txn": 0, "records": []})
    control.close()
    assert values(kafka_servers, topic) == []
    sink = open_sink(kafka_servers, topic, state)  # re-sent
    assert values(kafka_servers, topic) == [0, 1, 2]
    assert sorted(k or b"" for k, _ in read_committed(kafka_servers, topic)) == [
        b"k0", b"k1", b"k2"]
    sink.write([("k3", {"n": 3})])
    assert sink.prepare()["txn"] == 2
    sink.commit()
    sink.close()
    assert values(kafka_servers, topic) == [0, 1, 2, 3]


def test_a_crash_after_the_commit_re_sends_nothing(kafka_servers: str, topics: Topics) -> None:
    topic = topics.name()
    state = crashed_run(kafka_servers, topic, commit=True)
    assert values(kafka_servers, topic) == [0, 1, 2]
    sink = open_sink(kafka_servers, topic, state)  # committed: nothing to do
    sink.close()
    assert values(kafka_servers, topic) == [0, 1, 2]
    # Control: a state that says transaction 2 was prepared (the marker says 1) re-sends.
    control = open_sink(kafka_servers, topic, state | {"txn": 2})
    control.close()
    assert values(kafka_servers, topic) == [0, 0, 1, 1, 2, 2]


def test_outputs_after_the_last_checkpoint_are_aborted(kafka_servers: str,
                                                       topics: Topics) -> None:
    topic = topics.name()
    sink = open_sink(kafka_servers, topic, None)
    sink.write([("a", {"n": 1})])
    saved = sink.prepare()
    sink.commit()
    sink.write([("b", {"n": 2})])
    sink.prepare()  # flushed to the broker, but its checkpoint was never saved
    assert high_watermark(kafka_servers, topic) >= 3  # 1, its commit marker, 2
    restored = open_sink(kafka_servers, topic, saved)
    assert values(kafka_servers, topic) == [1]
    restored.write([("b", {"n": 2})])  # the runner runs the input again
    restored.prepare()
    restored.commit()
    assert values(kafka_servers, topic) == [1, 2]
    restored.close()
    sink.close()


def test_a_zombie_is_fenced_by_the_run_that_restored_its_state(
        kafka_servers: str, topics: Topics) -> None:
    topic = topics.name()
    zombie = open_sink(kafka_servers, topic, None)
    zombie.write([("a", {"n": 1})])
    state = zombie.prepare()
    zombie.commit()
    successor = open_sink(kafka_servers, topic, state)
    # librdkafka reports the fence as such, or (transaction.version 2, now and then) only
    # as the broker's abort of the zombie's transaction: either way the zombie stops.
    with pytest.raises(ConnectorError, match="fenced: a newer run of this state dir took over"
                       "|the broker aborted this run's transaction"):
        zombie.write([("z", {"n": 9})])
        zombie.prepare()
    zombie.close()
    successor.write([("b", {"n": 2})])
    state = successor.prepare()
    third = open_sink(kafka_servers, topic, state)  # re-sends b
    with pytest.raises(ConnectorError, match="fenced: a newer run of this state dir took over"):
        successor.commit()
    successor.close()
    third.close()
    assert values(kafka_servers, topic) == [1, 2]


def test_a_purge_reported_alone_names_the_aborted_transaction(
        kafka_servers: str, topics: Topics) -> None:
    """A fenced zombie's flush can end in a SystemError whose only error is a delivery
    purged (transaction.version 2): a clean-clone run of the test above got "cannot
    write ... (Local: Purged in queue) ... check the broker's log and this client's
    ACLs". A purge names the aborted transaction wherever it is met; a fence met with
    it comes first."""
    sink = open_sink(kafka_servers, topics.name(), None)
    purged = KafkaException(KafkaError(KafkaError._PURGE_QUEUE))
    assert "the broker aborted this run's transaction" in str(sink._error("write to", purged))
    sink._failed = [KafkaError(KafkaError._PURGE_QUEUE), KafkaError(KafkaError._FENCED)]
    fatal = sink._fatal(SystemError("a delivery callback raised"))
    assert "fenced: a newer run" in str(sink._error("write to", fatal))
    sink._failed = []
    sink.close()


def test_writes_between_prepare_and_commit_go_to_the_next_transaction(
        kafka_servers: str, topics: Topics) -> None:
    topic = topics.name()
    sink = open_sink(kafka_servers, topic, None)
    sink.write([("a", {"n": 1})])
    first = sink.prepare()
    sink.write([("b", {"n": 2})])  # while the checkpoint is being saved
    sink.commit()
    assert values(kafka_servers, topic) == [1]
    second = sink.prepare()
    assert (first["records"], second["records"]) == ([["a", '{"n": 1}']], [["b", '{"n": 2}']])
    sink.commit()
    sink.close()
    assert values(kafka_servers, topic) == [1, 2]


def test_an_output_state_of_another_topic_is_refused(kafka_servers: str,
                                                     topics: Topics) -> None:
    topic, other = topics.name(), topics.name()
    sink = KafkaSink.from_url(f"kafka://{kafka_servers}/{topic}")
    with pytest.raises(ConfigError, match=f"was run with output kafka://.*/{other}, not"):
        sink.restore({"kind": "kafka", "servers": kafka_servers, "topic": other,
                      "transactional_id": "x", "txn": 1, "records": []})
    with pytest.raises(IncompatibleStateError, match="'txn'"):
        sink.restore({"kind": "kafka", "servers": kafka_servers, "topic": topic,
                      "transactional_id": "x", "records": []})
    sink.close()
