"""Retries of durable calls: transient failures are tried again, only the final
outcome is recorded, and a call whose attempts ran out on an outage runs again
in the next run (a call that succeeded never does)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from actionstate import Agent, InputEvent, OutputEvent, RunnerContext, action
from actionstate.errors import ActionFailedError
from actionstate.llm import ModelServerError
from actionstate.records.digests import event_id
from actionstate.records.state import CallStatus, StateKey
from actionstate.retry import RetryPolicy, is_transient, retry_after
from actionstate.testing import FakeLLMServer
from actionstate.testing.crash import command, labels, make_tickets
from actionstate.testing.restart import Restartable

FAST = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)


class Flaky:
    """A service that fails the first ``failures`` calls of each argument with ``error``."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error = failures, error
        self.calls: Counter[str] = Counter()

    def __call__(self, what: str) -> str:
        self.calls[what] += 1
        if self.calls[what] <= self.failures:
            raise self.error
        return what.upper()


class Caller(Agent):
    def __init__(self, service: Flaky, retry: RetryPolicy | None = None) -> None:
        self.service, self.retry = service, retry

    @action(InputEvent)
    def work(self, event: InputEvent, ctx: RunnerContext) -> None:
        reply = ctx.durable_execute(self.service, event.input, retry=self.retry)
        ctx.send_event(OutputEvent(output=reply))


def test_transient_failures_are_retried_and_only_the_outcome_is_recorded(
        rs: Restartable) -> None:
    service = Flaky(2, ConnectionResetError("reset by peer"))
    assert rs.run(Caller(service, FAST), "k", 0, "a") == ["A"]
    assert service.calls["a"] == 3 and rs.settings.stats.calls_retried == 2
    state = rs.store.get(StateKey("k", 0, "work", event_id(InputEvent(input="a"))))
    assert state is not None and [c.status for c in state.calls.values()] == [
        CallStatus.SUCCEEDED], "one record: the final outcome"
    rs.restart()
    assert rs.run(Caller(service, FAST), "k", 0, "a") == ["A"]
    assert service.calls["a"] == 3, "a call that succeeded never runs again"


def test_a_permanent_failure_is_recorded_and_replayed_not_retried(rs: Restartable) -> None:
    service = Flaky(5, ValueError("bad request"))
    with pytest.raises(ActionFailedError, match="bad request"):
        rs.run(Caller(service, FAST), "k", 0, "a")
    assert service.calls["a"] == 1
    rs.restart()
    with pytest.raises(ActionFailedError, match="bad request"):
        rs.run(Caller(service, FAST), "k", 0, "a")
    assert service.calls["a"] == 1, "replayed from the record"


def test_a_call_whose_attempts_ran_out_on_an_outage_runs_again_next_run(
        rs: Restartable) -> None:
    service = Flaky(4, ModelServerError("http://m/v1", 429, "slow down", "0"))
    with pytest.raises(ActionFailedError, match="HTTP 429"):
        rs.run(Caller(service, FAST), "k", 0, "a")
    assert service.calls["a"] == 3
    rs.restart()  # the outage is over after one more failure
    assert rs.run(Caller(service, FAST), "k", 0, "a") == ["A"]
    assert service.calls["a"] == 5
    rs.restart()
    assert rs.run(Caller(service, FAST), "k", 0, "a") == ["A"]
    assert service.calls["a"] == 5


def test_what_is_transient_and_how_long_to_wait() -> None:
    assert is_transient(TimeoutError()) and is_transient(ConnectionRefusedError())
    assert is_transient(ModelServerError("u", 503, "")) and is_transient(
        ModelServerError("u", 429, "", "7"))
    assert not is_transient(ModelServerError("u", 400, ""))
    assert not is_transient(ModelServerError("u", 200, "", None, "not a chat completion"))
    assert not is_transient(KeyError("x"))
    assert retry_after(ModelServerError("u", 429, "", "7")) == 7.0
    policy = RetryPolicy(initial_interval=1.0, backoff=2.0, max_interval=5.0, jitter=0.0)
    assert [policy.delay(n, TimeoutError()) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert policy.delay(1, ModelServerError("u", 429, "", "60")) == 5.0, "capped"


def _bucket(prompt: str) -> int:
    """0-5, the same for a prompt in every run."""
    return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 6


def _run(tmp: Path, server: FakeLLMServer, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ACTIONSTATE_MODEL_BASE_URL=server.base_url,
               ACTIONSTATE_REFUND_LEDGER=str(tmp / "refunds.jsonl"))
    return subprocess.run([*command(tmp, None, "sync"), *extra], env=env, capture_output=True,
                          text=True, timeout=180, check=False)


@pytest.mark.slow
def test_the_example_agent_completes_by_itself_through_429s_and_500s(tmp_path: Path) -> None:
    make_tickets(tmp_path / "tickets.jsonl", 60, 6)
    with FakeLLMServer() as server:
        # every third ticket's first request is refused: alternately 429 (Retry-After 0) and 500
        server.fail = lambda prompt, n: (
            (429, 0.0) if n == 1 and _bucket(prompt) == 0
            else (500, None) if n == 1 and _bucket(prompt) == 3 else None)
        log = tmp_path / "events.jsonl"
        done = _run(tmp_path, server, "--retry-wait-interval", "0.01", "--event-log", str(log))
        failed = sum(1 for r in server.requests if r.status != 200)
        succeeded = server.succeeded
    assert done.returncode == 0, done.stderr
    assert failed > 0, "the fake server did refuse some requests"
    assert len(labels(tmp_path)) == 60 and set(succeeded.values()) == {1}
    retries = [json.loads(line) for line in log.read_text().splitlines()
               if '"call_retry"' in line]
    assert len(retries) == failed, "every retry is in the event log"


@pytest.mark.slow
def test_a_job_stopped_by_an_outage_resumes_when_the_server_heals(tmp_path: Path) -> None:
    make_tickets(tmp_path / "tickets.jsonl", 60, 6)
    with FakeLLMServer() as server:
        healthy = {"answers": 25}

        def outage(prompt: str, n: int) -> tuple[int, float | None] | None:
            if sum(server.succeeded.values()) >= healthy["answers"]:
                return (429, 0.0)
            return None

        server.fail = outage
        stopped = _run(tmp_path, server, "--max-retries", "2", "--retry-wait-interval", "0.01")
        assert stopped.returncode == 1, stopped.stderr
        assert "HTTP 429" in stopped.stderr and "Traceback" not in stopped.stderr
        before = Counter(server.succeeded)
        healthy["answers"] = 10**9  # the service heals
        resumed = _run(tmp_path, server, "--max-retries", "2", "--retry-wait-interval", "0.01")
        assert resumed.returncode == 0, resumed.stderr
        succeeded = server.succeeded
    assert sum(before.values()) >= 25
    assert set(succeeded.values()) == {1}, "no request that had succeeded was sent again"
    assert len(labels(tmp_path)) == 60
