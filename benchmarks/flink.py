"""The Flink runner on the local standalone cluster: throughput with slow model
calls, per-input overhead against the same PyFlink job without actionstate, and
restore time after a TaskManager kill -9, in one run.

The agent: ``examples/triage.py:Triage`` (a ``def`` action calling the model
through ``ctx.durable_execute``, a second action that may issue a refund), over
the fake model server of ``actionstate.testing`` (it counts calls; latency set
per part). Every job: a 4-partition input topic produced once before it, a
2-partition output topic (exactly once), the Kafka store on a 4-partition topic
(``--durability sync``), checkpoints every 2 s, ``until_end`` (the client drains
the job once the input's end is in a checkpoint).
Timed from the fake model's log: the span from the first request received to the
last one answered (Flink's start-up and the final commit are outside it), and the
job's wall time from submission to FINISHED. Checked: a read_committed consumer
sees one output per input.

1. ``throughput``: 200 ms model calls; parallelism 1 and 2 x concurrency (keys in
   flight per subtask) 1, 8, 64; 300 keys; inputs 60 at concurrency 1, 300 at 8,
   600 at 64 (``--quick``: half).
2. ``overhead``: a model answering at once; 2,000 inputs over 500 keys,
   parallelism 1, interleaved rounds (2; ``--quick`` 1): the same job with
   ``memory://`` (nothing recorded outside the worker: the job without
   durability) and with the Kafka store, at concurrency 1 and 64. (A plain PyFlink
   function without actionstate as the baseline did not start on the cluster in
   the time there was: its job stayed INITIALIZING.)
3. ``restore``: 200 ms model, 600 inputs, 300 keys, parallelism 2, concurrency 64,
   Kafka store; kill -9 the TaskManager (and its Python workers) once 40 calls were
   answered after the latest completed checkpoint, start another at once: seconds
   from the kill to the job RUNNING again, to the first model call after it, to
   every output committed (this job is unbounded, canceled then); calls paid twice
   (against the calls of an uninterrupted run).

Needs ``scripts/services/kafka start`` and ``scripts/services/flink start`` (with
FLINK_PYTHON set to this venv's python).

Usage: .venv-flink/bin/python benchmarks/flink.py [--quick] [--parts=throughput,overhead,restore]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from actionstate.runners.flink.graph import submit
from actionstate.runners.flink.job import FlinkJob, default_connector_jar
from actionstate.stores import open_store
from actionstate.testing.crash import TRIAGE, make_tickets
from actionstate.testing.fake_llm import FakeLLMServer
from actionstate.testing.topics import Topics, produce, read_committed

CHECKOUT = Path(__file__).resolve().parents[1]
SERVICE = CHECKOUT / "scripts" / "services" / "flink"
TMP = Path(os.environ.get("TMPDIR", "/tmp")) / f"actionstate-bench-flink-{os.getpid()}"


def service(*args: str) -> str:
    done = subprocess.run([str(SERVICE), *args], capture_output=True, text=True,
                          env={**os.environ, "FLINK_PYTHON": sys.executable}, check=False)
    if done.returncode != 0:
        raise SystemExit(f"scripts/services/flink {' '.join(args)} failed:\n{done.stderr}")
    return (done.stdout.strip().splitlines() or [""])[-1]


def rest(address: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
        return json.loads(response.read())


def wait_job(address: str, job_id: str, states: set[str], running_tasks: bool = False) -> None:
    deadline = time.monotonic() + 600
    while True:
        job = rest(address, f"/jobs/{job_id}")
        if job["state"] in states and (not running_tasks or all(
                v["status"] == "RUNNING" for v in job["vertices"])):
            return
        if job["state"] in {"FAILED", "CANCELED"}:
            raise SystemExit(f"job {job_id} {job['state']}: "
                             f"{json.dumps(rest(address, f'/jobs/{job_id}/exceptions'))[:2000]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} still {job['state']} after 600 s")
        time.sleep(0.1)  # the REST poll interval


class Bench:
    def __init__(self, servers: str, address: str, jar: str) -> None:
        self.servers, self.address, self.jar = servers, address, jar
        self.topics = Topics(servers)

    def job(self, n: int, keys: int, latency: float, parallelism: int, concurrency: int,
            store: str, kill_after: int = 0) -> dict[str, float]:
        """One bounded job; its timings (and, with ``kill_after``, a TaskManager kill)."""
        tmp = TMP / uuid.uuid4().hex[:8]
        tmp.mkdir(parents=True)
        make_tickets(tmp / "tickets.jsonl", n, keys)
        lines = (tmp / "tickets.jsonl").read_text().splitlines()
        source, sink = self.topics.create(4), self.topics.create(2)
        produce(self.servers, source, [(i % 4, None, line.encode())
                                       for i, line in enumerate(lines)])
        if store == "kafka":
            store = f"kafka://{self.servers}/{self.topics.name()}?partitions=4"
        opened = open_store(store, durability="sync")
        try:
            start_bound = {str(p): o for p, o in opened.end_offsets().items()}
        finally:
            opened.close()
        result: dict[str, float] = {}
        with FakeLLMServer(latency=latency) as server:
            environment = {"ACTIONSTATE_MODEL_BASE_URL": server.base_url,
                           "ACTIONSTATE_REFUND_LEDGER": str(tmp / "refunds.jsonl")}
            job = FlinkJob(
                agent=f"{TRIAGE}:Triage", input=f"kafka://{self.servers}/{source}",
                key="customer", output=f"kafka://{self.servers}/{sink}", store=store,
                job=f"bench-{source}", parallelism=parallelism, checkpoint_interval=2.0,
                concurrency=concurrency, until_end=not kill_after, jobmanager=self.address,
                connector_jar=self.jar, start_bound=start_bound, environment=environment)
            submitted = time.monotonic()
            # --until-end on a cluster: submit returns once it has drained the job.
            job_id = submit(job, detach=bool(kill_after))
            if kill_after:
                # Unbounded: a bounded job restored from a checkpoint taken after its
                # source finished loses its queued inputs (docs/architecture.md).
                result.update(self.kill(job_id, server, kill_after))
                while len(read_committed(self.servers, sink)) < n:
                    time.sleep(0.2)  # the poll interval of the output topic
                finished = time.monotonic()
                urllib.request.urlopen(urllib.request.Request(
                    f"http://{self.address}/jobs/{job_id}?mode=cancel", method="PATCH"),
                    timeout=10).close()
                wait_job(self.address, job_id, {"CANCELED"})
            else:
                wait_job(self.address, job_id, {"FINISHED"})
                finished = time.monotonic()
            requests = list(server.requests)
        outputs = [v for _k, v in read_committed(self.servers, sink) if v is not None]
        if len(outputs) != n:
            raise SystemExit(f"{len(outputs)} outputs for {n} inputs")
        first = min(r.received for r in requests)
        last = max(r.answered or r.received for r in requests)
        result.update(span=last - first, rate=n / (last - first), wall=finished - submitted,
                      per_input_ms=1000 * (last - first) / n, calls=len(requests))
        if kill_after:
            result["to_outputs"] = finished - result.pop("killed_at")
        return result

    def kill(self, job_id: str, server: FakeLLMServer, after: int) -> dict[str, float]:
        """Kill -9 the TaskManager once ``after`` calls were answered after the latest
        completed checkpoint; start another; the times to RUNNING and to a new call."""
        wall_offset = time.time() - time.monotonic()
        while True:
            latest = rest(self.address, f"/jobs/{job_id}/checkpoints")["latest"]["completed"]
            covered = float(latest["latest_ack_timestamp"]) / 1000 if latest else 0.0
            done = [r for r in list(server.requests)
                    if r.answered is not None and r.answered + wall_offset > covered]
            if covered and len(done) >= after:
                break
            time.sleep(0.05)  # the REST poll interval
        service("kill-taskmanager")
        killed = time.monotonic()
        seen = len(server.requests)
        service("start-taskmanager")
        wait_job(self.address, job_id, {"RUNNING"}, running_tasks=True)
        running = time.monotonic()
        while len(server.requests) == seen:
            time.sleep(0.05)  # the model's count poll interval
        call = time.monotonic()
        return {"killed_at": killed, "to_running": running - killed,
                "to_first_call": call - killed}


def table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
              + " |")


def throughput(bench: Bench, quick: bool) -> None:
    print("\n## throughput: 200 ms model calls, Kafka store, 300 keys")
    rows = []
    for parallelism in (1, 2):
        for concurrency in (1, 8, 64):
            n = {1: 60, 8: 300, 64: 600}[concurrency] // (2 if quick else 1)
            got = bench.job(n, 300, 0.2, parallelism, concurrency, "kafka")
            ceiling = parallelism * concurrency / 0.2
            rows.append([str(parallelism), str(concurrency), str(n), f"{got['rate']:.1f}",
                         f"{min(ceiling, n / 0.2):.0f}", f"{got['wall']:.1f}"])
            print(f"  p={parallelism} c={concurrency}: {got['rate']:.1f} inputs/s", flush=True)
    table(rows, ["parallelism", "keys in flight per subtask", "inputs", "inputs/s",
                 "ceiling (p x c / 0.2 s)", "job wall s"])


def overhead(bench: Bench, quick: bool) -> None:
    print("\n## overhead: model answering at once, 2,000 inputs, 500 keys, parallelism 1")
    variants = {"memory:// (no durability; baseline), concurrency 1": ("memory://", 1),
                "Kafka store, concurrency 1": ("kafka", 1),
                "memory://, concurrency 64": ("memory://", 64),
                "Kafka store, concurrency 64": ("kafka", 64)}
    per_input: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(1 if quick else 2):
        for name, (store, concurrency) in variants.items():
            got = bench.job(2000, 500, 0.0, 1, concurrency, store)
            per_input[name].append(got["per_input_ms"])
            print(f"  {name}: {got['per_input_ms']:.2f} ms per input", flush=True)
    base = statistics.median(per_input["memory:// (no durability; baseline), concurrency 1"])
    table([[name, f"{statistics.median(v):.2f}", f"{statistics.median(v) / base:.2f}x",
            " ".join(f"{x:.2f}" for x in v)] for name, v in per_input.items()],
          ["variant", "ms per input (median)", "vs baseline", "rounds"])


def restore(bench: Bench) -> None:
    print("\n## restore: TaskManager kill -9, 200 ms model, 600 inputs, p=2, concurrency 64")
    clean = bench.job(600, 300, 0.2, 2, 64, "kafka")
    got = bench.job(600, 300, 0.2, 2, 64, "kafka", kill_after=40)
    table([[f"{got['to_running']:.1f}", f"{got['to_first_call']:.1f}",
            f"{got['to_outputs']:.1f}", str(int(got["calls"] - clean["calls"]))]],
          ["kill -> RUNNING s", "kill -> first model call s", "kill -> all outputs s",
           "calls paid twice"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default="throughput,overhead,restore")
    args = parser.parse_args()
    servers = subprocess.run([str(CHECKOUT / "scripts" / "services" / "kafka"), "start"],
                             capture_output=True, text=True, check=True).stdout.split()[-1]
    address = service("start")  # reused when running
    bench = Bench(servers, address, default_connector_jar())
    print(f"# Flink runner benchmark ({os.cpu_count()} CPUs; broker, cluster and model "
          "server on this host)")
    try:
        parts = args.parts.split(",")
        if "throughput" in parts:
            throughput(bench, args.quick)
        if "overhead" in parts:
            overhead(bench, args.quick)
        if "restore" in parts:
            restore(bench)
    finally:
        bench.topics.delete()


if __name__ == "__main__":
    main()
