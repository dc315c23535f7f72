"""The counters a run reports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from actionstate.checkpoint import is_count

__all__ = ["CALL_OUTCOMES", "Histogram", "RunStats", "add_counters", "rate_text"]

CALL_OUTCOMES = ("executed", "replayed", "reconciled", "retried")
"""What happened to a durable call: run (paid), served from the store, looked up by its
reconciler after a crash, or tried again after a transient failure."""


class Histogram:
    """Counts of values in power-of-two buckets (of microseconds for durations, bytes
    for sizes): cheap to add to on the hot path; quantiles to within a factor of two."""

    __slots__ = ("buckets", "count", "total", "unit")

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.buckets = [0] * 64
        self.count = 0
        self.total = 0

    def add(self, value: int) -> None:
        bucket = value.bit_length() if value > 0 else 0
        self.buckets[bucket if bucket < 63 else 63] += 1
        self.count += 1
        self.total += value

    def quantile(self, q: float) -> int:
        """The upper bound of the bucket holding the ``q`` quantile (0 when empty)."""
        rank, seen = q * self.count, 0
        for index, n in enumerate(self.buckets):
            seen += n
            if n and seen >= rank:
                return (1 << index) - 1 if index else 0
        return 0

    def summary(self) -> dict[str, Any]:
        mean = self.total / self.count if self.count else 0
        return {"count": self.count, "unit": self.unit, "mean": round(mean, 1),
                "p50_at_most": self.quantile(0.5), "p99_at_most": self.quantile(0.99)}


@dataclass
class RunStats:
    """Counters a runner reports."""

    inputs: int = 0
    outputs: int = 0
    calls_executed: int = 0
    calls_replayed: int = 0
    calls_reconciled: int = 0
    calls_retried: int = 0
    calls_truncated: int = 0
    actions_run: int = 0
    actions_skipped: int = 0
    dead_letters: int = 0
    """Input records that could not be inputs, sent to the dead-letter sink."""
    prompt_tokens_executed: int = 0
    """Tokens of model calls made by this run (from the ``usage`` a chat model's reply
    records: ``{"usage": {"prompt_tokens", "completion_tokens"}}``), paid."""
    completion_tokens_executed: int = 0
    prompt_tokens_replayed: int = 0
    """Tokens of recorded model calls served from the store: not paid again."""
    completion_tokens_replayed: int = 0
    stopped_by: str | None = None
    """The signal that stopped the run early (``"SIGTERM"``, ``"SIGINT"``), or None."""
    failed: str | None = None
    """The error that ended the run (``"ActionFailedError: ..."``), or None."""
    resumed_at: str | None = None
    """Where a run that resumed from a checkpoint took the input up again (e.g.
    ``"line 1201 of tickets.jsonl"``), None on a first run."""
    done_fraction: float | None = None
    """The share of the input read so far (a file's bytes), when the source knows it."""
    by_function: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Durable calls per (function id, outcome in :data:`CALL_OUTCOMES`)."""
    histograms: dict[str, Histogram] = field(default_factory=lambda: {
        "store_put_us": Histogram("us"), "store_flush_us": Histogram("us"),
        "checkpoint_us": Histogram("us"), "checkpoint_bytes": Histogram("bytes")})
    """Latencies of recording a call, of commits (flushes), of checkpoints, and the bytes
    each checkpoint wrote."""
    on_observe: Callable[[str, int], None] | None = None
    """Also told every histogram value (OpenTelemetry export: :mod:`actionstate.telemetry`)."""

    def call(self, function_id: str, outcome: str) -> None:
        """Count one durable call of ``function_id`` with ``outcome``."""
        self.by_function[(function_id, outcome)] += 1
        if outcome == "executed":
            self.calls_executed += 1
        elif outcome == "replayed":
            self.calls_replayed += 1
        elif outcome == "reconciled":
            self.calls_reconciled += 1
        else:
            self.calls_retried += 1

    def replayed(self, function_id: str, result: Any) -> None:
        """Count one replayed call of ``function_id``, and the tokens of its ``result``
        (a replay's :meth:`call` and :meth:`add_tokens` in one)."""
        self.by_function[(function_id, "replayed")] += 1
        self.calls_replayed += 1
        if isinstance(result, dict):
            self.add_tokens(result, replayed=True)

    def observe(self, name: str, value: int) -> None:
        """Add ``value`` to histogram ``name``."""
        self.histograms[name].add(value)
        if self.on_observe is not None:
            self.on_observe(name, value)

    def add_tokens(self, result: Any, *, replayed: bool) -> None:
        """Count the tokens of a call's result when it is a model reply with usage."""
        usage = result.get("usage") if isinstance(result, dict) else None
        if not isinstance(usage, dict):
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not (type(prompt) is int and type(completion) is int  # the common case, inline
                and prompt >= 0 and completion >= 0) and not (
                is_count(prompt) and is_count(completion)):
            return
        if replayed:
            self.prompt_tokens_replayed += prompt
            self.completion_tokens_replayed += completion
        else:
            self.prompt_tokens_executed += prompt
            self.completion_tokens_executed += completion

    def summary(self, elapsed: float) -> dict[str, Any]:
        """What a run did, as JSON (``actionstate run --summary``)."""
        return {
            "complete": self.stopped_by is None and self.failed is None,
            "stopped_by": self.stopped_by, "failed": self.failed,
            "resumed_at": self.resumed_at, "elapsed_seconds": round(elapsed, 3),
            "inputs": self.inputs, "outputs": self.outputs, "dead_letters": self.dead_letters,
            "actions": {"run": self.actions_run, "skipped": self.actions_skipped},
            "calls": {"executed": self.calls_executed, "replayed": self.calls_replayed,
                      "reconciled": self.calls_reconciled, "retried": self.calls_retried,
                      "truncated": self.calls_truncated},
            "tokens": {
                "executed": {"prompt": self.prompt_tokens_executed,
                             "completion": self.completion_tokens_executed},
                "replayed": {"prompt": self.prompt_tokens_replayed,
                             "completion": self.completion_tokens_replayed},
            },
            "functions": self.functions(),
            "latency": {name: h.summary() for name, h in self.histograms.items()},
        }

    def functions(self) -> dict[str, dict[str, int]]:
        """Durable calls per function id and outcome."""
        out: dict[str, dict[str, int]] = {}
        for (function_id, outcome), n in sorted(self.by_function.items()):
            out.setdefault(function_id, dict.fromkeys(CALL_OUTCOMES, 0))[outcome] = n
        return out

    def counters(self) -> dict[str, int]:
        """The counters (what a checkpoint keeps)."""
        return {name: value for name, value in vars(self).items()
                if isinstance(value, int) and not isinstance(value, bool)}


def add_counters(earlier: Mapping[str, int], run: Mapping[str, int]) -> dict[str, int]:
    """Counters of earlier runs plus a run's (:meth:`RunStats.counters`): a job's totals."""
    total = dict(earlier)
    for name, value in run.items():
        total[name] = total.get(name, 0) + value
    return total


def rate_text(per_second: float, unit: str = "inputs") -> str:
    """A rate for people, with one decimal: ``12.3 inputs/s``; per minute or hour when
    it would show as 0.0 per second (``1.2 inputs/min``, not ``0.0 inputs/s``)."""
    for scale, per in ((1, "s"), (60, "min"), (3600, "h")):
        if per_second * scale >= 0.05 or per == "h":
            break
    if per_second <= 0:
        scale, per = 1, "s"
    return f"{per_second * scale:,.1f} {unit}/{per}"
