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
from typing import Any

from actionstate.errors import ConfigError

__all__ = ["ChatModel", "OfflineModel", "OpenAICompatibleModel", "model_from_env"]

Messages = list[dict[str, str]]


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
                reply: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"model server {self.base_url} answered {exc.code}: "
                               f"{exc.read()[:200]!r}") from None
        return str(reply["choices"][0]["message"]["content"])


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
