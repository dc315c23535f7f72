"""Chat model clients: the official ``openai`` SDK (extra ``openai``), a stdlib
OpenAI-compatible HTTP client, and an offline stand-in.

Call them through ``ctx.durable_execute(model.reply, messages)`` (or ``chat`` for
the text alone) so that each paid request runs once; ``reply`` returns the text
and the token usage, so the record knows what a replay saved. All take the
call's idempotency key, which the HTTP clients send as the ``Idempotency-Key``
header. Failures are errors a retry policy knows: ``ModelServerError`` (with
``status``: 408, 429 and 5xx are transient; ``retry_after``), ``ConnectionError`` and
``TimeoutError``; a reply that is not a chat completion with text is a
``ModelServerError`` naming the server and what was wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from typing import Any

from actionstate.errors import ConfigError
from actionstate.retry import parse_retry_after, wait_asked

__all__ = ["ChatModel", "ModelServerError", "OfflineModel", "OpenAICompatibleModel",
           "OpenAIModel", "model_from_env"]

Messages = list[dict[str, str]]


class ModelServerError(RuntimeError):
    """A model server's answer that is not a reply: an HTTP error (``status``; 408, 429
    and 5xx are transient, and ``retry_after`` carries the seconds the server's
    ``retry-after-ms`` or ``Retry-After`` asked for), or a 200 whose body is not a chat
    completion with text (not transient).

    Its args are JSON-able, so a recorded one replays as this type."""

    def __init__(self, url: str, status: int, body: str,
                 retry_after: float | str | None = None, problem: str | None = None) -> None:
        super().__init__(url, status, body, retry_after, problem)
        self.url, self.status, self.body, self.problem = url, status, body, problem
        self.retry_after = parse_retry_after(retry_after)  # seconds or an HTTP-date

    def __str__(self) -> str:
        what = self.problem or f"HTTP {self.status}"
        return f"model server {self.url} answered {what}: {self.body!r}"


class ChatModel(ABC):
    """A chat model: messages in, reply text (and token usage) out."""

    @abstractmethod
    def reply(self, messages: Messages, idempotency_key: str | None = None) -> dict[str, Any]:
        """``{"text": str, "usage": {"prompt_tokens": int, "completion_tokens": int}}``
        for ``messages``; ``idempotency_key`` lets a server deduplicate."""

    def chat(self, messages: Messages, idempotency_key: str | None = None) -> str:
        """The reply text alone."""
        return str(self.reply(messages, idempotency_key)["text"])


class OpenAICompatibleModel(ChatModel):
    """``POST {base_url}/chat/completions`` of any OpenAI-compatible server (stdlib urllib)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.timeout = timeout

    def reply(self, messages: Messages, idempotency_key: str | None = None) -> dict[str, Any]:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=body,
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise ModelServerError(self.base_url, exc.code, _text(exc.read()),
                                   wait_asked(exc.headers)) from None
        except TimeoutError:  # connected, then no answer in time
            raise _timed_out(self.base_url, self.timeout) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):  # the connection itself timed out
                raise _timed_out(self.base_url, self.timeout) from None
            raise ConnectionError(f"model server {self.base_url} cannot be reached: "
                                  f"{exc.reason}") from None
        return _completion(self.base_url, raw)


def _timed_out(url: str, timeout: float) -> TimeoutError:
    return TimeoutError(f"model server {url} did not answer in {timeout:g} s "
                        "(ACTIONSTATE_MODEL_TIMEOUT sets the limit)")


def _completion(url: str, raw: bytes) -> dict[str, Any]:
    """Text and usage of a chat completion body, or a clear error naming what is wrong."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise ModelServerError(url, 200, _text(raw), None, "a reply that is not JSON") from None
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ModelServerError(url, 200, _text(raw), None,
                               "a reply that is not a chat completion (no choices)") from None
    if not isinstance(content, str):
        raise ModelServerError(url, 200, _text(raw), None,
                               "a chat completion with no text content")
    usage = data.get("usage") if isinstance(data, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    return {"text": content, "usage": {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
                                       "completion_tokens":
                                           int(usage.get("completion_tokens") or 0)}}


class OpenAIModel(ChatModel):
    """An OpenAI-compatible server through the official ``openai`` SDK (extra ``openai``).

    The SDK's own retries are off: the durable call's retry policy decides, and
    the SDK's errors become the ones it knows. ``areply`` is the async client,
    for ``await ctx.durable_execute_async(model.areply, messages)``.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 timeout: float = 60.0) -> None:
        try:
            import openai
        except ImportError:
            raise ConfigError("the openai SDK is not installed: pip install "
                              "'actionstate[openai]'") from None
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        kwargs: dict[str, Any] = {"base_url": self.base_url, "api_key": api_key or "unused",
                                  "timeout": timeout, "max_retries": 0}
        self._openai = openai
        self._client = openai.OpenAI(**kwargs)
        self._async = openai.AsyncOpenAI(**kwargs)

    def reply(self, messages: Messages, idempotency_key: str | None = None) -> dict[str, Any]:
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=self.model, messages=messages, temperature=0,  # type: ignore[arg-type]
                extra_headers=_key_header(idempotency_key))
        except self._openai.OpenAIError as exc:
            raise self._translate(exc) from None
        return _completion(self.base_url, raw.content)

    async def areply(self, messages: Messages,
                     idempotency_key: str | None = None) -> dict[str, Any]:
        """:meth:`reply` on the SDK's async client."""
        try:
            raw = await self._async.chat.completions.with_raw_response.create(
                model=self.model, messages=messages, temperature=0,  # type: ignore[arg-type]
                extra_headers=_key_header(idempotency_key))
        except self._openai.OpenAIError as exc:
            raise self._translate(exc) from None
        return _completion(self.base_url, raw.content)

    def _translate(self, exc: Exception) -> Exception:
        """The SDK's error as one a retry policy knows and a replay can rebuild."""
        openai = self._openai
        if isinstance(exc, openai.APITimeoutError):
            return _timed_out(self.base_url, self.timeout)
        if isinstance(exc, openai.APIConnectionError):
            return ConnectionError(f"model server {self.base_url} cannot be reached: {exc}")
        if isinstance(exc, openai.APIStatusError):
            return ModelServerError(self.base_url, exc.status_code, _text(exc.response.content),
                                    wait_asked(exc.response.headers))
        return ModelServerError(self.base_url, 200, str(exc)[:200], None,
                                f"a reply the SDK could not read ({type(exc).__name__})")


def _key_header(idempotency_key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": idempotency_key} if idempotency_key else {}


class OfflineModel(ChatModel):
    """A deterministic rule-based stand-in for a model, for runs with no network.

    It answers ``label: <word>`` from keywords in the last user message.
    """

    RULES = (("refund", "refund"), ("charged twice", "refund"), ("broken", "bug"),
             ("error", "bug"), ("crash", "bug"), ("password", "account"),
             ("login", "account"))

    def reply(self, messages: Messages, idempotency_key: str | None = None) -> dict[str, Any]:
        text = messages[-1]["content"].lower()
        label = next((lab for word, lab in self.RULES if word in text), "question")
        confidence = int(hashlib.sha256(text.encode()).hexdigest()[:2], 16) % 50 + 50
        return {"text": f"label: {label}\nconfidence: {confidence}",
                "usage": {"prompt_tokens": 0, "completion_tokens": 0}}  # nothing paid


def model_from_env() -> ChatModel:
    """A client of the server ``ACTIONSTATE_MODEL_BASE_URL`` names, else the offline model.

    The server is reached through the openai SDK when the ``openai`` extra is
    installed, else through the stdlib client. Variables:
    ``ACTIONSTATE_MODEL_BASE_URL`` (e.g. http://127.0.0.1:8000/v1),
    ``ACTIONSTATE_MODEL`` (model name), ``OPENAI_API_KEY`` (optional),
    ``ACTIONSTATE_MODEL_TIMEOUT`` (seconds per request, default 60).
    """
    base_url = os.environ.get("ACTIONSTATE_MODEL_BASE_URL")
    if not base_url:
        return OfflineModel()
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"ACTIONSTATE_MODEL_BASE_URL={base_url!r} must start with http(s)://")
    timeout_text = os.environ.get("ACTIONSTATE_MODEL_TIMEOUT", "60")
    try:
        timeout = float(timeout_text)
    except ValueError:
        raise ConfigError(f"ACTIONSTATE_MODEL_TIMEOUT={timeout_text!r} must be a number of "
                          "seconds") from None
    model = os.environ.get("ACTIONSTATE_MODEL", "gpt-4o-mini")
    api_key = os.environ.get("OPENAI_API_KEY")
    try:
        return OpenAIModel(base_url, model, api_key, timeout)
    except ConfigError:  # no openai extra: the stdlib client speaks the same protocol
        return OpenAICompatibleModel(base_url, model, api_key, timeout)


def _text(body: bytes) -> str:
    """The start of a response body, for an error message."""
    return body[:200].decode("utf-8", "replace")
