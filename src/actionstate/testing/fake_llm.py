"""A fake OpenAI-compatible chat server on 127.0.0.1 that counts the calls it gets.

It is not a model: it answers like :class:`~actionstate.llm.OfflineModel` and
records each request, so tests can assert how many paid calls an agent made.
It can also behave like a slow model (``latency``, or ``slow`` for chosen
requests), fail on demand (``fail``, ``bad_reply``), and hold the answer to a
given prompt until the test releases it (:meth:`FakeLLMServer.hold`), so a
test can stop a client at a chosen call.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from actionstate.llm import OfflineModel

__all__ = ["FakeLLMServer", "Request"]

Latency = float | tuple[float, float] | Callable[[str], float]
Failure = tuple[int, float | str | Mapping[str, str] | None]
"""An error answer: (HTTP status, what it asks to wait): ``Retry-After`` seconds, a
``Retry-After`` text sent as it is (an HTTP-date), headers to send (``retry-after-ms``),
or None."""


@dataclass
class Request:
    """One request the server received.

    Attributes:
        prompt: the last user message.
        model: the request's ``model`` field (a test can tag each client with it).
        received: ``time.monotonic()`` when the request was counted.
        answered: ``time.monotonic()`` when the server started to send the reply;
            None while it is held or slowed down.
    """

    prompt: str
    model: str
    received: float
    answered: float | None = None
    status: int = 200


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # listen backlog: many clients connect at once (default 5)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client is gone (a test killed it mid-call): nothing to report
        super().handle_error(request, client_address)


class FakeLLMServer:
    """``with FakeLLMServer() as server:`` then point a client at ``server.base_url``.

    Args:
        latency: seconds each request takes before it is answered: a number,
            a ``(low, high)`` range drawn uniformly per request, or a function of
            the prompt.
        hold_timeout: the longest a held request waits for :meth:`release`.

    Attributes:
        calls: Counter of the last user message of every request received.
        idempotency_keys: Counter of the Idempotency-Key headers received.
        authorizations: Counter of the Authorization headers received (a test can check
            that the client's API key was in use).
        on_call: called with the running total after each request is counted and
            before it is answered (a test can kill the client there, mid-call).
        fail: called with (prompt, how many requests for it arrived so far) before a
            request is answered; a ``(status, retry_after)`` it returns is answered as
            that HTTP error (429 with a ``Retry-After`` header, 500, ...) instead.
        bad_reply: like ``fail``; bytes it returns are sent as a 200 reply's body
            (malformed JSON, no ``choices``, ``content: null`` ...).
        slow: like ``fail``; seconds it returns are waited before that request is
            answered, on top of ``latency`` (e.g. ``lambda prompt, n: 5 if n == 1
            else None``: each prompt's first request is slow, a retry is not).
        succeeded: Counter of the prompts answered 200 (bad replies included).
    """

    def __init__(self, latency: Latency = 0.0, hold_timeout: float = 120.0) -> None:
        self.calls: Counter[str] = Counter()
        self.idempotency_keys: Counter[str] = Counter()
        self.authorizations: Counter[str] = Counter()
        self._requests: list[Request] = []
        self._holds: dict[str, threading.Event] = {}
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._model = OfflineModel()
        self._latency = latency
        self._random = random.Random()
        self._hold_timeout = hold_timeout
        self.on_call: Callable[[int], None] | None = None
        self.fail: Callable[[str, int], Failure | None] | None = None
        self.bad_reply: Callable[[str, int], bytes | None] | None = None
        self.slow: Callable[[str, int], float | None] | None = None
        self.succeeded: Counter[str] = Counter()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body: dict[str, Any] = json.loads(self.rfile.read(
                    int(self.headers.get("Content-Length", "0"))))
                messages = body["messages"]
                prompt = messages[-1]["content"]
                request = Request(prompt, str(body.get("model", "")), time.monotonic())
                with fake._lock:
                    fake.calls[prompt] += 1
                    fake._requests.append(request)
                    key = self.headers.get("Idempotency-Key")
                    if key:
                        fake.idempotency_keys[key] += 1
                    fake.authorizations[self.headers.get("Authorization", "")] += 1
                    total = sum(fake.calls.values())
                    held = fake._holds.get(prompt)
                    nth = fake.calls[prompt]
                if fake.on_call is not None:
                    fake.on_call(total)
                if held is not None:
                    held.wait(fake._hold_timeout)
                extra = fake.slow(prompt, nth) if fake.slow else None
                fake._closing.wait(fake._delay(prompt) + (extra or 0.0))  # "thinking"
                failure = fake.fail(prompt, nth) if fake.fail else None
                request.answered = time.monotonic()
                if failure is not None:
                    request.status, retry_after = failure
                    error = json.dumps({"error": {"message": "fake failure"}}).encode()
                    self.send_response(request.status)
                    if isinstance(retry_after, Mapping):
                        for name, value in retry_after.items():
                            self.send_header(name, value)
                    elif isinstance(retry_after, str):
                        self.send_header("Retry-After", retry_after)
                    elif retry_after is not None:
                        self.send_header("Retry-After", f"{retry_after:g}")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                bad = fake.bad_reply(prompt, nth) if fake.bad_reply else None
                text = fake._model.chat(messages)
                reply = bad if bad is not None else json.dumps({
                    "id": f"fake-{len(fake._requests)}", "object": "chat.completion",
                    "created": 0, "model": request.model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": len(prompt.split()),
                              "completion_tokens": len(text.split()),
                              "total_tokens": len(prompt.split()) + len(text.split())},
                }).encode()
                with fake._lock:
                    fake.succeeded[prompt] += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def total_calls(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    @property
    def requests(self) -> list[Request]:
        """Every request received so far, in the order they were counted."""
        with self._lock:
            return list(self._requests)

    def hold(self, prompt: str) -> None:
        """Keep the requests for ``prompt`` that arrive from now on unanswered until
        :meth:`release` (they are counted when they arrive)."""
        with self._lock:
            self._holds.setdefault(prompt, threading.Event())

    def release(self, prompt: str | None = None) -> None:
        """Answer the held requests for ``prompt`` (every prompt if None), and later ones."""
        with self._lock:
            prompts = list(self._holds) if prompt is None else [prompt]
            events = [self._holds.pop(p) for p in prompts if p in self._holds]
        for event in events:
            event.set()

    def _delay(self, prompt: str) -> float:
        latency = self._latency
        if callable(latency):
            return latency(prompt)
        if isinstance(latency, tuple):
            low, high = latency
            with self._lock:
                return self._random.uniform(low, high)
        return latency

    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self.release()
        self._server.shutdown()
        self._server.server_close()
