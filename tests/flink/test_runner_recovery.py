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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actionstate.testing.crash import TRIAGE, labels, make_tickets
from actionstate.testing.fake_llm import FakeLLMServer
from actionstate.testing.flink import Flink, script
from actionstate.testing.services import Tables, service_lock, start_service
from actionstate.testing.topics import Topics, produce, read_committed

PARALLELISM = 2
TICKETS, CUSTOMERS = 60, 12
CONCURRENCY = 2
"""Keys in flight per subtask: few, so that a kill finds work left."""
CALLS_AFTER = PARALLELISM * CONCURRENCY + 4
"""Calls answered after the last completed checkpoint before a kill: more than can be
in flight at once, so that some were recorded."""


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

    def command(self, parallelism: int = PARALLELISM, concurrency: int = CONCURRENCY,
                savepoint: str | None = None, event_log: Path | None = None) -> list[str]:
        """``actionstate flink run`` of this job (add --detach or --until-end)."""
        cmd = [sys.executable, "-m", "actionstate", "flink", "run", f"{TRIAGE}:Triage",
               "--input", f"kafka://{self.servers}/{self.input}", "--key", "customer",
               "--output", f"kafka://{self.servers}/{self.output}", "--store", self.store,
               "--jobmanager", self.flink.address, "--parallelism", str(parallelism),
               "--checkpoint-interval", "2s", "--concurrency", str(concurrency),
               "--job", f"triage-{self.input}", "--connector-jar", self.flink.connector_jar,
               "--env", f"ACTIONSTATE_MODEL_BASE_URL={self.server.base_url}",
               "--env", f"ACTIONSTATE_REFUND_LEDGER={self.tmp / 'refunds.jsonl'}"]
        if savepoint is not None:
            cmd += ["--from-savepoint", savepoint]
        if event_log is not None:
            cmd += ["--event-log", str(event_log)]
        return cmd

    def submit(self, parallelism: int = PARALLELISM, savepoint: str | None = None,
               concurrency: int = CONCURRENCY, event_log: Path | None = None) -> str:
        """Submit the job, unbounded and detached; its id."""
        done = subprocess.run(
            [*self.command(parallelism, concurrency, savepoint, event_log), "--detach"],
            capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        self.job = done.stdout.strip().splitlines()[-1]
        return self.job

    def start_until_end(self, concurrency: int) -> subprocess.Popen[str]:
        """``--until-end``: the client runs until it has drained the job at the input's
        end; the job's id is taken from the JobManager as soon as it is there."""
        known = {job["jid"] for job in self.flink.rest("/jobs/overview")["jobs"]}
        proc = subprocess.Popen([*self.command(concurrency=concurrency), "--until-end"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (new := [job["jid"] for job in self.flink.rest("/jobs/overview")["jobs"]
                           if job["jid"] not in known]):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the job did not appear within 120 s"
            time.sleep(0.2)  # the REST API's poll interval
        self.job = new[0]
        self.flink.wait_job(self.job, {"RUNNING"}, timeout=120)
        return proc

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


@dataclass
class Kill:
    """What a TaskManager kill left: calls made after the last completed checkpoint,
    and calls in flight (sent before the kill ended, not answered a moment before it
    began: their records may not exist)."""

    uncovered: int
    in_flight: int


def kill_after_recorded_calls(run: FlinkRun, calls_after: int) -> Kill:
    """Wait until ``calls_after`` model calls were both sent and answered after the latest
    completed checkpoint (recorded, and not covered by it), then :func:`kill`."""
    return kill(run, await_recorded_calls(run, calls_after))


def await_recorded_calls(run: FlinkRun, calls_after: int) -> float:
    """Wait until ``calls_after`` model calls were both sent and answered after the latest
    completed checkpoint; when (epoch seconds) that checkpoint was acknowledged."""
    wall_offset = time.time() - time.monotonic()
    deadline = time.monotonic() + 180
    while True:
        covered = run.last_checkpoint()
        after = [r for r in run.server.requests
                 if r.answered is not None and r.received + wall_offset > covered]
        if covered > 0 and len(after) >= calls_after:
            break
        if run.flink.rest(f"/jobs/{run.job}")["state"] in ("FAILED", "CANCELED", "FINISHED"):
            failures = run.flink.rest(f"/jobs/{run.job}/exceptions")
            raise AssertionError(f"the job ended before the kill: {json.dumps(failures)[:3000]}")
        assert time.monotonic() < deadline, f"no {calls_after} calls after a checkpoint"
        time.sleep(0.05)  # the poll interval of the REST API and the model's counts
    return covered


def kill(run: FlinkRun, covered: float) -> Kill:
    """Kill -9 the TaskManager (and its Python workers) and start another; ``covered``:
    when (epoch seconds) the last completed checkpoint was acknowledged."""
    wall_offset = time.time() - time.monotonic()
    killing = time.monotonic()
    script("kill-taskmanager")
    requests = list(run.server.requests)
    uncovered = len([r for r in requests if r.received + wall_offset > covered])
    # Not answered 50 ms before the kill began: their records may not exist.
    in_flight = len([r for r in requests if r.answered is None or r.answered > killing - 0.05])
    script("start-taskmanager")
    return Kill(uncovered, in_flight)


def kill_during_rebuild(run: FlinkRun) -> Kill:
    """Once the restored job runs and its first model call came (workers are reading
    the store for the keys they meet), kill -9 the TaskManager again."""
    seen = run.server.total_calls
    run.flink.wait_job(run.job, {"RUNNING"}, timeout=120, tasks_running=True)
    deadline = time.monotonic() + 120
    while run.server.total_calls == seen:
        assert time.monotonic() < deadline, "no model call within 120 s of the restore"
        time.sleep(0.01)  # the poll interval of the model's counts
    return kill(run, run.last_checkpoint())


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


@pytest.fixture
def fluss_tables() -> Iterator[Tables]:
    """Tables on the local Fluss cluster, which no test of the main run (beside this
    one, scripts/test) restarts meanwhile."""
    with (service_lock("fluss", exclusive=False),
          Tables(start_service("fluss"), database="actionstate_flink") as made):
        yield made


@pytest.mark.slow
@pytest.mark.parametrize("store_kind", ["kafka", "fluss", "memory"])
def test_a_taskmanager_killed_after_recorded_calls(
        tmp_path: Path, kafka_servers: str, topics: Topics, cluster: Flink,
        store_kind: str, request: pytest.FixtureRequest) -> None:
    """Kill -9 the TaskManager once calls were recorded after the last completed
    checkpoint: with the Kafka or the Fluss store none of them runs again (only calls in
    flight at the kill may); memory:// (the control) pays them again. Either way the
    output topic, read committed, holds exactly one output per ticket, as an
    uninterrupted run."""
    flink = cluster
    if store_kind == "kafka":
        store = f"kafka://{kafka_servers}/{topics.name()}?partitions=4"
    elif store_kind == "fluss":
        store = request.getfixturevalue("fluss_tables").url()
    else:
        store = "memory://"
    with FakeLLMServer(latency=0.3) as server:
        run = FlinkRun(tmp_path, kafka_servers, topics, flink, server, store)
        run.submit()
        kill = kill_after_recorded_calls(run, CALLS_AFTER)
        finish(run)
        total = server.total_calls
        twice = sorted(prompt[:12] for prompt, n in server.calls.items() if n > 1)
    expected, expected_calls = reference(tmp_path)
    repeated, uncovered = total - expected_calls, kill.uncovered
    print(f"\n{store_kind}: {uncovered} calls after the checkpoint, {kill.in_flight} in "
          f"flight, {repeated} ran again: {twice}")
    outputs = run.outputs()
    missing = sorted({f"T{i}" for i in range(TICKETS)} - {row["id"] for row in outputs},
                     key=lambda name: int(name[1:]))
    assert len(outputs) == TICKETS, f"exactly one output per ticket; missing {missing}"
    assert _strip(outputs) == expected
    assert uncovered > kill.in_flight, "the kill must find recorded calls to keep"
    if store_kind != "memory":
        assert repeated <= kill.in_flight, (
            f"{repeated} calls ran again; {uncovered} were made after the last checkpoint, "
            f"{kill.in_flight} in flight")
    else:
        assert repeated >= uncovered, (
            f"memory:// keeps nothing: the {uncovered} calls after the checkpoint ran again "
            f"(seen {repeated})")


@pytest.mark.slow
@pytest.mark.parametrize("second_kill", ["after recorded calls", "during the rebuild"])
def test_two_taskmanager_kills_in_a_row(tmp_path: Path, kafka_servers: str, topics: Topics,
                                        cluster: Flink, second_kill: str) -> None:
    """Killed, restored, killed again after more calls were recorded, or as soon as the
    restored workers meet their first keys: each kill costs at most the calls in
    flight."""
    flink = cluster
    store = f"kafka://{kafka_servers}/{topics.name()}?partitions=4"
    with FakeLLMServer(latency=0.3) as server:
        run = FlinkRun(tmp_path, kafka_servers, topics, flink, server, store)
        run.submit(concurrency=1)  # slower: work is left for the second kill
        first = kill_after_recorded_calls(run, CALLS_AFTER)
        if second_kill == "during the rebuild":
            second = kill_during_rebuild(run)
        else:
            flink.wait_job(run.job, {"RUNNING"}, timeout=120, tasks_running=True)
            second = kill_after_recorded_calls(run, CALLS_AFTER)
        finish(run)
        total = server.total_calls
    expected, expected_calls = reference(tmp_path)
    repeated = total - expected_calls
    print(f"\ntwo kills ({second_kill}): {first.uncovered} and {second.uncovered} calls after the "
          f"checkpoints, {first.in_flight} and {second.in_flight} in flight, "
          f"{repeated} ran again")
    assert _strip(run.outputs()) == expected, "exactly one output per ticket"
    assert repeated <= first.in_flight + second.in_flight


@pytest.mark.slow
def test_a_jobmanager_killed_after_recorded_calls(
        tmp_path: Path, kafka_servers: str, topics: Topics, cluster: Flink) -> None:
    """kill -9 the JobManager once calls were recorded after the last completed
    checkpoint, then start another: it takes the job back from ZooKeeper (the cluster
    runs with high availability) and restores it from that checkpoint. Every output
    exactly once; no call answered before the kill runs again, those the checkpoint
    did not cover included (the TaskManager goes on until it notices the loss: calls
    made meanwhile may run again)."""
    flink = cluster
    store = f"kafka://{kafka_servers}/{topics.name()}?partitions=4"
    with FakeLLMServer(latency=0.3) as server:
        run = FlinkRun(tmp_path, kafka_servers, topics, flink, server, store)
        run.submit()
        covered = await_recorded_calls(run, CALLS_AFTER)
        wall_offset = time.time() - time.monotonic()
        killing = time.monotonic()
        script("kill-jobmanager")
        answered = [r for r in server.requests
                    if r.answered is not None and r.answered < killing - 0.05]
        uncovered = {r.prompt for r in answered if r.received + wall_offset > covered}
        script("start-jobmanager")
        deadline = time.monotonic() + 180
        while run.job not in {job["jid"] for job in flink.rest("/jobs/overview")["jobs"]}:
            assert time.monotonic() < deadline, "the new JobManager did not take the job back"
            time.sleep(0.2)  # the REST API's poll interval
        flink.wait_job(run.job, {"RUNNING"}, timeout=180, tasks_running=True)
        back = time.monotonic() - killing
        finish(run)
        again = {prompt for prompt, n in server.calls.items() if n > 1}
        total = server.total_calls
    expected, expected_calls = reference(tmp_path)
    restored = flink.checkpoints(run.job)["latest"]["restored"]
    print(f"\njobmanager kill: {len(uncovered)} calls recorded after checkpoint "
          f"{restored and restored['id']}, {total - expected_calls} ran again; running again "
          f"{back:.1f} s after the kill")
    assert restored is not None, "the new JobManager restored the job from a checkpoint"
    assert _strip(run.outputs()) == expected, "exactly one output per ticket"
    assert len(uncovered) > PARALLELISM * CONCURRENCY, "more than can be in flight at once"
    assert not again & {r.prompt for r in answered}, (
        f"calls answered before the kill ran again: {sorted(again)[:5]}")


def finish(run: FlinkRun) -> None:
    """Wait until every ticket's output is committed, then cancel the (unbounded) job."""
    wait_for_outputs(run, TICKETS)
    run.flink.cancel(run.job)


def wait_for_outputs(run: FlinkRun, count: int) -> None:
    deadline = time.monotonic() + 240
    while len(outputs := run.outputs()) < count:
        seen = {row["id"] for row in outputs}
        missing = [f"T{i}" for i in range(count) if f"T{i}" not in seen]
        if time.monotonic() >= deadline:
            pytest.fail(f"fewer than {count} committed outputs in 240 s: missing {missing}\n"
                        + diagnose(run, missing))
        time.sleep(0.5)  # the poll interval of the output topic


def diagnose(run: FlinkRun, missing: list[str]) -> str:
    """What a test that misses outputs shows: the missing tickets' records as a
    read_uncommitted consumer sees them (written, then aborted or still open), the job's
    state and exceptions, and the TaskManagers' log lines on transactions."""
    uncommitted = [json.loads(value)["id"] for _key, value
                   in read_committed(run.servers, run.output, committed=False)
                   if value is not None]
    lines = [f"read_uncommitted: {len(uncommitted)} records; of the missing, written: "
             f"{sorted(set(missing) & set(uncommitted))}",
             f"job: {run.flink.rest(f'/jobs/{run.job}')['state']}; exceptions: "
             f"{json.dumps(run.flink.rest(f'/jobs/{run.job}/exceptions'))[:1500]}"]
    logs = Path(os.environ.get("ACTIONSTATE_CACHE", Path.home() / ".cache/actionstate")) / "flink"
    for log in sorted((logs / "log").glob("*taskexecutor*.log*")):
        for line in log.read_text(errors="replace").splitlines():
            if any(word in line for word in ("Fenced", "Unable to commit", "ERROR")):
                lines.append(f"{log.name}: {line[:400]}")
    return "\n".join(lines[:80])


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
        run.submit(event_log=tmp_path / "events")
        wait_for_outputs(run, half)
        savepoint = run.stop_with_savepoint()
        flink.wait_job(run.job, {"FINISHED"}, timeout=120)
        run.produce(half, TICKETS)
        run.submit(parallelism=parallelism, savepoint=savepoint,
                   event_log=tmp_path / "events")
        wait_for_outputs(run, TICKETS)
        flink.cancel(run.job)
        total = server.total_calls
    expected, expected_calls = reference(tmp_path)
    assert _strip(run.outputs()) == expected, "exactly one output per ticket"
    assert total == expected_calls, "no call paid twice"
    logged = [json.loads(line) for log in (tmp_path / "events").glob("*.jsonl")
              for line in log.read_text().splitlines()]
    inputs = {row["event"]["input"]["id"] for row in logged
              if row["context"]["event_type"] == "actionstate.InputEvent"}
    assert inputs == {f"T{i}" for i in range(TICKETS)}, "every worker's event log is written"



@pytest.mark.slow
def test_a_bounded_job_killed_after_its_input_was_read(
        tmp_path: Path, kafka_servers: str, topics: Topics, cluster: Flink) -> None:
    """--until-end: the client stops the job with a drain once the input's end is in a
    checkpoint. Every ticket is read at once (more keys in flight than keys) and
    queues; kill -9 the TaskManager once calls were recorded after a checkpoint: the
    restored job runs the queued inputs (a bounded source would have ended, and a
    restored job would never run them), the drain finishes it, the client exits 0,
    every output exactly once, only calls in flight paid again."""
    flink = cluster
    store = f"kafka://{kafka_servers}/{topics.name()}?partitions=4"
    with FakeLLMServer(latency=1.0) as server:
        run = FlinkRun(tmp_path, kafka_servers, topics, flink, server, store)
        client = run.start_until_end(concurrency=CUSTOMERS)
        kill = kill_after_recorded_calls(run, CALLS_AFTER)
        _, stderr = client.communicate(timeout=300)
        assert client.returncode == 0, stderr[-3000:]
        assert flink.rest(f"/jobs/{run.job}")["state"] == "FINISHED"
        total = server.total_calls
    expected, expected_calls = reference(tmp_path)
    repeated = total - expected_calls
    print(f"\nbounded: {kill.uncovered} calls after the checkpoint, {kill.in_flight} in "
          f"flight, {repeated} ran again")
    assert _strip(run.outputs()) == expected, "exactly one output per ticket"
    # Every key can be in flight here, so in-flight calls may outnumber the uncovered
    # ones; what shows the store at work is that fewer calls ran again than the
    # checkpoint left uncovered (a store that keeps nothing re-runs all of them).
    assert repeated <= kill.in_flight
    assert repeated < kill.uncovered, (
        f"{repeated} calls ran again: the {kill.uncovered} made after the checkpoint were "
        "not kept")
