"""A fake OpenAI-compatible chat server on 127.0.0.1 that counts the calls it gets.

It is not a model: it answers like :class:`~actionstate.llm.OfflineModel` and
records each request, so tests can assert how many paid calls an agent made.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from actionstate.llm import OfflineModel

__all__ = ["FakeLLMServer"]


class FakeLLMServer:
    """``with FakeLLMServer() as server:`` then point a client at ``server.base_url``.

    Attributes:
        calls: Counter of the last user message of every request received.
        idempotency_keys: Counter of the Idempotency-Key headers received.
        on_call: called with the running total after each request is counted and
            before it is answered (a test can kill the client there, mid-call).
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.idempotency_keys: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._model = OfflineModel()
        self.on_call: Callable[[int], None] | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body: dict[str, Any] = json.loads(self.rfile.read(
                    int(self.headers.get("Content-Length", "0"))))
                messages = body["messages"]
                with fake._lock:
                    fake.calls[messages[-1]["content"]] += 1
                    key = self.headers.get("Idempotency-Key")
                    if key:
                        fake.idempotency_keys[key] += 1
                    total = sum(fake.calls.values())
                if fake.on_call is not None:
                    fake.on_call(total)
                reply = json.dumps({"choices": [{"message": {
                    "role": "assistant", "content": fake._model.chat(messages)}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def total_calls(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
