"""Sources and sinks: where a runner reads inputs and writes outputs (see :mod:`.base`).

=================================================  ========================================
given as                                           source / sink
=================================================  ========================================
a path (``str`` or ``Path``)                       JSONL file (:mod:`.files`)
``kafka://host:9092/topic``                        Kafka topic (:mod:`.kafka`, extra ``kafka``)
an iterable or async iterable (source)             :class:`~.memory.IterableSource`
a function of ``(key, output)`` or a list (sink)   :class:`~.memory.CallbackSink`
a :class:`~.base.Source` / :class:`~.base.Sink`    itself
=================================================  ========================================
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterable, Callable, Iterable
from pathlib import Path
from typing import Any

from actionstate.connectors.base import InputRecord, Rejected, Sink, Source
from actionstate.connectors.files import JsonlSink, JsonlSource
from actionstate.connectors.memory import CallbackSink, IterableSource
from actionstate.errors import ConfigError

__all__ = ["CallbackSink", "InputRecord", "IterableSource", "JsonlSink", "JsonlSource",
           "Rejected", "Sink", "Source", "open_sink", "open_source"]

SourceSpec = str | Path | Source | Iterable[Any] | AsyncIterable[Any]
SinkSpec = str | Path | Sink | Callable[[str, Any], object] | list[Any]

def open_source(spec: SourceSpec, key: str | Callable[[Any], str] | None, *,
                until_end: bool = False, role: str = "--input") -> Source:
    """The source ``spec`` names (see the module doc); ``key`` is the record field
    holding the agent key (``@key``: a Kafka message's key), or a function of a record
    (an iterable's only). ``until_end``: a Kafka topic is read up to its end when the
    run starts, then the run ends."""
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, str | Path):
        if key is None or not isinstance(key, str):
            raise ConfigError(f"{role} {spec} needs a key field: the name of the record "
                              "field that holds the agent key (--key FIELD)")
        text = str(spec)
        if text.startswith("kafka://"):
            kafka_source: Source = _kafka().KafkaSource.from_url(text, key,
                                                                  until_end=until_end)
            return kafka_source
        _no_other_scheme(text, role)
        return JsonlSource(text, key)
    if isinstance(spec, Iterable | AsyncIterable):
        if key is None:
            raise ConfigError("an iterable source needs key=: the record field that holds "
                              "the agent key, or a function of a record returning it")
        return IterableSource(spec, key)
    raise ConfigError(f"source {spec!r} is not a path, a kafka:// URL, an iterable or a "
                      "Source: give one of those")

def open_sink(spec: SinkSpec, *, role: str = "--output", overwrite: bool = False) -> Sink:
    """The sink ``spec`` names (see the module doc); ``overwrite``: a file sink may cut
    a file that holds data on a first run."""
    if isinstance(spec, Sink):
        return spec
    if isinstance(spec, str | Path):
        text = str(spec)
        if text.startswith("kafka://"):
            kafka_sink: Sink = _kafka().KafkaSink.from_url(text)
            return kafka_sink
        _no_other_scheme(text, role)
        return JsonlSink(text, overwrite=overwrite, role=role)
    if isinstance(spec, list):
        collected = spec
        return CallbackSink(lambda _key, output: collected.append(output), name="list")
    if callable(spec):
        return CallbackSink(spec)
    raise ConfigError(f"sink {spec!r} is not a path, a kafka:// URL, a function of (key, "
                      "output), a list or a Sink: give one of those")

def _no_other_scheme(text: str, role: str) -> None:
    scheme, sep, _ = text.partition("://")
    if sep and scheme.isalnum():
        raise ConfigError(f"{role} {text}: unknown scheme {scheme!r}; give a JSONL file path "
                          "or kafka://host:port/topic")

def _kafka() -> Any:
    try:
        return importlib.import_module("actionstate.connectors.kafka")
    except ImportError as exc:
        raise ConfigError(f"Kafka inputs and outputs need the optional dependency "
                          f"{exc.name!r}: pip install 'actionstate[kafka]'") from None
