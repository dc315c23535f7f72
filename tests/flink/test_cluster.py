"""The local Flink cluster end to end: a PyFlink job runs to its end, and a Kafka →
Python (keyed state) → Kafka exactly-once job through the connector jar survives a
TaskManager kill -9 (its Python workers killed with it) and a new TaskManager."""

from __future__ import annotations

import re
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest

from actionstate.testing.flink import Flink, script
from actionstate.testing.topics import Topics, produce, read_committed

PARTITIONS = 3  # and parallelism 3: the 4 slots of the TaskManager hold it
KEYS = [f"k{i}" for i in range(6)]


def test_python_job_runs_to_its_end(flink: Flink, tmp_path: Path) -> None:
    job = flink.run_py("smoke_job.py", str(tmp_path / "out"))
    flink.wait_job(job, {"FINISHED"}, timeout=180)
    lines = [line for f in (tmp_path / "out").rglob("*") if f.is_file()
             and not f.name.startswith(".") for line in f.read_text().splitlines()]
    assert sorted(lines) == sorted(f"W{i}" for i in range(100))


class Inputs:
    """``key:seq`` records, each key's in one partition (so in order)."""

    def __init__(self, servers: str, topic: str) -> None:
        self.servers, self.topic = servers, topic
        self.sent: list[str] = []
        self.seq: Counter[str] = Counter()

    def send(self, per_key: int) -> list[str]:
        batch = []
        for _ in range(per_key):
            for key in KEYS:
                self.seq[key] += 1
                batch.append(f"{key}:{self.seq[key]}")
        produce(self.servers, self.topic, [
            (zlib.crc32(v.split(":")[0].encode()) % PARTITIONS, None, v.encode())
            for v in batch])
        self.sent += batch
        return batch


def outputs(servers: str, topic: str, committed: bool = True) -> list[str]:
    return [value.decode() for _key, value in read_committed(servers, topic, committed=committed)
            if value is not None]


def wait_outputs(servers: str, topic: str, inputs: list[str], committed: bool = True,
                 timeout: float = 120) -> list[str]:
    """Poll the output topic until an output for each of ``inputs`` is there."""
    deadline = time.monotonic() + timeout
    while True:
        found = outputs(servers, topic, committed)
        done = {out.rsplit(":", 1)[0] for out in found}
        if done >= set(inputs):
            return found
        assert time.monotonic() < deadline, (
            f"{len(set(inputs) - done)} of {len(inputs)} inputs have no "
            f"{'committed ' if committed else ''}output after {timeout} s")
        time.sleep(0.2)


def check_exactly_once(found: list[str], sent: list[str]) -> None:
    """One output per input, and each key's counts 1, 2, 3... in order of its inputs:
    the keyed state neither lost nor double-counted an input."""
    inputs = Counter(out.rsplit(":", 1)[0] for out in found)
    assert sorted(inputs) == sorted(sent), "outputs do not match the inputs"
    assert [i for i, n in inputs.items() if n > 1] == [], "inputs with more than one output"
    for out in found:
        key, seq, count = out.split(":")
        assert seq == count, f"{out}: the count of {key} is not continuous"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kafka_job_survives_a_taskmanager_kill(flink: Flink, kafka_servers: str,
                                               topics: Topics) -> None:
    source, sink = topics.create(PARTITIONS), topics.create(1)
    inputs = Inputs(kafka_servers, source)
    name = f"actionstate-flink-{source}"
    job = flink.run_py("kafka_job.py", flink.connector_jar, kafka_servers, source, sink, name,
                       str(PARTITIONS), "3000")
    try:
        flink.wait_job(job, {"RUNNING"}, tasks_running=True)
        # Through the connector both ways, committed by a checkpoint.
        check_exactly_once(wait_outputs(kafka_servers, sink, inputs.send(5)), inputs.sent)

        # Kill when some outputs are written but not committed: no checkpoint completed
        # since their inputs were sent, so a restore must process them again.
        for _attempt in range(10):
            before = flink.checkpoints(job)["counts"]["completed"]
            wait_outputs(kafka_servers, sink, inputs.send(3), committed=False)
            if flink.checkpoints(job)["counts"]["completed"] == before:
                break
        else:
            pytest.fail("a checkpoint completed during each of 10 batches")
        latest = flink.checkpoints(job)["latest"]["completed"]["id"]
        killed_at = time.monotonic()
        report = script("kill-taskmanager")
        killed = re.fullmatch(r"killed taskmanager (\d+), python workers ([\d ]+)\n", report)
        assert killed, f"no Python worker was killed with the TaskManager: {report!r}"
        pids = [int(killed.group(1)), *map(int, killed.group(2).split())]
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists(), f"pid {pid} survived kill-taskmanager"
        flink.wait_failover(job)
        restarting = time.monotonic() - killed_at

        inputs.send(3)  # while no TaskManager runs
        started_at = time.monotonic()
        script("start-taskmanager")
        registered = time.monotonic() - started_at
        flink.wait_job(job, {"RUNNING"}, timeout=180, tasks_running=True)
        running = time.monotonic() - killed_at
        inputs.send(2)
        found = wait_outputs(kafka_servers, sink, inputs.sent)
        caught_up = time.monotonic() - killed_at
        check_exactly_once(found, inputs.sent)

        restored = flink.checkpoints(job)["latest"]["restored"]
        assert restored is not None and restored["id"] >= latest, restored
        redone = len(outputs(kafka_servers, sink, committed=False)) - len(found)
        print(f"\nkill → job restarting {restarting:.1f} s; start-taskmanager {registered:.1f} s;"
              f" kill → running {running:.1f} s; kill → all outputs committed {caught_up:.1f} s;"
              f" restored checkpoint {restored['id']} (latest before the kill {latest});"
              f" {redone} aborted outputs redone; killed pids {pids}")
    finally:
        flink.cancel(job)
