"""A fake OpenTelemetry collector for tests: it receives OTLP/HTTP metric exports on
127.0.0.1 and decodes them (``opentelemetry-proto``, in the ``otel`` extra)."""

from __future__ import annotations

import gzip
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOtlpCollector"]


class FakeOtlpCollector:
    """An OTLP/HTTP receiver on 127.0.0.1 that decodes each metrics export it gets."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )

        self.requests: list[Any] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportMetricsServiceRequest()
                request.ParseFromString(body)
                received.append(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOtlpCollector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def last_sums(self, instance: str | None = None
                  ) -> dict[str, Counter[tuple[tuple[str, str], ...]]]:
        """Per counter, the last value exported for each attribute set (of the resource
        whose ``service.instance.id`` is ``instance``, if given)."""
        found: dict[str, Counter[tuple[tuple[str, str], ...]]] = {}
        for request in self.requests:
            for resource in request.resource_metrics:
                if instance is not None and instance != self.instance_of(resource):
                    continue
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        if metric.WhichOneof("data") != "sum":
                            continue
                        values = found.setdefault(metric.name, Counter())
                        for point in metric.sum.data_points:
                            attrs = tuple(sorted((a.key, a.value.string_value)
                                                 for a in point.attributes))
                            values[attrs] = point.as_int
        return found

    @staticmethod
    def instance_of(resource_metrics: Any) -> str | None:
        """The ``service.instance.id`` of an export's resource."""
        for attribute in resource_metrics.resource.attributes:
            if attribute.key == "service.instance.id":
                return str(attribute.value.string_value)
        return None

    def instances(self) -> set[str | None]:
        return {self.instance_of(r) for q in self.requests for r in q.resource_metrics}
