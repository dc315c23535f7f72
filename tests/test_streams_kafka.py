"""Kafka topics in and out of ``actionstate run`` and ``actionstate.run``, on the real local
broker: kill -9 at random moments, SIGTERM and more records, bad records and dead
letters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import actionstate
from actionstate.testing.crash import Streams, command, crash_check, make_tickets
from actionstate.testing.fake_llm import FakeLLMServer
from actionstate.testing.topics import Topics, produce, read_committed
from tests.agents.counter import Counter as CounterAgent

PARTITIONS = 4


@pytest.fixture
def topics(kafka_servers: str) -> Iterator[Topics]:
    made = Topics(kafka_servers)
    yield made
    made.delete()


def produce_tickets(servers: str, topic: str, lines: list[str]) -> None:
    """The ticket lines as records keyed by customer (the producer's partitioner picks
    the partition), in one transaction."""
    messages: list[tuple[int, bytes | None, bytes | None]] = []
    for line in lines:
        customer = json.loads(line)["customer"]
        messages.append((sum(customer.encode()) % PARTITIONS, customer.encode(),
                         line.encode()))
    produce(servers, topic, messages)


def committed_values(servers: str, topic: str) -> list[dict[str, Any]]:
    return [json.loads(value) for _key, value in read_committed(servers, topic)
            if value is not None]


def kafka_streams(servers: str, topics: Topics, output: str) -> Callable[[Path], Streams]:
    """Streams for a crash check: the run's tickets in a new input topic; the output a
    new topic (read committed) or ``labels.jsonl``."""

    def make(run_dir: Path) -> Streams:
        source = topics.create(PARTITIONS)
        produce_tickets(servers, source, (run_dir / "tickets.jsonl").read_text().splitlines())
        extra = ("--until-end",)
        if output == "kafka":
            sink = topics.create(PARTITIONS)
            return Streams(f"kafka://{servers}/{source}", f"kafka://{servers}/{sink}",
                           lambda: committed_values(servers, sink), extra)
        return Streams(f"kafka://{servers}/{source}", str(run_dir / "labels.jsonl"),
                       None, extra)

    return make


@pytest.mark.slow
@pytest.mark.parametrize("seed", [7, 8])
@pytest.mark.parametrize("output", ["jsonl", "kafka"])
def test_kill9_with_kafka_in_keeps_outputs_exact_and_calls_paid_once(
        tmp_path: Path, kafka_servers: str, topics: Topics, output: str, seed: int) -> None:
    """4 SIGKILLs per run, from the first 100 ms on, inputs in flight across checkpoints:
    the output holds exactly one record per ticket, identical to an uninterrupted run
    over the file, and no recorded model call ran again beyond those in flight."""
    crash_check(tmp_path, None, seed, kafka_streams(kafka_servers, topics, output))
    if output == "kafka":  # the control: the kills did leave records in open transactions
        sink = topics.names[-1]
        everything = read_committed(kafka_servers, sink, committed=False)
        assert len(everything) > len(read_committed(kafka_servers, sink)) == 240, (
            "a read_uncommitted consumer sees the aborted records of the killed runs")


@pytest.mark.slow
def test_kill9_with_kafka_in_and_out_on_the_kafka_store(
        tmp_path: Path, kafka_servers: str, topics: Topics) -> None:
    """Everything on the broker: input, output and the action state store."""
    store = f"kafka://{kafka_servers}/{topics.name()}?partitions=4"
    crash_check(tmp_path, store, 9, kafka_streams(kafka_servers, topics, "kafka"))


def _wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes],
              timeout: float = 60) -> None:
    """Until ``condition()`` holds (checked as fast as it can be read), the process is
    alive, and ``timeout`` has not passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"


@pytest.mark.slow
def test_an_unbounded_run_stops_on_sigterm_and_resumes_with_new_records(
        tmp_path: Path, kafka_servers: str, topics: Topics) -> None:
    make_tickets(tmp_path / "tickets.jsonl", 150, 10)
    lines = (tmp_path / "tickets.jsonl").read_text().splitlines()
    source, sink = topics.create(PARTITIONS), topics.create(2)
    streams = Streams(f"kafka://{kafka_servers}/{source}", f"kafka://{kafka_servers}/{sink}")
    produce_tickets(kafka_servers, source, lines[:100])
    with FakeLLMServer() as server:
        env = dict(os.environ, ACTIONSTATE_MODEL_BASE_URL=server.base_url,
                   ACTIONSTATE_REFUND_LEDGER=str(tmp_path / "refunds.jsonl"))
        for produced in (100, 150):
            if produced == 150:
                produce_tickets(kafka_servers, source, lines[100:])
            proc = subprocess.Popen(command(tmp_path, None, "sync", streams), env=env,
                                    stderr=subprocess.PIPE)
            def enough(n: int = produced) -> bool:
                return len(committed_values(kafka_servers, sink)) >= n

            _wait_for(enough, f"{produced} outputs", proc)
            assert proc.poll() is None, "an unbounded run waits for more records"
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
            assert "stopped by SIGTERM" in err.decode() and "Traceback" not in err.decode()
        calls = server.calls
    outputs = committed_values(kafka_servers, sink)
    assert sorted(o["id"] for o in outputs) == sorted(json.loads(x)["id"] for x in lines)
    assert Counter(o["id"] for o in outputs).most_common(1)[0][1] == 1, "none twice"
    assert all(count == 1 for count in calls.values()), "no model call paid twice"


BAD = [b'{"id": "T0", "customer": "a", "text": "hi", "amount": 1}', b"not json",
       b'{"id": "T2", "text": "no customer"}', b'{"id": "T3", "customer": 3, "text": "x"}',
       b'{"id": "T4", "customer": "b", "text": "hi", "amount": 1}']


def test_bad_records_stop_the_run_or_go_to_the_dead_letter_topic(
        tmp_path: Path, kafka_servers: str, topics: Topics) -> None:
    source, sink, letters = topics.create(1), topics.create(1), topics.create(1)
    produce(kafka_servers, source, [(0, None, value) for value in BAD])
    streams = Streams(f"kafka://{kafka_servers}/{source}", f"kafka://{kafka_servers}/{sink}",
                      extra=("--until-end",))
    with FakeLLMServer() as server:
        env = dict(os.environ, ACTIONSTATE_MODEL_BASE_URL=server.base_url,
                   ACTIONSTATE_REFUND_LEDGER=str(tmp_path / "refunds.jsonl"))
        stopped = subprocess.run(command(tmp_path, None, "sync", streams), env=env,
                                 capture_output=True, text=True, timeout=120, check=False)
        assert stopped.returncode == 2, stopped.stderr
        assert f"{source}[0]@1" in stopped.stderr and "not a JSON object" in stopped.stderr
        assert "Traceback" not in stopped.stderr
        assert [o["id"] for o in committed_values(kafka_servers, sink)] == ["T0"]
        with_letters = Streams(streams.input, streams.output, extra=(
            "--until-end", "--dead-letter", f"kafka://{kafka_servers}/{letters}"))
        done = subprocess.run(command(tmp_path, None, "sync", with_letters), env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
    assert sorted(o["id"] for o in committed_values(kafka_servers, sink)) == ["T0", "T4"]
    dead = committed_values(kafka_servers, letters)
    assert [letter["where"] for letter in dead] == [1, 2, 3]
    assert dead[0]["record"] == "not json"
    assert f"{source}[0]@2" in dead[1]["error"] and "no key field 'customer'" in dead[1]["error"]
    assert "not a string" in dead[2]["error"]


def test_the_python_api_reads_and_writes_topics(tmp_path: Path, kafka_servers: str,
                                                topics: Topics) -> None:
    source, sink = topics.create(2), topics.create(2)
    produce(kafka_servers, source, [
        (i % 2, f"k{i % 3}".encode(), json.dumps({"id": i, "n": i}).encode())
        for i in range(40)])
    stats = actionstate.run(CounterAgent, source=f"kafka://{kafka_servers}/{source}",
                            key="@key", sink=f"kafka://{kafka_servers}/{sink}",
                            until_end=True, state=tmp_path / "state")
    assert stats.inputs == 40 and stats.outputs == 40
    found = read_committed(kafka_servers, sink)
    assert sorted(json.loads(value)["id"] for _key, value in found if value) == list(range(40))
    assert {key for key, _value in found} == {b"k0", b"k1", b"k2"}, "keyed by the agent key"
    for key, value in found:
        assert value is not None and json.loads(value)["key"] == (key or b"").decode()
