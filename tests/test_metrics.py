"""Metrics: the run's counters, per function, and its histograms, checked against runs
with known counts, through OpenTelemetry's in-memory reader (the Python API) and
through a real OTLP/HTTP export of ``actionstate run`` to a fake collector (which
decodes what it receives), across a kill -9 and a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import actionstate
from actionstate import ActionFailedError
from actionstate.testing.crash import make_tickets
from actionstate.testing.fake_llm import FakeLLMServer
from actionstate.testing.fake_otlp import FakeOtlpCollector
from tests.agents.orders import FAIL_ON, Orders
from tests.agents.recovery import REPLIES


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != "actionstate":
                continue
            for metric in scope.metrics:
                found[metric.name] = list(metric.data.data_points)
    return found


def _by(points: list[Any], *names: str) -> Counter[tuple[Any, ...]]:
    return Counter({tuple(p.attributes.get(n) for n in names): p.value for p in points})


def test_counters_and_histograms_match_a_failed_run_and_its_resume(tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"n": n, "k": f"k{n % 3}"}) + "\n" for n in range(12)))
    common: dict[str, Any] = dict(source=str(inputs), key="k", sink=str(tmp_path / "out.jsonl"),
                                  state=tmp_path / "state", concurrency=1,
                                  meter_provider=provider)
    FAIL_ON["armed"] = True
    with pytest.raises(ActionFailedError):
        actionstate.run(Orders, **common)
    first = _points(reader)
    first_calls = _by(first["actionstate.calls"], "function", "outcome")
    executed_first = sum(n for (_, outcome), n in first_calls.items() if outcome == "executed")
    assert executed_first >= 2, "input 7's calls were made and recorded before it failed"
    FAIL_ON["armed"] = False
    stats = actionstate.run(Orders, **common)
    points = _points(reader)

    calls = _by(points["actionstate.calls"], "function", "outcome")
    fid_lookup = next(f for f, _ in calls if f.endswith("lookup"))
    fid_pay = next(f for f, _ in calls if f.endswith("pay"))
    recorded = executed_first // 2  # inputs whose calls the failed run recorded (7 included)
    # the resumed run replays every recorded call and pays only for the rest
    per_function = {"executed": 12 - recorded, "replayed": recorded, "reconciled": 0,
                    "retried": 0}
    assert stats.functions() == {fid_lookup: per_function, fid_pay: per_function}
    # the exported counters are cumulative over both runs of this process: none paid twice
    assert calls[(fid_lookup, "executed")] == 12 and calls[(fid_pay, "executed")] == 12
    assert calls[(fid_lookup, "replayed")] == recorded == calls[(fid_pay, "replayed")]
    tokens = _by(points["actionstate.tokens"], "type", "outcome")
    assert tokens[("prompt", "executed")] == 120 and tokens[("completion", "executed")] == 36
    assert tokens[("prompt", "replayed")] == 10 * recorded
    assert tokens[("completion", "replayed")] == 3 * recorded
    assert stats.prompt_tokens_replayed == 10 * recorded
    assert stats.outputs == 12 and len((tmp_path / "out.jsonl").read_text().splitlines()) == 12
    assert _by(points["actionstate.outputs"])[()] == 12 + _by(first["actionstate.outputs"])[()]
    assert _by(points["actionstate.inputs"])[()] == stats.inputs + _by(first[
        "actionstate.inputs"])[()]
    actions = _by(points["actionstate.actions"], "outcome")
    # each input's action completed once; the ones the failed run completed were skipped
    assert actions[("run",)] == 12 and actions[("skipped",)] == recorded - 1
    # histograms: one put per recorded call, one flush per commit, each checkpoint
    puts = points["actionstate.store.put.duration"][0]
    assert puts.count >= 24 and 0 < puts.sum < 60
    checkpoints = points["actionstate.checkpoint.duration"][0]
    assert checkpoints.count >= 2
    assert points["actionstate.checkpoint.size"][0].sum > 0
    assert points["actionstate.store.flush.duration"][0].count >= 1
    summary = stats.summary(1.0)
    assert summary["latency"]["store_put_us"]["count"] == stats.histograms["store_put_us"].count
    assert summary["functions"] == stats.functions()


@pytest.fixture
def collector() -> Iterator[FakeOtlpCollector]:
    with FakeOtlpCollector() as made:
        yield made


def test_actionstate_run_exports_over_otlp_what_its_summary_says_after_a_kill(
        tmp_path: Path, collector: FakeOtlpCollector) -> None:
    """Inputs of one key, two model replies each, one at a time: killed when the
    server gets the 4th request (the second input's second call), the run has that
    input's first reply recorded and its action open, so the resume replays it."""
    inputs, summary = tmp_path / "inputs.jsonl", tmp_path / "summary.json"
    inputs.write_text("".join(json.dumps({"id": f"r{i}", "key": "k"}) + "\n"
                              for i in range(6)))
    cmd = [sys.executable, "-m", "actionstate", "run", REPLIES, "--input", str(inputs),
           "--key", "key", "--state", str(tmp_path / "state"), "--output",
           str(tmp_path / "out.jsonl"), "--quiet", "--concurrency", "1", "--summary",
           str(summary)]
    with FakeLLMServer(latency=0.01) as server:
        env = dict(os.environ, OTEL_METRICS_EXPORTER="otlp",
                   OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
                   OTEL_METRIC_EXPORT_INTERVAL="600000", OTEL_SERVICE_NAME="metrics-test",
                   ACTIONSTATE_MODEL_BASE_URL=server.base_url)
        killed = subprocess.Popen(cmd, env=env)
        server.on_call = lambda total: killed.kill() if total >= 4 else None
        assert killed.wait(timeout=120) == -signal.SIGKILL, "the run ended before its kill"
        server.on_call = None
        collector.requests.clear()  # a killed run exports nothing at exit
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                              check=False)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert collector.requests, "the run's exit exported its metrics"
    resource = collector.requests[-1].resource_metrics[0].resource
    assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == (
        "metrics-test")
    sums = collector.last_sums()
    found = json.loads(summary.read_text())
    calls = sums["actionstate.calls"]
    for outcome in ("executed", "replayed"):
        assert sum(n for attrs, n in calls.items()
                   if dict(attrs)["outcome"] == outcome) == found["calls"][outcome]
    assert found["calls"]["replayed"] >= 1, "the resumed run replayed r1's recorded reply"
    tokens = sums["actionstate.tokens"]
    assert tokens[(("outcome", "replayed"), ("type", "prompt"))] == (
        found["tokens"]["replayed"]["prompt"]) > 0
    assert sum(sums["actionstate.inputs"].values()) == found["inputs"]
    by_function = {dict(a)["function"] for a in calls}
    assert any(f.endswith("reply") for f in by_function), by_function


def test_an_unknown_exporter_is_a_clear_error(tmp_path: Path) -> None:
    make_tickets(tmp_path / "tickets.jsonl", 2, 1)
    env = dict(os.environ, OTEL_METRICS_EXPORTER="zipkin")
    done = subprocess.run([sys.executable, "-m", "actionstate", "run",
                           "examples/triage.py:Triage", "--input",
                           str(tmp_path / "tickets.jsonl"), "--key", "customer", "--state",
                           str(tmp_path / "state"), "--output", str(tmp_path / "out.jsonl")],
                          env=env, capture_output=True, text=True, timeout=60, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "OTEL_METRICS_EXPORTER='zipkin'" in done.stderr and "otlp, console or none" in (
        done.stderr)


_WITHOUT_OTEL = """
import json, sys

class NoOpenTelemetry:  # as if the extra actionstate[otel] were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

if sys.argv[1] == "blocked":
    sys.meta_path.insert(0, NoOpenTelemetry())
from actionstate.cli import main
code = main(sys.argv[2:])
print(json.dumps([m for m in sys.modules if m.split(".")[0] == "opentelemetry"]))
sys.exit(code)
"""


@pytest.mark.parametrize("exporter", ["otlp", "console", None])
def test_telemetry_is_a_no_op_without_the_otel_extra(tmp_path: Path,
                                                      exporter: str | None) -> None:
    """``actionstate run`` where importing ``opentelemetry`` fails: the run completes,
    its summary is written, and with ``OTEL_METRICS_EXPORTER`` set a warning says the
    metrics are not exported. The control, the same run with the extra importable,
    exports (console) and gives no such warning."""
    from actionstate.testing.cli import run_args, write_lines
    from tests.agents.counter import AGENT, input_line

    write_lines(tmp_path / "in.jsonl", [input_line(i) for i in range(5)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if exporter is not None:
        env["OTEL_METRICS_EXPORTER"] = exporter
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there

    def run(mode: str, name: str) -> subprocess.CompletedProcess[str]:
        args = run_args(tmp_path / name, AGENT, "--summary", str(tmp_path / name / "s.json"))
        (tmp_path / name).mkdir()
        (tmp_path / name / "in.jsonl").write_text((tmp_path / "in.jsonl").read_text())
        return subprocess.run([sys.executable, "-c", _WITHOUT_OTEL, mode, *args],
                              capture_output=True, text=True, env=env, timeout=120,
                              check=False)

    blocked = run("blocked", "without")
    assert blocked.returncode == 0, blocked.stderr
    assert json.loads(blocked.stdout.splitlines()[-1]) == [], "opentelemetry not imported"
    assert json.loads((tmp_path / "without" / "s.json").read_text())["outputs"] == 5
    assert len((tmp_path / "without" / "out.jsonl").read_text().splitlines()) == 5
    warning = (f"OTEL_METRICS_EXPORTER={exporter} is set but the OpenTelemetry SDK is not "
               "installed: this run's metrics are not exported (pip install "
               "'actionstate[otel]'")
    if exporter is None:
        assert "OTEL" not in blocked.stderr and "opentelemetry" not in blocked.stderr.lower()
    else:
        assert warning in blocked.stderr and "Traceback" not in blocked.stderr
    if exporter == "console":  # the control: with the extra, the same run exports
        control = run("installed", "with")
        assert control.returncode == 0, control.stderr
        assert "not exported" not in control.stderr
        assert '"name": "actionstate.inputs"' in control.stdout
        assert "opentelemetry.sdk.metrics" in json.loads(control.stdout.splitlines()[-1])
