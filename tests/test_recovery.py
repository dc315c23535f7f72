"""Issue 7: recovery keeps every recorded call, at any moment, after several crashes.

Each test drives the real command (``python -m actionstate run``) as a
subprocess, kills it with SIGKILL and runs it again, on the default SQLite
store, on Kafka and on Fluss. The agents (tests/agents/recovery.py) call a
:class:`FakeLLMServer` in this process with a prompt unique to each call, so the
server's counts show every call that ran again. Each run of a job tags its
requests with a model name of its own (``ACTIONSTATE_MODEL=run-<n>``), which
tells exactly which run made a request, even one that reached the server after
its sender died. Expected results come from an uninterrupted run.

This module holds the harness and the scripted crashes; the random kills are in
tests/test_recovery_random.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actionstate.testing import FakeLLMServer
from actionstate.testing.fake_llm import Request
from tests.agents.recovery import FAIL_ON
from tests.stores.test_fluss import Tables, start_fluss
from tests.test_crash import ROOT

AGENTS = ROOT / "tests" / "agents" / "recovery.py"
STORES = ["sqlite", "kafka", "fluss"]
CHECKPOINT = "checkpoint.json"
Item = dict[str, Any]


def store_url(kind: str, request: pytest.FixtureRequest) -> str | None:
    """A new, empty store of ``kind`` for one test; None is the default (SQLite in
    the state dir). A service that cannot start fails the test."""
    if kind == "sqlite":
        return None
    if kind == "kafka":
        servers = request.getfixturevalue("kafka_servers")
        return f"kafka://{servers}/actionstate-recovery-{uuid.uuid4().hex[:12]}?partitions=4"
    if kind == "fluss":
        tables = Tables(start_fluss())
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
    return sorted(outputs, key=lambda output: str(output["id"]))


@dataclass
class Kill:
    """One SIGKILL: which run, when (``time.monotonic()``), and the outputs in the
    output file right after the process died."""

    run: int
    sent: float
    done: float
    outputs: list[Item]


class Job:
    """One ``actionstate run`` command (agent, inputs, state dir, store), started
    again and again, as a user restarts a run after a crash."""

    def __init__(self, tmp: Path, agent: str, server: FakeLLMServer, items: list[Item],
                 store: str | None = None, *, durability: str = "sync", concurrency: int = 4,
                 checkpoint_interval: float = 0.2) -> None:
        self.tmp, self.server = tmp, server
        inputs, self.output, state = tmp / "inputs.jsonl", tmp / "outputs.jsonl", tmp / "state"
        inputs.write_text("".join(json.dumps(item) + "\n" for item in items))
        self.checkpoint_path = state / CHECKPOINT
        self.command = [
            sys.executable, "-m", "actionstate", "run", f"{AGENTS}:{agent}",
            "--input", str(inputs), "--key", "key", "--state", str(state),
            "--output", str(self.output), "--quiet", "--durability", durability,
            "--concurrency", str(concurrency), "--checkpoint-interval", str(checkpoint_interval),
        ] + (["--store", store] if store else [])
        self.runs = 0
        self.kills: list[Kill] = []

    def start(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        run = self.runs
        self.runs += 1
        environment = {**os.environ, "ACTIONSTATE_MODEL_BASE_URL": self.server.base_url,
                       "ACTIONSTATE_MODEL": f"run-{run}", **(env or {})}
        with open(self._stderr_path(run), "wb") as stderr:
            return subprocess.Popen(self.command, env=environment, stdout=subprocess.DEVNULL,
                                    stderr=stderr)

    def stderr(self, run: int) -> str:
        return self._stderr_path(run).read_text(errors="replace")

    def _stderr_path(self, run: int) -> Path:
        return self.tmp / f"stderr-{run}.txt"

    def kill(self, proc: subprocess.Popen[bytes]) -> Kill:
        """SIGKILL the running run; read the output file as the dead process left it."""
        sent = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kill = Kill(self.runs - 1, sent, time.monotonic(), self.outputs())
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

    def run_for(self, seconds: float, *, after_checkpoint: bool = False) -> bool:
        """Start a run and SIGKILL it ``seconds`` after it started (or after it wrote
        its first checkpoint); False if it finished first."""
        seen = self.checkpoint()
        proc = self.start()
        if after_checkpoint:
            self.wait_for(proc, lambda: proc.poll() is not None or self.checkpoint() != seen,
                          f"a {CHECKPOINT} of run {self.runs - 1}")
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.kill(proc)
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

    def checkpoint(self) -> tuple[int, int, bytes] | None:
        """The last checkpoint written (it is replaced atomically), or None."""
        try:
            stat = self.checkpoint_path.stat()
            return stat.st_ino, stat.st_mtime_ns, self.checkpoint_path.read_bytes()
        except FileNotFoundError:
            return None


@dataclass(frozen=True)
class Reference:
    """What an uninterrupted run produces: its outputs (by id) and its calls."""

    outputs: list[Item]
    prompts: frozenset[str]


_REFERENCES: dict[str, Reference] = {}


def check_calls(calls: dict[str, int], expected: Reference, in_flight: list[str],
                hint: str = "") -> None:
    """Every call of the uninterrupted run ran once, but for each call in flight at a
    kill (``in_flight``, one entry per kill), which ran once more."""
    unexpected = sorted(set(calls) - expected.prompts)
    assert not unexpected, f"calls an uninterrupted run never makes: {unexpected}{hint}"
    allowed = Counter(expected.prompts) + Counter(in_flight)
    again = {prompt: n for prompt, n in sorted(calls.items()) if n > allowed[prompt]}
    assert not again, (f"recorded calls ran again: {again}; only {in_flight} were in "
                       "flight at a kill")
    assert calls == dict(allowed), f"calls made {calls}, not {dict(allowed)}"


def reference(factory: pytest.TempPathFactory, agent: str, items: list[Item]) -> Reference:
    """The uninterrupted run of ``agent`` over ``items`` (default store, instant model)."""
    key = json.dumps([agent, items])
    if key not in _REFERENCES:
        with FakeLLMServer() as server:
            job = Job(factory.mktemp("reference"), agent, server, items)
            job.finish()
            calls = dict(server.calls)
        assert calls and max(calls.values()) == 1, f"every call has a prompt of its own: {calls}"
        _REFERENCES[key] = Reference(by_id(job.outputs()), frozenset(calls))
    return _REFERENCES[key]


# -- two crashes with one input in flight --------------------------------------------

SOLO = [{"id": "solo", "key": "k", "calls": 4}]


def two_crashes(tmp: Path, server: FakeLLMServer, store: str | None) -> Job:
    """One input making 4 sequential calls: killed while call 2 is in flight (after a
    checkpoint), restarted, killed while call 3 is in flight (after a checkpoint of
    the second run), restarted again to the end."""
    job = Job(tmp, "Steps", server, SOLO, store)
    job.kill_during("solo call 2")
    job.kill_during("solo call 3")
    job.finish()
    return job


def check_two_crashes(job: Job, server: FakeLLMServer, expected: Reference) -> None:
    assert by_id(job.outputs()) == expected.outputs, "outputs identical to an uninterrupted run"
    check_calls(dict(server.calls), expected, ["solo call 2", "solo call 3"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORES)
def test_two_crashes_with_one_input_in_flight(tmp_path: Path, kind: str,
                                              request: pytest.FixtureRequest,
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    expected = reference(tmp_path_factory, "Steps", SOLO)
    with FakeLLMServer() as server:
        job = two_crashes(tmp_path, server, store_url(kind, request))
        check_two_crashes(job, server, expected)


@pytest.mark.slow
def test_control_memory_store_runs_recorded_calls_again(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """memory:// keeps nothing across processes: the same scenario and the same check
    must see call 1 run in every run (so the counting above can fail)."""
    expected = reference(tmp_path_factory, "Steps", SOLO)
    with FakeLLMServer() as server:
        job = two_crashes(tmp_path, server, "memory://")
        assert server.calls["solo call 1"] == 3, dict(server.calls)
        with pytest.raises(AssertionError, match="'solo call 1': 3"):
            check_two_crashes(job, server, expected)


# -- memory written by an action that has not finished -------------------------------

TALLIES = [{"id": "a1", "key": "a", "calls": 2}, {"id": "b1", "key": "b", "calls": 2},
           {"id": "a2", "key": "a", "calls": 2}, {"id": "b2", "key": "b", "calls": 2},
           {"id": "a3", "key": "a", "calls": 2}]
HALF_DONE = "a2 count 2 call 1"
"""a2's first call, made after a2 wrote count 2 to its key's memory."""


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORES)
def test_memory_of_an_unfinished_action_is_not_checkpointed(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    expected = reference(tmp_path_factory, "Tally", TALLIES)
    with FakeLLMServer() as server:
        job = Job(tmp_path, "Tally", server, TALLIES, store_url(kind, request))
        job.kill_during(HALF_DONE)
        job.finish()
        calls = dict(server.calls)
    check_calls(calls, expected, [HALF_DONE], hint=(
        "; the restarted action counted again on top of its own unfinished memory write, "
        "which the checkpoint had saved"))
    assert by_id(job.outputs()) == expected.outputs, "outputs identical to an uninterrupted run"


# -- before the first checkpoint -----------------------------------------------------

FAILING = [{"id": f"f{i}", "key": f"k{i % 3}", "calls": 2} for i in range(6)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORES)
def test_crash_before_the_first_checkpoint_keeps_recorded_calls(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Killed while f3's second call is in flight, long before the first checkpoint is
    due; one input at a time, so that call is the only one not recorded."""
    expected = reference(tmp_path_factory, "Steps", FAILING)
    with FakeLLMServer() as server:
        job = Job(tmp_path, "Steps", server, FAILING, store_url(kind, request),
                  concurrency=1, checkpoint_interval=60)
        job.kill_during("f3 call 2", after_checkpoint=False)
        job.finish()
        calls = dict(server.calls)
    check_calls(calls, expected, ["f3 call 2"])
    assert by_id(job.outputs()) == expected.outputs, "outputs identical to an uninterrupted run"


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORES)
def test_failed_action_fixed_and_rerun_keeps_recorded_calls(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """f3's action raises after its calls, long before the first checkpoint (exit 1);
    the user "fixes" it and runs the same command again."""
    expected = reference(tmp_path_factory, "Steps", FAILING)
    with FakeLLMServer() as server:
        job = Job(tmp_path, "Steps", server, FAILING, store_url(kind, request),
                  concurrency=1, checkpoint_interval=60)
        job.finish(exit_code=1, env={FAIL_ON: "f3"})
        assert f"{FAIL_ON}=f3 is set" in job.stderr(0)
        failed_run = server.requests
        job.finish()
        calls = dict(server.calls)
    # One input at a time, sync durability: every call that started before f3's last
    # answer (f3 raised right after it) was recorded. A call that another input
    # started in the slot f3 freed, before the run stopped, was abandoned unrecorded.
    failed_at = [r.answered for r in failed_run if r.prompt == "f3 call 2"]
    assert len(failed_at) == 1 and failed_at[0] is not None, "f3 fails after its calls"
    recorded = sorted(r.prompt for r in failed_run if r.received < failed_at[0])
    again = [prompt for prompt in recorded if calls[prompt] > 1]
    assert not again, (f"calls recorded before the failure ran again on the rerun: {again} "
                       f"(recorded: {recorded})")
    assert set(calls) == expected.prompts and max(calls.values()) <= 2, calls
    assert by_id(job.outputs()) == expected.outputs, "outputs identical to an uninterrupted run"
