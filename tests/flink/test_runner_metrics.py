"""Metrics of a Flink job on the real cluster: each Python worker exports its counters
over OTLP/HTTP (the job's ``--env OTEL_*``) as its own ``service.instance.id``, and
the totals across workers equal what the fake model server and the refund ledger saw."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from actionstate.testing.crash import TRIAGE, make_tickets
from actionstate.testing.fake_llm import FakeLLMServer
from actionstate.testing.fake_otlp import FakeOtlpCollector
from actionstate.testing.flink import Flink
from actionstate.testing.topics import Topics, produce, read_committed

TICKETS = 24


def test_each_worker_exports_its_counters_and_the_totals_match_what_ran(
        cluster: Flink, kafka_servers: str, topics: Topics, tmp_path: Path) -> None:
    make_tickets(tmp_path / "tickets.jsonl", TICKETS, 6)
    lines = (tmp_path / "tickets.jsonl").read_text().splitlines()
    source, output = topics.create(2), topics.create(1)
    produce(kafka_servers, source, [(i % 2, None, line.encode()) for i, line in enumerate(lines)])
    ledger = tmp_path / "refunds.jsonl"
    with FakeLLMServer() as server, FakeOtlpCollector() as collector:
        cmd = [sys.executable, "-m", "actionstate", "flink", "run", f"{TRIAGE}:Triage",
               "--input", f"kafka://{kafka_servers}/{source}", "--key", "customer",
               "--output", f"kafka://{kafka_servers}/{output}", "--store", "memory://",
               "--jobmanager", cluster.address, "--parallelism", "2",
               "--checkpoint-interval", "1s", "--until-end",
               "--job", f"metrics-{source}", "--connector-jar", cluster.connector_jar,
               "--env", f"ACTIONSTATE_MODEL_BASE_URL={server.base_url}",
               "--env", f"ACTIONSTATE_REFUND_LEDGER={ledger}",
               "--env", "OTEL_METRICS_EXPORTER=otlp",
               "--env", f"OTEL_EXPORTER_OTLP_ENDPOINT={collector.endpoint}",
               "--env", "OTEL_METRIC_EXPORT_INTERVAL=600000"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        job = done.stdout.strip().splitlines()[-1]
        cluster.wait_job(job, {"FINISHED"}, timeout=240)
        model_calls = server.total_calls
    outputs = [json.loads(v) for _, v in read_committed(kafka_servers, output) if v]
    assert len(outputs) == TICKETS
    instances = collector.instances()
    assert len(instances) == 2 and all(i and i.endswith(("-0-0", "-1-0")) for i in instances)
    executed = inputs = written = 0
    for instance in instances:  # each worker's last (final, at close) export
        sums = collector.last_sums(instance)
        inputs += sum(sums["actionstate.inputs"].values())
        written += sum(sums["actionstate.outputs"].values())
        executed += sum(n for attrs, n in sums["actionstate.calls"].items()
                        if dict(attrs)["outcome"] == "executed")
    refunds = len(ledger.read_text().splitlines()) if ledger.exists() else 0
    assert inputs == TICKETS and written == TICKETS
    assert executed == model_calls + refunds > TICKETS
