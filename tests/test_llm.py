"""The model clients against a fake OpenAI-compatible server: replies with usage,
errors a retry policy knows, bad replies named, through the SDK and the stdlib client."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from actionstate.errors import ConfigError
from actionstate.llm import (
    ChatModel,
    ModelServerError,
    OfflineModel,
    OpenAICompatibleModel,
    OpenAIModel,
    model_from_env,
)
from actionstate.retry import is_transient
from actionstate.testing import FakeLLMServer
from actionstate.testing.crash import command, labels, make_tickets

CLIENTS = [OpenAIModel, OpenAICompatibleModel]
ASK = [{"role": "user", "content": "refund please, it arrived broken"}]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_reply_carries_text_and_token_usage(client: type[OpenAIModel]) -> None:
    with FakeLLMServer() as server:
        reply = client(server.base_url, "m").reply(ASK, "key-1")
        assert server.idempotency_keys == {"key-1": 1}
    assert reply["text"].startswith("label: refund")
    assert reply["usage"] == {"prompt_tokens": 5, "completion_tokens": 4}


def test_the_async_client_answers_the_same() -> None:
    with FakeLLMServer() as server:
        model = OpenAIModel(server.base_url, "m")
        assert asyncio.run(model.areply(ASK)) == model.reply(ASK)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(("status", "retry_after", "transient"),
                         [(429, 2.0, True), (500, None, True), (503, 1.0, True),
                          (400, None, False), (401, None, False)])
def test_http_errors_are_model_server_errors_the_retry_policy_knows(
        client: type[ChatModel], status: int, retry_after: float | None,
        transient: bool) -> None:
    with FakeLLMServer() as server:
        server.fail = lambda prompt, n: (status, retry_after)
        with pytest.raises(ModelServerError, match=f"answered HTTP {status}") as info:
            client(server.base_url, "m").reply(ASK)  # type: ignore[call-arg]
    assert info.value.status == status and info.value.retry_after == retry_after
    assert is_transient(info.value) is transient


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(("body", "problem"), [
    (b"{not json", "a reply that is not JSON"),
    (b'{"id": "x"}', "a reply that is not a chat completion (no choices)"),
    (b'{"choices": []}', "a reply that is not a chat completion (no choices)"),
    (b'{"choices": [{"message": {"content": null}}]}', "a chat completion with no text"),
])
def test_a_bad_reply_names_the_server_and_what_was_wrong(
        client: type[ChatModel], body: bytes, problem: str) -> None:
    with FakeLLMServer() as server:
        server.bad_reply = lambda prompt, n: body
        with pytest.raises(ModelServerError, match=re.escape(problem)) as info:
            client(server.base_url, "m").reply(ASK)  # type: ignore[call-arg]
        assert server.base_url in str(info.value)
    assert not is_transient(info.value), "a bad reply is not an outage"


@pytest.mark.parametrize("client", CLIENTS)
def test_a_slow_server_is_a_timeout_and_no_server_a_connection_error(
        client: type[ChatModel]) -> None:
    with FakeLLMServer(latency=2.0) as server:
        with pytest.raises(TimeoutError) as info:
            client(server.base_url, "m", None, 0.3).reply(ASK)  # type: ignore[call-arg]
        assert str(info.value) == (f"model server {server.base_url} did not answer in 0.3 s "
                                   "(ACTIONSTATE_MODEL_TIMEOUT sets the limit)")
    with pytest.raises(ConnectionError, match="cannot be reached"):
        client("http://127.0.0.1:1/v1", "m", None, 2.0).reply(ASK)  # type: ignore[call-arg]


@pytest.mark.slow
def test_a_bad_reply_stops_the_run_with_its_message_and_stays_its_recorded_outcome(
        tmp_path: Path) -> None:
    make_tickets(tmp_path / "tickets.jsonl", 20, 4)
    with FakeLLMServer() as server:
        env = dict(os.environ, ACTIONSTATE_MODEL_BASE_URL=server.base_url,
                   ACTIONSTATE_REFUND_LEDGER=str(tmp_path / "refunds.jsonl"))
        server.bad_reply = lambda prompt, n: b'{"choices": []}' if "[T7]" in prompt else None
        first = subprocess.run(command(tmp_path, None, "sync"), env=env, capture_output=True,
                               text=True, timeout=120, check=False)
        assert first.returncode == 1 and "Traceback" not in first.stderr
        assert "not a chat completion (no choices)" in first.stderr and server.base_url in (
            first.stderr)
        asked = sum(n for prompt, n in server.calls.items() if "[T7]" in prompt)
        server.bad_reply = None  # the server is fixed
        second = subprocess.run(command(tmp_path, None, "sync"), env=env, capture_output=True,
                                text=True, timeout=120, check=False)
        # a bad reply is the call's recorded outcome (not an outage): it replays, and the
        # fixed server is not asked again
        assert second.returncode == 1 and "no choices" in second.stderr
        assert sum(n for prompt, n in server.calls.items() if "[T7]" in prompt) == asked == 1


# -- model_from_env, and a timeout in a run ---------------------------------------------

BLOCK_OPENAI = """
import importlib.abc, sys
class NoOpenAI(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "openai":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoOpenAI())
"""
"""Python source that makes ``import openai`` fail, as when the extra is not installed."""


def test_model_from_env_picks_the_client_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACTIONSTATE_MODEL_BASE_URL", raising=False)
    assert isinstance(model_from_env(), OfflineModel)
    monkeypatch.setenv("ACTIONSTATE_MODEL_BASE_URL", "http://127.0.0.1:1/v1/")
    monkeypatch.setenv("ACTIONSTATE_MODEL", "small")
    monkeypatch.setenv("ACTIONSTATE_MODEL_TIMEOUT", "2.5")
    model = model_from_env()
    assert isinstance(model, OpenAIModel), "the openai extra is installed"
    assert (model.base_url, model.model, model.timeout) == ("http://127.0.0.1:1/v1", "small", 2.5)
    monkeypatch.setenv("ACTIONSTATE_MODEL_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="ACTIONSTATE_MODEL_TIMEOUT='soon' must be a number"):
        model_from_env()
    monkeypatch.setenv("ACTIONSTATE_MODEL_BASE_URL", "127.0.0.1:8000")
    with pytest.raises(ConfigError, match=r"must start with http\(s\)://"):
        model_from_env()


def test_model_from_env_falls_back_to_the_stdlib_client_without_openai() -> None:
    with FakeLLMServer() as server:
        env = dict(os.environ, ACTIONSTATE_MODEL_BASE_URL=server.base_url,
                   ACTIONSTATE_MODEL_TIMEOUT="7")
        code = BLOCK_OPENAI + """
import json
from actionstate.llm import model_from_env
model = model_from_env()
reply = model.reply([{"role": "user", "content": "my login fails"}])
print(json.dumps([type(model).__name__, model.timeout, reply["text"],
                  "openai" in sys.modules]))
"""
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert server.total_calls == 1
    name, timeout, text, imported = json.loads(done.stdout)
    assert (name, timeout, imported) == ("OpenAICompatibleModel", 7.0, False)
    assert text.startswith("label: account")


@pytest.mark.slow
@pytest.mark.parametrize("client", ["openai", "stdlib"])
def test_the_example_agent_gets_past_a_slow_first_reply_by_a_retry(
        tmp_path: Path, client: str) -> None:
    """The triage example with ACTIONSTATE_MODEL_TIMEOUT=0.5: the first request for
    every third ticket takes 3 s, times out, and is tried again (answered at once)."""
    make_tickets(tmp_path / "tickets.jsonl", 12, 4)
    cmd = command(tmp_path, None, "sync") + ["--retry-wait-interval", "0.01",
                                              "--event-log", str(tmp_path / "events.jsonl")]
    if client == "stdlib":  # the same command with the openai SDK not importable
        assert cmd[1:3] == ["-m", "actionstate"]
        cmd[1:3] = ["-c", BLOCK_OPENAI + "import runpy; runpy.run_module('actionstate', "
                    "run_name='__main__', alter_sys=True)"]
    with FakeLLMServer() as server:
        slow = [f"[T{i}]" for i in range(0, 12, 3)]
        server.slow = lambda prompt, n: 3.0 if n == 1 and any(s in prompt for s in slow) else None
        env = dict(os.environ, ACTIONSTATE_MODEL_BASE_URL=server.base_url,
                   ACTIONSTATE_MODEL_TIMEOUT="0.5",
                   ACTIONSTATE_REFUND_LEDGER=str(tmp_path / "refunds.jsonl"))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                              check=False)
        calls = dict(server.calls)
    assert done.returncode == 0, done.stderr
    assert len(labels(tmp_path)) == 12
    assert sorted(calls.values()) == [1] * 8 + [2] * 4, calls
    retries = [json.loads(line)["call"] for line in
               (tmp_path / "events.jsonl").read_text().splitlines() if '"call_retry"' in line]
    assert len(retries) == 4
    assert {r["error"] for r in retries} == {
        f"TimeoutError: model server {server.base_url} did not answer in 0.5 s "
        "(ACTIONSTATE_MODEL_TIMEOUT sets the limit)"}
