"""`actionstate run` on the Fluss store: SIGKILLed at random points, and across a
TabletServer restart. Checked as tests/test_crash.py checks the SQLite store.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actionstate.testing import FakeLLMServer
from actionstate.testing.crash import command, crash_check, labels, ledger, make_tickets, run_to_end
from actionstate.testing.services import SERVICES, Tables, service_lock, start_service


@pytest.fixture
def tables() -> Iterator[Tables]:
    with Tables(start_service("fluss"), database="flink_agents") as made:
        yield made


@pytest.mark.slow
def test_sigkill_at_random_points_fluss_sync(tmp_path: Path, tables: Tables) -> None:
    crash_check(tmp_path, tables.url(""), 11)


@pytest.mark.slow
def test_tablet_server_restart_mid_run(tmp_path: Path, tables: Tables) -> None:
    n, customers = 300, 12
    reference, run = tmp_path / "reference", tmp_path / "run"
    for d in (reference, run):
        d.mkdir()
        make_tickets(d / "tickets.jsonl", n, customers)
    with FakeLLMServer() as server:
        assert run_to_end(reference, server, None, "sync", [], []) == 0
    with FakeLLMServer() as server:
        # A model that takes a moment; from the 40th call on, it answers only once the
        # TabletServer is back (the run's actions are concurrent: without this gate it
        # could finish during the restart).
        gate = threading.Event()
        def slow_then_gated(total: int) -> None:
            if total > 40:
                gate.wait(120)
            else:
                time.sleep(0.05)

        server.on_call = slow_then_gated
        env = dict(os.environ, ACTIONSTATE_MODEL_BASE_URL=server.base_url,
                   ACTIONSTATE_REFUND_LEDGER=str(run / "refunds.jsonl"))
        with open(run / "stderr.txt", "w+b") as errors:
            proc = subprocess.Popen(command(run, tables.url(""), "sync"), env=env,
                                    stderr=errors)
            try:
                outputs = run / "labels.jsonl"
                deadline = time.monotonic() + 60
                while not (outputs.exists() and len(outputs.read_bytes().splitlines()) >= 20):
                    assert proc.poll() is None, "the run ended before the restart"
                    assert time.monotonic() < deadline, "no outputs within 60 s"
                    time.sleep(0.05)
                with service_lock("fluss", exclusive=True):  # no Flink test on it now
                    restart = subprocess.run([str(SERVICES / "fluss"), "restart-tablet"],
                                             capture_output=True, text=True, timeout=180)
                assert restart.returncode == 0, restart.stderr
                assert proc.poll() is None, "the run finished before the TabletServer was back"
                gate.set()
                proc.wait(timeout=120)
            finally:
                gate.set()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            errors.seek(0)
            stderr = errors.read().decode()
    assert proc.returncode == 0, stderr
    assert labels(run) == labels(reference), "outputs identical to an uninterrupted run"
    assert len(labels(run)) == n, "exactly one output per input"
    assert ledger(run) == ledger(reference), "no refund issued twice"
