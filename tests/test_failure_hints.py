"""What the command says when an action fails, and that a rerun does what it says.

An action's own bug: fix it and rerun (the recorded calls are kept). A durable
call whose attempts ran out on a transient failure: rerun when the service is
back (the call is tried again). A durable call's recorded failure (not
retryable, or a result that cannot be stored): a rerun replays it, so say how to
get past it. The API raises the same :class:`ActionFailedError`, its ``hint``
saying the same. And a retry's log line never carries the exception's text.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actionstate import Agent, InputEvent, OutputEvent, RunnerContext, action
from actionstate.errors import RESUME_HINT, ActionFailedError
from actionstate.retry import RetryPolicy
from actionstate.testing import FakeLLMServer
from actionstate.testing.crash import TRIAGE, command, labels, make_tickets
from actionstate.testing.restart import Restartable
from tests.agents.failing import BUGGY, OPAQUE

FAST = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)
TRANSIENT = re.compile(
    r"call (\S+) failed transiently after 3 attempts \(\w+\): run the same command again "
    r"when the service is back; it tries the call again and replays every call that "
    r"succeeded")
RECORDED = re.compile(
    r"this failure is call (\S+)'s recorded outcome \(not retried\): running the same "
    r"command again replays it\. To get past it, change the call \(.*\), catch the error in "
    r"the action, or start over with a new --state")


def _run(tmp: Path, server: FakeLLMServer, agent: str | None = None, *extra: str,
         **env: str) -> subprocess.CompletedProcess[str]:
    """The triage command (or ``agent`` over the same tickets) against ``server``."""
    cmd = command(tmp, None, "sync")
    if agent is not None:
        cmd[cmd.index(f"{TRIAGE}:Triage")] = agent
    environ = dict(os.environ, ACTIONSTATE_MODEL_BASE_URL=server.base_url,
                   ACTIONSTATE_REFUND_LEDGER=str(tmp / "refunds.jsonl"), **env)
    return subprocess.run([*cmd, *extra], env=environ, capture_output=True, text=True,
                          timeout=180, check=False)


def _asked(server: FakeLLMServer, ticket: str) -> list[int]:
    """The statuses of the requests the server got for one ticket's prompt."""
    return [r.status for r in server.requests if f"[{ticket}]" in r.prompt]


def _failed(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


@pytest.mark.slow
def test_attempts_run_out_on_an_outage_says_rerun_when_the_service_is_back(
        tmp_path: Path) -> None:
    # one customer: one key, its inputs one after another, so no other call is in flight
    # when the run stops (such a call, answered but not recorded, would be sent again)
    make_tickets(tmp_path / "tickets.jsonl", 12, 1)
    with FakeLLMServer() as server:
        server.fail = lambda prompt, n: (429, 0.0) if "[T7]" in prompt else None
        stderr = _failed(_run(tmp_path, server, None, "--max-retries", "2",
                              "--retry-wait-interval", "0.01"))
        assert "HTTP 429" in stderr and TRANSIENT.search(stderr), stderr
        assert "fix the action" not in stderr and "recorded outcome" not in stderr
        assert _asked(server, "T7") == [429, 429, 429]
        server.fail = None  # the service is back: as said, the rerun tries the call again
        done = _run(tmp_path, server, None, "--max-retries", "2", "--retry-wait-interval",
                    "0.01")
        assert done.returncode == 0, done.stderr
        assert _asked(server, "T7") == [429, 429, 429, 200]
        succeeded = Counter(server.succeeded)
    assert set(succeeded.values()) == {1}, f"no call that succeeded ran again: {succeeded}"
    assert len(labels(tmp_path)) == 12


@pytest.mark.slow
@pytest.mark.parametrize(("agent", "ticket", "error", "function"), [
    # the model server's bad reply: not an outage, the call's recorded outcome
    (None, "T7", "a chat completion (no choices)", r"\S+\.reply"),
    # a result that cannot be stored, recorded as the call's failure
    (OPAQUE, "T3", "cannot store a value of type failing.Reply", r"failing\.ask"),
])
def test_a_recorded_failure_says_a_rerun_replays_it_and_a_rerun_does(
        tmp_path: Path, agent: str | None, ticket: str, error: str, function: str) -> None:
    make_tickets(tmp_path / "tickets.jsonl", 12, 4)
    with FakeLLMServer() as server:
        if agent is None:
            server.bad_reply = lambda prompt, n: (b'{"choices": []}' if f"[{ticket}]" in prompt
                                                  else None)
        stderr = _failed(_run(tmp_path, server, agent))
        found = RECORDED.search(stderr)
        assert error in stderr and found and re.fullmatch(function, found.group(1)), stderr
        assert "fix the action" not in stderr and "transiently" not in stderr
        server.bad_reply = None  # the server is fixed; the recorded outcome stays
        again = _failed(_run(tmp_path, server, agent))
        assert error in again and RECORDED.search(again), again
        assert _asked(server, ticket) == [200], "the replay sent no request"


@pytest.mark.slow
def test_a_bug_in_the_action_says_fix_it_and_rerun_and_a_rerun_resumes(tmp_path: Path) -> None:
    make_tickets(tmp_path / "tickets.jsonl", 8, 4)
    with FakeLLMServer() as server:
        stderr = _failed(_run(tmp_path, server, BUGGY))
        assert "ValueError: a bug in the action" in stderr and RESUME_HINT in stderr, stderr
        assert "recorded outcome" not in stderr and "transiently" not in stderr
        done = _run(tmp_path, server, BUGGY, BUGGY_FIXED="1")
        assert done.returncode == 0, done.stderr
        assert _asked(server, "T3") == [200], "the fixed action replayed the recorded call"
    assert len(labels(tmp_path)) == 8


# -- the API's error carries the same hint ------------------------------------------------

class Service:
    """Fails with ``error`` the first ``failures`` calls."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0
        self.__actionstate_name__ = "tests.service"

    def __call__(self, what: str) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return what.upper()


class Calls(Agent):
    """Calls the service; ``then`` decides what the action does with a failure."""

    def __init__(self, service: Service, then: str = "propagate") -> None:
        self.service, self.then = service, then

    @action(InputEvent)
    def work(self, event: InputEvent, ctx: RunnerContext) -> None:
        try:
            reply = ctx.durable_execute(self.service, event.input, retry=FAST)
        except Exception as exc:
            if self.then == "wrap":
                raise RuntimeError("the service failed") from exc
            if self.then == "own":
                raise KeyError("the action's own bug") from None
            raise
        ctx.send_event(OutputEvent(output=reply))


@pytest.fixture
def rs() -> Iterator[Restartable]:
    store = Restartable(f"memory://{uuid.uuid4().hex}")
    yield store
    store.close()


def _hint(rs: Restartable, agent: Agent) -> str:
    with pytest.raises(ActionFailedError) as caught:
        rs.run(agent, "k", 0, "a")
    return caught.value.hint


def test_the_hint_of_a_transient_failure_names_the_call_and_its_attempts(
        rs: Restartable) -> None:
    service = Service(3, ConnectionResetError("reset by peer"))
    assert _hint(rs, Calls(service)) == (
        "call tests.service failed transiently after 3 attempts (ConnectionResetError): run "
        "the same command again when the service is back; it tries the call again and "
        "replays every call that succeeded")
    rs.restart()
    assert rs.run(Calls(service), "k", 0, "a") == ["A"] and service.calls == 4


def test_the_hint_of_a_recorded_failure_is_the_same_when_replayed(rs: Restartable) -> None:
    service = Service(5, ValueError("bad request"))
    first = _hint(rs, Calls(service))
    assert RECORDED.fullmatch(first) and "call tests.service's" in first
    rs.restart()
    assert _hint(rs, Calls(service)) == first and service.calls == 1


@pytest.mark.parametrize("then", ["wrap", "own"])
def test_an_action_that_raises_its_own_error_gets_the_resume_hint(
        rs: Restartable, then: str) -> None:
    """Not the call's failure (wrapped, or another error after catching it): the
    action's code decided, so fixing the action is what gets past it."""
    assert _hint(rs, Calls(Service(5, ValueError("bad request")), then)) == RESUME_HINT


def test_a_retry_is_logged_without_the_exceptions_text(
        rs: Restartable, caplog: pytest.LogCaptureFixture) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    service = Service(2, ConnectionResetError(f"reset while sending {canary}"))
    with caplog.at_level(logging.INFO, logger="actionstate"):
        assert rs.run(Calls(service), "k", 0, "a") == ["A"]
    retries: list[Any] = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert retries == [
        "tests.service failed (ConnectionResetError), attempt 1 of 3; again in 0.00 s",
        "tests.service failed (ConnectionResetError), attempt 2 of 3; again in 0.00 s"]
    assert canary not in caplog.text
