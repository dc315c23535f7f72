"""Retries of durable calls: transient failures are tried again, only the final
outcome is recorded, and a call whose attempts ran out on an outage runs again
in the next run (a call that succeeded never does)."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import importlib
import json
import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from actionstate import Agent, InputEvent, OutputEvent, RunnerContext, action
from actionstate.errors import ActionFailedError, ConfigError
from actionstate.llm import ChatModel, ModelServerError, OpenAICompatibleModel, OpenAIModel
from actionstate.records.digests import event_id
from actionstate.records.state import CallStatus, StateKey
from actionstate.retry import (
    RetryPolicy,
    is_transient,
    parse_retry_after,
    retry_after,
    split_options,
    wait_asked,
)
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
    assert is_transient(ModelServerError("u", 408, "")), "request timeout"
    assert not is_transient(ModelServerError("u", 600, "")) and not is_transient(
        ModelServerError("u", 404, ""))


def test_jitter_comes_before_the_cap() -> None:
    random.seed(9)
    policy = RetryPolicy(initial_interval=1.0, backoff=2.0, max_interval=30.0, jitter=0.2)
    at_cap = [policy.delay(attempt, TimeoutError()) for attempt in range(6, 12)
              for _ in range(50)]
    assert max(at_cap) == 30.0, "never beyond the cap (with the cap first: up to 36 s)"
    assert min(at_cap) >= 24.0 and len(set(at_cap)) > 1, "still spread below it"
    early = [policy.delay(2, TimeoutError()) for _ in range(200)]
    assert 1.6 <= min(early) and max(early) <= 2.4 and len(set(early)) > 100
    assert policy.delay(10**6, TimeoutError()) == 30.0, "no overflow at a huge attempt"


# -- what is transient: the HTTP libraries' failures -------------------------------------

def _httpx() -> ModuleType:
    """httpx, or httpx2, its successor, which the openai SDK installs."""
    try:
        return importlib.import_module("httpx")
    except ImportError:
        return importlib.import_module("httpx2")


def test_httpx_timeouts_connection_errors_and_statuses_are_transient() -> None:
    httpx = _httpx()
    request = httpx.Request("POST", "http://m/v1/chat/completions")
    for name in ("ReadTimeout", "ConnectTimeout", "PoolTimeout", "TimeoutException",
                 "ConnectError", "ReadError", "NetworkError", "RemoteProtocolError"):
        assert is_transient(getattr(httpx, name)("x", request=request)), name
    assert not is_transient(httpx.LocalProtocolError("x")), "our own request was wrong"
    assert not is_transient(httpx.InvalidURL("x"))

    def status(code: int) -> BaseException:
        response = httpx.Response(code, request=request, headers={"Retry-After": "3"})
        return httpx.HTTPStatusError("x", request=request, response=response)  # type: ignore[no-any-return]

    assert [is_transient(status(c)) for c in (408, 429, 500, 503, 400, 404)] == [
        True, True, True, True, False, False]
    assert retry_after(status(429)) == 3.0, "the response's Retry-After"


def test_a_real_httpx_timeout_and_refused_connection_are_transient() -> None:
    httpx = _httpx()
    with FakeLLMServer(latency=2.0) as server:
        with pytest.raises(httpx.TimeoutException) as timed_out:
            httpx.post(f"{server.base_url}/chat/completions", timeout=0.2,
                       json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    with pytest.raises(httpx.ConnectError) as refused:
        httpx.get("http://127.0.0.1:1/v1")
    assert is_transient(timed_out.value) and is_transient(refused.value)


def test_requests_connection_errors_timeouts_and_statuses_are_transient() -> None:
    requests = importlib.import_module("requests")  # installed with the otel extra
    exceptions = requests.exceptions
    for name in ("ConnectionError", "Timeout", "ReadTimeout", "ConnectTimeout",
                 "ProxyError", "SSLError"):
        assert is_transient(getattr(exceptions, name)("x")), name
    assert not is_transient(exceptions.InvalidURL("x"))
    assert not is_transient(exceptions.HTTPError("no response"))
    for code, transient in ((408, True), (429, True), (502, True), (401, False)):
        response = requests.Response()
        response.status_code = code
        assert is_transient(exceptions.HTTPError("x", response=response)) is transient, code
    with pytest.raises(exceptions.ConnectionError) as refused:
        requests.get("http://127.0.0.1:1/v1", timeout=5)
    assert is_transient(refused.value)


def test_a_class_of_another_module_with_one_of_those_names_is_not_transient() -> None:
    fake = ModuleType("mylib")
    exec("class TimeoutException(Exception): pass\n"  # classes of the module mylib
         "class NetworkError(TimeoutException): pass\n", fake.__dict__)
    assert not is_transient(fake.NetworkError("x")) and not is_transient(
        fake.TimeoutException("x"))


# -- Retry-After: seconds, milliseconds, an HTTP-date -------------------------------------

def test_retry_after_in_seconds_milliseconds_and_as_an_http_date() -> None:
    assert parse_retry_after("0.5") == 0.5 and parse_retry_after(b"7") == 7.0
    assert parse_retry_after(2) == 2.0 and parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("nan") is None and parse_retry_after(True) is None
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 58.0 <= (parse_retry_after(in_a_minute) or 0) <= 60.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0, "a past date: now"
    assert wait_asked({"Retry-After-Ms": "1500", "Retry-After": "9"}) == 1.5, "ms first"
    assert wait_asked({"retry-after": "9"}) == 9.0 and wait_asked({}) is None
    dated = ModelServerError("u", 503, "", in_a_minute)
    assert dated.retry_after is not None and 58.0 <= dated.retry_after <= 60.0
    assert RetryPolicy(max_interval=30.0).delay(1, dated) == 30.0, "capped"


class _Asking(Exception):
    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__("busy")
        self.headers = headers
        self.status = 429


def test_the_wait_comes_from_the_error_headers_when_it_has_no_retry_after() -> None:
    assert retry_after(_Asking({"retry-after-ms": "250"})) == 0.25
    assert retry_after(_Asking({"Retry-After": "4"})) == 4.0
    assert retry_after(_Asking({})) is None


class Asker(Agent):
    """Asks the model once per input, through a durable call with ``retry``."""

    def __init__(self, model: ChatModel, retry: RetryPolicy) -> None:
        self.model, self.retry = model, retry

    @action(InputEvent)
    async def ask(self, event: InputEvent, ctx: RunnerContext) -> None:
        messages = [{"role": "user", "content": event.input}]
        call = (self.model.areply if isinstance(self.model, OpenAIModel)
                else self.model.reply)
        reply = await ctx.durable_execute_async(call, messages, retry=self.retry)
        ctx.send_event(OutputEvent(output=reply["text"]))


NO_BACKOFF = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)
"""Retries with no wait of their own: any wait between attempts is the server's ask."""


@pytest.mark.parametrize("client", [OpenAIModel, OpenAICompatibleModel])
@pytest.mark.parametrize(("asked", "at_least"), [
    (0.5, 0.5), ({"retry-after-ms": "500"}, 0.5), ("date", 1.5)])
def test_a_429_s_retry_after_is_waited_between_the_two_requests(
        rs: Restartable, client: type[ChatModel], asked: Any, at_least: float) -> None:
    def ask(prompt: str, n: int) -> tuple[int, Any] | None:
        if n > 1:
            return None
        if asked == "date":  # in whole seconds: 3 s from now is at least 2 s from now
            return (429, email.utils.formatdate(time.time() + 3, usegmt=True))
        return (429, asked)

    with FakeLLMServer() as server:
        server.fail = ask
        model = client(server.base_url, "m")  # type: ignore[call-arg]
        assert rs.run(Asker(model, NO_BACKOFF), "k", 0, "refund please")[0].startswith(
            "label: refund")
        first, second = server.requests
    assert (first.status, second.status) == (429, 200)
    assert first.answered is not None
    gap = second.received - first.answered
    assert at_least <= gap < at_least + 5, f"the client waited {gap:.3f} s"


# -- async actions ------------------------------------------------------------------------

class AsyncCaller(Agent):
    def __init__(self, service: Flaky) -> None:
        self.service = service

    @action(InputEvent)
    async def work(self, event: InputEvent, ctx: RunnerContext) -> None:
        async def call(what: str) -> str:
            await asyncio.sleep(0)
            return self.service(what)

        reply = await ctx.durable_execute_async(call, event.input, retry=FAST)
        ctx.send_event(OutputEvent(output=reply))


def test_an_async_action_retries_a_coroutine_and_records_only_the_outcome(
        rs: Restartable) -> None:
    service = Flaky(2, TimeoutError("no answer"))
    assert rs.run(AsyncCaller(service), "k", 0, "a") == ["A"]
    assert service.calls["a"] == 3 and rs.settings.stats.calls_retried == 2
    state = rs.store.get(StateKey("k", 0, "work", event_id(InputEvent(input="a"))))
    assert state is not None and [c.status for c in state.calls.values()] == [
        CallStatus.SUCCEEDED]
    rs.restart()
    assert rs.run(AsyncCaller(service), "k", 0, "a") == ["A"]
    assert service.calls["a"] == 3, "replayed"


def test_areply_in_an_async_action_gets_past_a_500(rs: Restartable) -> None:
    with FakeLLMServer() as server:
        server.fail = lambda prompt, n: (500, None) if n == 1 else None
        model = OpenAIModel(server.base_url, "m")
        assert rs.run(Asker(model, NO_BACKOFF), "k", 0, "it crashed")[0].startswith(
            "label: bug")
        assert [r.status for r in server.requests] == [500, 200]
        assert rs.settings.stats.calls_retried == 1
        rs.restart()
        assert rs.run(Asker(model, NO_BACKOFF), "k", 0, "it crashed")[0].startswith(
            "label: bug")
        assert len(server.requests) == 2, "the reply is replayed, not asked again"


# -- Flink Agents' option names ------------------------------------------------------------

def test_flink_agents_retry_options_set_the_run_policy() -> None:
    policy, rest = split_options(RetryPolicy(), {"max-retries": "2", "retry-wait-interval":
                                                 "500ms", "kafkaActionStateTopic": "t"})
    assert (policy.max_attempts, policy.initial_interval) == (3, 0.5)
    assert rest == {"kafkaActionStateTopic": "t"}, "the store gets the others"
    assert split_options(RetryPolicy(), {"retry-wait-interval": "2"})[0].initial_interval == 2
    assert split_options(RetryPolicy(), {"retry-wait-interval": "1min"})[0].initial_interval == 60
    for bad in ({"max-retries": "-1"}, {"max-retries": "two"},
                {"retry-wait-interval": "1 hour"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            split_options(RetryPolicy(), bad)


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


@pytest.mark.slow
def test_max_retries_given_as_an_option_is_the_run_policy_not_a_store_option(
        tmp_path: Path) -> None:
    make_tickets(tmp_path / "tickets.jsonl", 6, 2)
    with FakeLLMServer() as server:
        server.fail = lambda prompt, n: (500, None) if n <= 2 and "[T0]" in prompt else None
        none = _run(tmp_path, server, "--option", "max-retries=0")
        assert none.returncode == 1, none.stderr
        assert "HTTP 500" in none.stderr and "unknown" not in none.stderr
        assert [r.status for r in server.requests if "[T0]" in r.prompt] == [500], "one try"
        two = _run(tmp_path, server, "--option", "max-retries=2",
                   "--option", "retry-wait-interval=10ms")
        assert two.returncode == 0, two.stderr
        assert [r.status for r in server.requests if "[T0]" in r.prompt] == [500, 500, 200]
    assert len(labels(tmp_path)) == 6
