"""The local Flink cluster of ``scripts/services/flink`` as tests use it: the script,
and a running cluster's REST API and job submission (the tests under tests/flink, run
with the Flink venv's pytest)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actionstate.testing.services import CHECKOUT, SERVICES

__all__ = ["Flink", "script"]

SCRIPT = SERVICES / "flink"
JOBS = CHECKOUT / "tests" / "flink" / "jobs"
"""The PyFlink jobs :meth:`Flink.run_py` submits (the Flink tests' own)."""


def script(*args: str, timeout: float = 300) -> str:
    """Run ``scripts/services/flink ARGS`` with this venv's Python; its stdout."""
    python = os.environ.get("FLINK_PYTHON") or str(Path(sys.prefix) / "bin" / "python")
    env = {**os.environ, "FLINK_PYTHON": python}
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        pytest.fail(f"scripts/services/flink {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


@dataclass
class Flink:
    """A running cluster: submit PyFlink jobs to it and follow them over REST."""

    address: str
    conf_dir: str
    connector_jar: str

    def rest(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(f"http://{self.address}{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def rest_post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(f"http://{self.address}{path}", method="POST",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def run_py(self, job: str, *args: str, savepoint: str | None = None) -> str:
        """Submit ``tests/flink/jobs/JOB`` detached (``flink run -d -py``), from
        ``savepoint`` if given; its job id."""
        spec = importlib.util.find_spec("pyflink")
        assert spec is not None and spec.origin is not None, "pyflink is not installed"
        flink = Path(spec.origin).parent / "bin" / "flink"
        restore = ["-s", savepoint] if savepoint else []
        done = subprocess.run(
            [str(flink), "run", "-d", "-m", self.address, *restore, "-py", str(JOBS / job),
             *args],
            capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "FLINK_CONF_DIR": self.conf_dir})
        found = re.search(r"JobID ([0-9a-f]{32})", done.stdout)
        assert done.returncode == 0 and found, \
            f"flink run {job} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return found.group(1)

    def wait_job(self, job_id: str, states: Iterable[str], timeout: float = 120,
                 tasks_running: bool = False) -> str:
        """Poll until the job is in one of ``states`` (with ``tasks_running``: and
        every vertex RUNNING); its state. A failure state not asked for fails at once."""
        wanted = set(states)
        deadline = time.monotonic() + timeout
        while True:
            job = self.rest(f"/jobs/{job_id}")
            state = job["state"]
            if state in wanted and (not tasks_running or all(
                    v["status"] == "RUNNING" for v in job["vertices"])):
                return str(state)
            if state in {"FAILED", "CANCELED"} - wanted:
                exceptions = self.rest(f"/jobs/{job_id}/exceptions")
                pytest.fail(f"job {job_id} is {state}: "
                            f"{json.dumps(exceptions)[:3000]}")
            assert time.monotonic() < deadline, \
                f"job {job_id} is {state} after {timeout} s, not {sorted(wanted)}"
            time.sleep(0.2)

    def wait_failover(self, job_id: str, timeout: float = 60) -> None:
        """Poll until the job noticed a failure: it is not RUNNING, or a vertex is not."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.rest(f"/jobs/{job_id}")
            if job["state"] != "RUNNING" or any(v["status"] != "RUNNING"
                                                for v in job["vertices"]):
                return
            assert time.monotonic() < deadline, f"job {job_id} still RUNNING after {timeout} s"
            time.sleep(0.1)

    def cancel(self, job_id: str) -> None:
        if self.rest(f"/jobs/{job_id}")["state"] not in {"FINISHED", "FAILED", "CANCELED"}:
            self.rest(f"/jobs/{job_id}?mode=cancel", method="PATCH")
            self.wait_job(job_id, {"CANCELED", "FAILED", "FINISHED"})

    def checkpoints(self, job_id: str) -> Any:
        return self.rest(f"/jobs/{job_id}/checkpoints")
