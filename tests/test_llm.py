"""The model clients against a fake OpenAI-compatible server: replies with usage,
errors a retry policy knows, bad replies named, through the SDK and the stdlib client."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import pytest

from actionstate.llm import ChatModel, ModelServerError, OpenAICompatibleModel, OpenAIModel
from actionstate.retry import is_transient
from actionstate.testing import FakeLLMServer
from actionstate.testing.crash import command, make_tickets

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
        with pytest.raises(TimeoutError):
            client(server.base_url, "m", None, 0.3).reply(ASK)  # type: ignore[call-arg]
    with pytest.raises(ConnectionError, match="cannot be reached"):
        client("http://127.0.0.1:1/v1", "m", None, 2.0).reply(ASK)  # type: ignore[call-arg]


@pytest.mark.slow
def test_a_bad_reply_stops_the_run_with_its_message_and_a_fixed_server_resumes(
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
        server.bad_reply = None
        second = subprocess.run(command(tmp_path, None, "sync"), env=env, capture_output=True,
                                text=True, timeout=120, check=False)
        # a bad reply is the call's recorded outcome (not an outage): it replays
        assert second.returncode == 1 and "no choices" in second.stderr
