"""The Flink runner on the real standalone cluster (scripts/services/flink) and broker:
TaskManager kill -9 with calls recorded since the last completed checkpoint, with the
Kafka store and with memory:// (the control that must pay them again).

Run with the Flink venv: ``.venv-flink/bin/pytest tests/flink`` (scripts/test does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actionstate.testing.crash import TRIAGE, labels, make_tickets
from actionstate.testing.fake_llm import FakeLLMServer
from actionstate.testing.topics import Topics, produce, read_committed
from tests.flink.conftest import Flink, script

PARALLELISM = 2
TICKETS, CUSTOMERS = 60, 12


@pytest.fixture
def topics(kafka_servers: str) -> Iterator[Topics]:
    made = Topics(kafka_servers)
    yield made
    made.delete()


@pytest.fixture
def cluster(flink: Flink) -> Iterator[Flink]:
    """The cluster with its slots free and a TaskManager (a failed test may leave a job
    running, or a TaskManager killed); jobs still running after the test are canceled."""
    def cancel_all() -> None:
        for job in flink.rest("/jobs/overview")["jobs"]:
            if job["state"] not in ("FINISHED", "FAILED", "CANCELED"):
                flink.cancel(job["jid"])

    cancel_all()
    if not flink.rest("/taskmanagers")["taskmanagers"]:
        script("start-taskmanager")
    yield flink
    cancel_all()


class FlinkRun:
    """One triage job on the cluster, its topics, and what the model saw."""

    def __init__(self, tmp: Path, servers: str, topics: Topics, flink: Flink,
                 server: FakeLLMServer, store: str, first: int = TICKETS) -> None:
        self.tmp, self.servers, self.flink, self.server = tmp, servers, flink, server
        make_tickets(tmp / "tickets.jsonl", TICKETS, CUSTOMERS)
        self.lines = (tmp / "tickets.jsonl").read_text().splitlines()
        self.input, self.output = topics.create(4), topics.create(2)
        self.produce(0, first)
        self.store = store
        self.job = ""

    def produce(self, start: int, stop: int) -> None:
        """Tickets ``start`` to ``stop`` into the input topic."""
        produce(self.servers, self.input, [(i % 4, None, self.lines[i].encode())
                                           for i in range(start, stop)])

    def submit(self, parallelism: int = PARALLELISM, savepoint: str | None = None,
               until_end: bool = True) -> str:
        cmd = [sys.executable, "-m", "actionstate", "flink", "run", f"{TRIAGE}:Triage",
               "--input", f"kafka://{self.servers}/{self.input}", "--key", "customer",
               "--output", f"kafka://{self.servers}/{self.output}", "--store", self.store,
               "--jobmanager", self.flink.address, "--parallelism", str(parallelism),
               "--checkpoint-interval", "2s", "--detach",
               "--job", f"triage-{self.input}", "--connector-jar", self.flink.connector_jar,
               "--env", f"ACTIONSTATE_MODEL_BASE_URL={self.server.base_url}",
               "--env", f"ACTIONSTATE_REFUND_LEDGER={self.tmp / 'refunds.jsonl'}"]
        if savepoint is not None:
            cmd += ["--from-savepoint", savepoint]
        if until_end:
            cmd.append("--until-end")
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        self.job = done.stdout.strip().splitlines()[-1]
        return self.job

    def last_checkpoint(self) -> float:
        """Epoch seconds at which the latest completed checkpoint was acknowledged (0: none)."""
        latest = self.flink.checkpoints(self.job)["latest"]["completed"]
        return float(latest["latest_ack_timestamp"]) / 1000 if latest else 0.0

    def stop_with_savepoint(self) -> str:
        """Stop the job with a savepoint; its path."""
        trigger = self.flink.rest_post(f"/jobs/{self.job}/stop", {
            "drain": False, "targetDirectory": str(self.tmp / "savepoints")})["request-id"]
        deadline = time.monotonic() + 120
        while True:
            found = self.flink.rest(f"/jobs/{self.job}/savepoints/{trigger}")
            if found["status"]["id"] == "COMPLETED":
                operation = found["operation"]
                assert "location" in operation, operation
                return str(operation["location"])
            assert time.monotonic() < deadline, f"no savepoint within 120 s: {found}"
            time.sleep(0.2)  # the poll interval of the REST API

    def outputs(self) -> list[dict[str, Any]]:
        return [json.loads(value) for _key, value in read_committed(self.servers, self.output)
                if value is not None]


def wait_for_calls(run: FlinkRun, count: int) -> None:
    deadline = time.monotonic() + 180
    while run.server.total_calls < count:
        assert time.monotonic() < deadline, f"fewer than {count} model calls in 180 s"
        time.sleep(0.05)  # the poll interval of the model's counts


def kill_after_recorded_calls(run: FlinkRun, calls_after: int) -> int:
    """Wait until ``calls_after`` model calls were answered after the latest completed
    checkpoint, then kill -9 the TaskManager (and its Python workers) and start
    another; returns how many calls that checkpoint did not cover."""
    wall_offset = time.time() - time.monotonic()
    deadline = time.monotonic() + 180
    while True:
        covered = run.last_checkpoint()
        after = [r for r in run.server.requests
                 if r.answered is not None and r.answered + wall_offset > covered]
        if covered > 0 and len(after) >= calls_after:
            break
        if run.flink.rest(f"/jobs/{run.job}")["state"] in ("FAILED", "CANCELED", "FINISHED"):
            failures = run.flink.rest(f"/jobs/{run.job}/exceptions")
            raise AssertionError(f"the job ended before the kill: {json.dumps(failures)[:3000]}")
        assert time.monotonic() < deadline, f"no {calls_after} calls after a checkpoint"
        time.sleep(0.05)  # the poll interval of the REST API and the model's counts
    script("kill-taskmanager")
    uncovered = len([r for r in run.server.requests if r.received + wall_offset > covered])
    script("start-taskmanager")
    return uncovered


def reference(tmp: Path) -> tuple[list[dict[str, Any]], int]:
    """The same tickets through the local runner, uninterrupted: its outputs and how
    many model calls it made."""
    (tmp / "reference").mkdir()
    make_tickets(tmp / "reference" / "tickets.jsonl", TICKETS, CUSTOMERS)
    with FakeLLMServer() as server:
        env = dict(os.environ, ACTIONSTATE_MODEL_BASE_URL=server.base_url,
                   ACTIONSTATE_REFUND_LEDGER=str(tmp / "reference" / "refunds.jsonl"))
        done = subprocess.run(
            [sys.executable, "-m", "actionstate", "run", f"{TRIAGE}:Triage", "--input",
             str(tmp / "reference" / "tickets.jsonl"), "--key", "customer", "--state",
             str(tmp / "reference" / "state"), "--output",
             str(tmp / "reference" / "labels.jsonl"), "--quiet"],
            env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        return labels(tmp / "reference"), server.total_calls


def _strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        if "refund" in row:
            row["refund"].pop("refund_id")
    return sorted(rows, key=lambda row: str(row["id"]))


@pytest.mark.slow
@pytest.mark.parametrize("store_kind", ["kafka", "memory"])
def test_a_taskmanager_killed_after_recorded_calls(
        tmp_path: Path, kafka_servers: str, topics: Topics, cluster: Flink,
        store_kind: str) -> None:
    """Kill -9 the TaskManager once calls were recorded after the last completed
    checkpoint: with the Kafka store none of them runs again (at most one in flight per
    subtask); memory:// (the control) pays them again. Either way the output topic,
    read committed, holds exactly one output per ticket, as an uninterrupted run."""
    flink = cluster
    store = (f"kafka://{kafka_servers}/{topics.name()}?partitions=4" if store_kind == "kafka"
             else "memory://")
    with FakeLLMServer(latency=0.1) as server:
        run = FlinkRun(tmp_path, kafka_servers, topics, flink, server, store)
        run.submit()
        uncovered = kill_after_recorded_calls(run, 3)
        flink.wait_job(run.job, {"FINISHED"}, timeout=300)
        total = server.total_calls
    expected, expected_calls = reference(tmp_path)
    repeated = total - expected_calls
    print(f"\n{store_kind}: {uncovered} calls after the checkpoint, {repeated} ran again")
    outputs = run.outputs()
    assert len(outputs) == TICKETS, "exactly one output per ticket"
    assert _strip(outputs) == expected
    if store_kind == "kafka":
        assert repeated <= PARALLELISM, (
            f"{repeated} calls ran again; {uncovered} were made after the last checkpoint")
    else:
        assert repeated >= uncovered - PARALLELISM >= 1, (
            f"memory:// keeps nothing: the {uncovered} calls after the checkpoint ran again "
            f"(seen {repeated})")


@pytest.mark.slow
def test_two_taskmanager_kills_in_a_row(tmp_path: Path, kafka_servers: str, topics: Topics,
                                        cluster: Flink) -> None:
    """Killed, restored, killed again after more calls were recorded: each kill costs
    at most the calls in flight."""
    flink = cluster
    store = f"kafka://{kafka_servers}/{topics.name()}?partitions=4"
    with FakeLLMServer(latency=0.1) as server:
        run = FlinkRun(tmp_path, kafka_servers, topics, flink, server, store)
        run.submit()
        first = kill_after_recorded_calls(run, 3)
        flink.wait_job(run.job, {"RUNNING"}, timeout=120, tasks_running=True)
        second = kill_after_recorded_calls(run, 3)
        flink.wait_job(run.job, {"FINISHED"}, timeout=300)
        total = server.total_calls
    expected, expected_calls = reference(tmp_path)
    repeated = total - expected_calls
    print(f"\ntwo kills: {first} and {second} calls after the checkpoints, {repeated} ran again")
    assert _strip(run.outputs()) == expected, "exactly one output per ticket"
    assert repeated <= 2 * PARALLELISM


def wait_for_outputs(run: FlinkRun, count: int) -> None:
    deadline = time.monotonic() + 240
    while len(run.outputs()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} committed outputs in 240 s"
        time.sleep(0.5)  # the poll interval of the output topic


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", [1, 3])
def test_stop_with_savepoint_and_restart_at_another_parallelism(
        tmp_path: Path, kafka_servers: str, topics: Topics, cluster: Flink,
        parallelism: int) -> None:
    """An unbounded job at parallelism 2 handles half the tickets and is stopped with a
    savepoint; the other half is produced, and the job starts again from the savepoint
    at 1 or 3: keyed state (seq, memory, store bounds) moves with the keys, every output
    once, identical to an uninterrupted run, no call paid twice."""
    flink = cluster
    store = f"kafka://{kafka_servers}/{topics.name()}?partitions=4"
    half = TICKETS // 2
    with FakeLLMServer(latency=0.05) as server:
        run = FlinkRun(tmp_path, kafka_servers, topics, flink, server, store, first=half)
        run.submit(until_end=False)
        wait_for_outputs(run, half)
        savepoint = run.stop_with_savepoint()
        flink.wait_job(run.job, {"FINISHED"}, timeout=120)
        run.produce(half, TICKETS)
        run.submit(parallelism=parallelism, savepoint=savepoint, until_end=False)
        wait_for_outputs(run, TICKETS)
        flink.cancel(run.job)
        total = server.total_calls
    expected, expected_calls = reference(tmp_path)
    assert _strip(run.outputs()) == expected, "exactly one output per ticket"
    assert total == expected_calls, "no call paid twice"
