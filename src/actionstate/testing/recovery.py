"""Start one ``actionstate run`` job again and again, SIGKILL it at chosen moments, and
compare what it did with an uninterrupted run.

The agent calls the model at ``ACTIONSTATE_MODEL_BASE_URL``, a
:class:`~actionstate.testing.fake_llm.FakeLLMServer` in the test's process,
with a prompt unique to each call (``"<input id> ... call <i>"``), so the
server's counts show every call that ran again. Each run of a job tags its
requests with a model name of its own (``ACTIONSTATE_MODEL=run-<n>``), which
tells exactly which run made a request, even one that reached the server after
its sender died.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actionstate.testing.fake_llm import FakeLLMServer, Request
from actionstate.testing.services import Tables, delete_topics, start_service

__all__ = ["STORES", "Item", "Job", "Kill", "Reference", "by_id", "input_of", "reference",
           "run_of", "store_url"]

STORES = ["sqlite", "kafka", "fluss"]
"""The durable stores a recovery test runs on (see :func:`store_url`)."""
CHECKPOINT = "checkpoint.db"
Item = dict[str, Any]


def store_url(kind: str, request: pytest.FixtureRequest) -> str | None:
    """A new, empty store of ``kind`` (one of :data:`STORES`, else ``kind`` is a URL)
    for one test; None is the default (SQLite in the state dir). Kafka and Fluss run
    on the local services (started if needed: one that cannot start fails the test);
    the topic or table is deleted after the test."""
    if kind == "sqlite":
        return None
    if kind == "kafka":
        servers = start_service("kafka")
        topic = f"actionstate-recovery-{uuid.uuid4().hex[:12]}"
        request.addfinalizer(lambda: delete_topics(servers, [topic]))
        return f"kafka://{servers}/{topic}?partitions=4"
    if kind == "fluss":
        tables = Tables(start_service("fluss"))
        request.addfinalizer(tables.drop)
        return tables.url("buckets=4")
    return kind


def run_of(request: Request) -> int:
    """Which run of its job made ``request``."""
    return int(request.model.removeprefix("run-"))


def input_of(prompt: str) -> str:
    """The id of the input a prompt belongs to."""
    return prompt.split(" ", 1)[0]


def by_id(outputs: list[Item]) -> list[Item]:
    """``outputs`` in the order of their ``id``."""
    return sorted(outputs, key=lambda output: str(output["id"]))


@dataclass
class Kill:
    """One SIGKILL: which run, when (``time.monotonic()``), and the outputs in the
    output file right after the process died; ``checkpointed``: whether the run had
    written a checkpoint of its own by then (False: killed before its first one; a
    fresh start writes one before its first input); when the run started, if known."""

    run: int
    sent: float
    done: float
    outputs: list[Item]
    checkpointed: bool = True
    started: float | None = None


class Job:
    """One ``actionstate run`` command (agent spec ``path.py:Class``, inputs, state
    dir, store; ``extra``: more options), started again and again, as a user restarts a
    run after a crash.

    Inputs are keyed by their ``key`` field; each run ``n`` tags its model requests
    with the model name ``run-<n>`` (see :func:`run_of`).
    """

    def __init__(self, tmp: Path, agent: str, server: FakeLLMServer, items: list[Item],
                 store: str | None = None, *, durability: str = "sync", concurrency: int = 4,
                 checkpoint_interval: float = 0.2, extra: Sequence[str] = ()) -> None:
        self.tmp, self.server = tmp, server
        inputs, self.output, state = tmp / "inputs.jsonl", tmp / "outputs.jsonl", tmp / "state"
        inputs.write_text("".join(json.dumps(item) + "\n" for item in items))
        self.checkpoint_path = state / CHECKPOINT
        self.command = [
            sys.executable, "-m", "actionstate", "run", agent,
            "--input", str(inputs), "--key", "key", "--state", str(state),
            "--output", str(self.output), "--quiet", "--durability", durability,
            "--concurrency", str(concurrency), "--checkpoint-interval", str(checkpoint_interval),
        ] + (["--store", store] if store else []) + list(extra)
        self.runs = 0
        self.kills: list[Kill] = []

    def start(self, env: dict[str, str] | None = None,
              preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
        """Start the next run (``preexec_fn``: run in the child before the command)."""
        run = self.runs
        self.runs += 1
        environment = {**os.environ, "ACTIONSTATE_MODEL_BASE_URL": self.server.base_url,
                       "ACTIONSTATE_MODEL": f"run-{run}", **(env or {})}
        with open(self._stderr_path(run), "wb") as stderr:
            return subprocess.Popen(self.command, env=environment, stdout=subprocess.DEVNULL,
                                    stderr=stderr, preexec_fn=preexec_fn)

    def stderr(self, run: int) -> str:
        return self._stderr_path(run).read_text(errors="replace")

    def _stderr_path(self, run: int) -> Path:
        return self.tmp / f"stderr-{run}.txt"

    def kill(self, proc: subprocess.Popen[bytes], seen: str | None = None) -> Kill:
        """SIGKILL the running run; read the output file as the dead process left it
        (and whether the checkpoint is still ``seen``, the one before the run started)."""
        sent = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kill = Kill(self.runs - 1, sent, time.monotonic(), self.outputs(),
                    checkpointed=self.checkpoint() != seen)
        assert proc.returncode == -signal.SIGKILL, (
            f"run {kill.run} ended by itself (exit {proc.returncode}) before it was killed:\n"
            f"{self.stderr(kill.run)}")
        self.kills.append(kill)
        return kill

    def finish(self, proc: subprocess.Popen[bytes] | None = None, *, exit_code: int = 0,
               timeout: float = 180.0, env: dict[str, str] | None = None) -> None:
        """Run to the end (``proc``, or a new run) and check how it ended."""
        proc = proc or self.start(env)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"run {self.runs - 1} did not end within {timeout} s:\n"
                        f"{self.stderr(self.runs - 1)}")
        stderr = self.stderr(self.runs - 1)
        assert proc.returncode == exit_code, (
            f"run {self.runs - 1} exited with {proc.returncode}, not {exit_code}:\n{stderr}")
        assert "Traceback" not in stderr, stderr

    def run_for(self, seconds: float, *, after_first_call: bool = False) -> bool:
        """Start a run and SIGKILL it ``seconds`` after it started (or after the model
        got the run's first call); False if it finished first."""
        seen = self.checkpoint()
        started = time.monotonic()
        proc = self.start()
        if after_first_call:
            tag = f"run-{self.runs - 1}"
            self.wait_for(proc, lambda: any(r.model == tag for r in self.server.requests),
                          f"a model call of {tag}")
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.kill(proc, seen).started = started
            return True
        self.finish(proc)
        return False

    def kill_during(self, prompt: str, *, after_checkpoint: bool = True) -> Kill:
        """Start a run, keep the model from answering ``prompt``, and SIGKILL the run
        once that call is in flight and (``after_checkpoint``) a checkpoint has been
        written since it started."""
        self.server.hold(prompt)
        sent_before = self.server.calls[prompt]
        proc = self.start()
        try:
            self.wait_for(proc, lambda: self.server.calls[prompt] > sent_before,
                          f"the call {prompt!r}")
            if after_checkpoint:
                seen = self.checkpoint()
                self.wait_for(proc, lambda: self.checkpoint() != seen,
                              f"a new {CHECKPOINT} while {prompt!r} is in flight")
            return self.kill(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self.server.release(prompt)

    def signal(self, proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        """Send ``sig`` to the run and wait until the process has taken it (no longer
        pending in ``/proc/<pid>/status``): a signal sent next is handled after it."""
        proc.send_signal(sig)
        status = Path(f"/proc/{proc.pid}/status")

        def taken() -> bool:
            for line in status.read_text().splitlines():
                if line.startswith(("ShdPnd:", "SigPnd:")) and int(line.split()[1], 16) >> (
                        sig - 1) & 1:
                    return False
            return True
        self.wait_for(proc, taken, f"{sig.name} taken by the process")

    def wait_for(self, proc: subprocess.Popen[bytes], condition: Callable[[], bool],
                 what: str, timeout: float = 60.0) -> None:
        """Poll ``condition`` until it holds; fail if the run ends or time runs out first."""
        deadline = time.monotonic() + timeout
        while not condition():
            if proc.poll() is not None:
                pytest.fail(f"run {self.runs - 1} ended (exit {proc.returncode}) before "
                            f"{what}:\n{self.stderr(self.runs - 1)}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout} s")
            time.sleep(0.005)  # poll interval of the condition above

    def outputs(self) -> list[Item]:
        """The complete lines of the output file, as it is now."""
        if not self.output.exists():
            return []
        data = self.output.read_bytes()
        return [json.loads(line) for line in data[:data.rfind(b"\n") + 1].splitlines()]

    def checkpoint(self) -> str | None:
        """The last checkpoint committed (its head row, which changes with every
        checkpoint), or None."""
        if not self.checkpoint_path.exists():
            return None
        db = sqlite3.connect(f"file:{self.checkpoint_path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT body FROM head").fetchone()
        except sqlite3.OperationalError:  # the run is creating the tables
            return None
        finally:
            db.close()
        return None if row is None else str(row[0])


@dataclass(frozen=True)
class Reference:
    """What an uninterrupted run produces: its outputs (by id) and its calls."""

    outputs: list[Item]
    prompts: frozenset[str]


_REFERENCES: dict[str, Reference] = {}


def reference(factory: pytest.TempPathFactory, agent: str, items: list[Item]) -> Reference:
    """The uninterrupted run of ``agent`` over ``items`` (default store, instant model),
    run once per process for each (agent, items)."""
    key = json.dumps([agent, items])
    if key not in _REFERENCES:
        with FakeLLMServer() as server:
            job = Job(factory.mktemp("reference"), agent, server, items)
            job.finish()
            calls = dict(server.calls)
        assert calls and max(calls.values()) == 1, f"every call has a prompt of its own: {calls}"
        _REFERENCES[key] = Reference(by_id(job.outputs()), frozenset(calls))
    return _REFERENCES[key]
