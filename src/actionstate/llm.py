"""Chat model clients with no dependencies: an OpenAI-compatible HTTP client
and an offline stand-in.

Call them through ``ctx.durable_execute(model.chat, messages)`` so that each
paid request runs once. Both take the call's idempotency key, which the HTTP
client sends as the ``Idempotency-Key`` header.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from abc import ABC, abstractmethod

from actionstate.errors import ConfigError

__all__ = ["ChatModel", "ModelServerError", "OfflineModel", "OpenAICompatibleModel",
           "model_from_env"]

Messages = list[dict[str, str]]


class ModelServerError(RuntimeError):
    """A model server's answer that is not a reply: an HTTP error (``status``; 429 and
    5xx are transient, and ``retry_after`` carries the server's ``Retry-After``), or
    a 200 whose body is not a chat completion with text (not transient).

    Its args are JSON-able, so a recorded one replays as this type."""

    def __init__(self, url: str, status: int, body: str, retry_after: str | None = None,
                 problem: str | None = None) -> None:
        super().__init__(url, status, body, retry_after, problem)
        self.url, self.status, self.body, self.problem = url, status, body, problem
        try:
            self.retry_after = float(retry_after) if retry_after is not None else None
        except ValueError:
            self.retry_after = None  # an HTTP date: the backoff decides

    def __str__(self) -> str:
        what = self.problem or f"HTTP {self.status}"
        return f"model server {self.url} answered {what}: {self.body!r}"


class ChatModel(ABC):
    """A chat model: messages in, reply text out."""

    @abstractmethod
    def chat(self, messages: Messages, idempotency_key: str | None = None) -> str:
        """The reply to ``messages``; ``idempotency_key`` lets a server deduplicate."""


class OpenAICompatibleModel(ChatModel):
    """``POST {base_url}/chat/completions`` of any OpenAI-compatible server (stdlib urllib)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.timeout = timeout

    def chat(self, messages: Messages, idempotency_key: str | None = None) -> str:
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
                                   exc.headers.get("Retry-After")) from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ModelServerError(self.base_url, 200, _text(raw), None,
                                   "a reply that is not a chat completion") from None
        if not isinstance(content, str):
            raise ModelServerError(self.base_url, 200, _text(raw), None,
                                   "a chat completion with no text content")
        return content


class OfflineModel(ChatModel):
    """A deterministic rule-based stand-in for a model, for runs with no network.

    It answers ``label: <word>`` from keywords in the last user message.
    """

    RULES = (("refund", "refund"), ("charged twice", "refund"), ("broken", "bug"),
             ("error", "bug"), ("crash", "bug"), ("password", "account"),
             ("login", "account"))

    def chat(self, messages: Messages, idempotency_key: str | None = None) -> str:
        text = messages[-1]["content"].lower()
        label = next((lab for word, lab in self.RULES if word in text), "question")
        confidence = int(hashlib.sha256(text.encode()).hexdigest()[:2], 16) % 50 + 50
        return f"label: {label}\nconfidence: {confidence}"


def model_from_env() -> ChatModel:
    """``OpenAICompatibleModel`` when ``ACTIONSTATE_MODEL_BASE_URL`` is set, else offline.

    Variables: ``ACTIONSTATE_MODEL_BASE_URL`` (e.g. http://127.0.0.1:8000/v1),
    ``ACTIONSTATE_MODEL`` (model name), ``OPENAI_API_KEY`` (optional).
    """
    base_url = os.environ.get("ACTIONSTATE_MODEL_BASE_URL")
    if not base_url:
        return OfflineModel()
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"ACTIONSTATE_MODEL_BASE_URL={base_url!r} must start with http(s)://")
    return OpenAICompatibleModel(base_url, os.environ.get("ACTIONSTATE_MODEL", "gpt-4o-mini"),
                                 os.environ.get("OPENAI_API_KEY"))


def _text(body: bytes) -> str:
    """The start of a response body, for an error message."""
    return body[:200].decode("utf-8", "replace")
