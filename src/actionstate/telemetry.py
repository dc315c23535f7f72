"""A run's metrics through OpenTelemetry (extra ``actionstate[otel]``).

Counters come from the run's :class:`~actionstate.durable.stats.RunStats`, read
when the SDK collects (observable counters: nothing on the hot path):

* ``actionstate.inputs``, ``actionstate.outputs``, ``actionstate.dead_letters``;
* ``actionstate.actions`` by ``outcome`` (``run``, ``skipped``: completed before a
  crash, its events replayed);
* ``actionstate.calls`` by ``function`` and ``outcome`` (``executed``: paid;
  ``replayed``: served from the store, not paid again; ``reconciled``;
  ``retried``);
* ``actionstate.tokens`` by ``type`` (``prompt``, ``completion``) and ``outcome``
  (``executed``, ``replayed``: saved).

Histograms are recorded as the values come: ``actionstate.store.put.duration``
(recording one call, s), ``actionstate.store.flush.duration`` (a commit, s),
``actionstate.checkpoint.duration`` (s) and ``actionstate.checkpoint.size``
(bytes written).

A library uses the OpenTelemetry API only: without an SDK configured, or without
the API installed, it is a no-op. ``actionstate run`` configures the SDK from the
standard environment variables (:func:`configure_from_env`):
``OTEL_METRICS_EXPORTER`` (``otlp``, ``console`` or ``none``; set without the
extra, a warning and no export), ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_SERVICE_NAME``...
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from actionstate.durable.stats import RunStats
from actionstate.errors import ConfigError

__all__ = ["attach", "configure_from_env"]

Reading = tuple[str, tuple[tuple[str, str], ...]]
"""(instrument name, attributes as sorted pairs)."""

_COUNTERS = {
    "actionstate.inputs": ("{input}", "Inputs taken in"),
    "actionstate.outputs": ("{output}", "Outputs written"),
    "actionstate.dead_letters": ("{record}", "Input records sent to the dead-letter sink"),
    "actionstate.actions": ("{action}", "Action runs, by outcome (run, skipped)"),
    "actionstate.calls": ("{call}", "Durable calls, by function and outcome (executed, "
                          "replayed, reconciled, retried)"),
    "actionstate.tokens": ("{token}", "Model tokens, by type and outcome (executed: paid; "
                           "replayed: saved)"),
}
_HISTOGRAMS = {  # RunStats histogram -> (instrument, unit, scale, description)
    "store_put_us": ("actionstate.store.put.duration", "s", 1e-6,
                     "Time to record a durable call in the store"),
    "store_flush_us": ("actionstate.store.flush.duration", "s", 1e-6,
                       "Time of a store commit (flush)"),
    "checkpoint_us": ("actionstate.checkpoint.duration", "s", 1e-6, "Time of a checkpoint"),
    "checkpoint_bytes": ("actionstate.checkpoint.size", "By", 1,
                         "Bytes a checkpoint wrote"),
}

log = logging.getLogger("actionstate")
_lock = threading.Lock()


def _readings(stats: RunStats) -> Counter[Reading]:
    out: Counter[Reading] = Counter({
        ("actionstate.inputs", ()): stats.inputs,
        ("actionstate.outputs", ()): stats.outputs,
        ("actionstate.dead_letters", ()): stats.dead_letters,
        ("actionstate.actions", (("outcome", "run"),)): stats.actions_run,
        ("actionstate.actions", (("outcome", "skipped"),)): stats.actions_skipped,
    })
    for (kind, outcome), n in (
            (("prompt", "executed"), stats.prompt_tokens_executed),
            (("completion", "executed"), stats.completion_tokens_executed),
            (("prompt", "replayed"), stats.prompt_tokens_replayed),
            (("completion", "replayed"), stats.completion_tokens_replayed)):
        out[("actionstate.tokens", (("outcome", outcome), ("type", kind)))] = n
    for (function_id, outcome), n in stats.by_function.copy().items():
        out[("actionstate.calls", (("function", function_id), ("outcome", outcome)))] = n
    return out


class _Export:
    """The instruments on one meter provider, and the runs they report."""

    def __init__(self, provider: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            own: str | None = version("actionstate")
        except PackageNotFoundError:
            own = None
        self.live: list[RunStats] = []
        self.finished: Counter[Reading] = Counter()
        """The final counts of runs that ended: counters stay monotonic across runs."""
        meter = provider.get_meter("actionstate", own)
        for name, (unit, description) in _COUNTERS.items():
            meter.create_observable_counter(
                name, callbacks=[lambda options, name=name: self.observe(name)], unit=unit,
                description=description)
        self.histograms = {
            key: (meter.create_histogram(name, unit=unit, description=description), scale)
            for key, (name, unit, scale, description) in _HISTOGRAMS.items()}

    def observe(self, name: str) -> list[Any]:
        from opentelemetry.metrics import Observation

        with _lock:
            total = Counter({r: n for r, n in self.finished.items() if r[0] == name})
            for stats in self.live:
                total.update({r: n for r, n in _readings(stats).items() if r[0] == name})
        return [Observation(n, dict(attrs)) for (_, attrs), n in sorted(total.items())]


_exports: dict[int, tuple[Any, _Export]] = {}
"""id(meter provider) -> (the provider, kept alive so its id stays its own; its export)."""


def attach(stats: RunStats, meter_provider: Any = None) -> Callable[[], None]:
    """Export ``stats`` through ``meter_provider`` (default: the global one) while the run
    lasts; returns the function that ends it (the run's final counts stay counted). A
    no-op when the OpenTelemetry API is not installed."""
    try:
        from opentelemetry import metrics
    except ImportError:
        return lambda: None
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    with _lock:
        found = _exports.get(id(provider))
        if found is None:
            found = _exports[id(provider)] = (provider, _Export(provider))
        export = found[1]
        export.live.append(stats)
    histograms = export.histograms

    def observe(name: str, value: int) -> None:
        instrument, scale = histograms[name]
        instrument.record(value * scale)

    stats.on_observe = observe

    def detach() -> None:
        with _lock:
            if stats in export.live:
                export.live.remove(stats)
                export.finished.update(_readings(stats))
        stats.on_observe = None

    return detach


def configure_from_env(environ: Mapping[str, str],
                       instance: str | None = None) -> Any:
    """A meter provider as the standard ``OTEL_*`` variables describe it, or None when
    ``OTEL_METRICS_EXPORTER`` is unset or ``none``, or when the extra
    ``actionstate[otel]`` is not installed (a warning then says the metrics are not
    exported). Call ``shutdown()`` on it at exit: that exports the last values.
    ``instance`` sets ``service.instance.id`` (a Flink worker's: each reports its own
    counters)."""
    exporter_name = environ.get("OTEL_METRICS_EXPORTER", "none").strip().lower()
    if exporter_name in ("", "none"):
        return None
    if exporter_name not in ("console", "otlp"):
        raise ConfigError(f"OTEL_METRICS_EXPORTER={exporter_name!r} is not one actionstate "
                          "configures: use otlp, console or none")
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import (
            ConsoleMetricExporter,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
    except ImportError:
        return _without("the OpenTelemetry SDK", exporter_name)
    exporter: Any
    if exporter_name == "console":
        exporter = ConsoleMetricExporter()
    else:
        protocol = environ.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
                               environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
        if protocol != "http/protobuf":
            raise ConfigError(f"OTLP protocol {protocol!r}: actionstate exports OTLP over "
                              "http/protobuf; set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf "
                              "and an endpoint that takes it (port 4318 by default)")
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
        except ImportError:
            return _without("the OTLP exporter", exporter_name)
        exporter = OTLPMetricExporter()
    attributes: dict[str, str] = {}
    if not environ.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = "actionstate"
    if instance is not None:
        attributes[SERVICE_INSTANCE_ID] = instance
    resource = Resource.create(attributes)
    return MeterProvider(metric_readers=[PeriodicExportingMetricReader(exporter)],
                         resource=resource)


def _without(missing: str, exporter_name: str) -> None:
    """No meter provider: the run goes on, its metrics not exported (a warning says so)."""
    log.warning("OTEL_METRICS_EXPORTER=%s is set but %s is not installed: this run's "
                "metrics are not exported (pip install 'actionstate[otel]' to export them; "
                "--summary PATH writes them as JSON)", exporter_name, missing)
