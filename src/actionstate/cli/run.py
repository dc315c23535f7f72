"""``actionstate run``: an agent over a JSONL file or a Kafka topic, on this machine."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from actionstate.api import run_async
from actionstate.cli.progress import Progress
from actionstate.durable.stats import RunStats
from actionstate.errors import ConfigError
from actionstate.eventlog import FieldRedaction
from actionstate.loader import load_agent_class
from actionstate.retry import RetryPolicy
from actionstate.telemetry import configure_from_env

__all__ = ["default_job", "named_values", "run_command"]


def run_command(args: argparse.Namespace) -> int:
    agent_cls = load_agent_class(args.agent)
    if args.max_retries < 0 or args.retry_wait_interval < 0:
        raise ConfigError("--max-retries and --retry-wait-interval must not be negative")
    retry = RetryPolicy(max_attempts=args.max_retries + 1,
                        initial_interval=args.retry_wait_interval)
    progress = None if args.quiet else Progress(sys.stderr)
    started = time.monotonic()
    meters = configure_from_env(os.environ)  # OTEL_METRICS_EXPORTER: docs/metrics.md
    stats = RunStats()  # kept when the run raises: --summary is written all the same
    try:
        asyncio.run(run_async(
            agent_cls, source=args.input, sink=args.output, key=args.key, state=args.state,
            store=args.store, store_options=named_values(args.option),
            durability=args.durability, checkpoint_interval=args.checkpoint_interval,
            concurrency=args.concurrency, stop_grace=args.stop_grace, event_log=args.event_log,
            event_log_level=args.event_log_level,
            event_log_redact=FieldRedaction.parse(args.redact) if args.redact else None,
            divergence=args.divergence, retry=retry,
            job=args.job or default_job(args.agent), until_end=args.until_end,
            dead_letter=args.dead_letter, progress=progress, overwrite=args.overwrite,
            meter_provider=meters, stats=stats))
    finally:
        if meters is not None:
            meters.shutdown()  # exports the final values
        if args.summary:
            _write_summary(Path(args.summary), stats.summary(time.monotonic() - started),
                           failing=sys.exc_info()[1] is not None)
    if progress is not None:
        progress.finish()
    if stats.stopped_by is not None:
        print(f"stopped by {stats.stopped_by} after {stats.inputs} inputs; checkpoint "
              f"written to {args.state}: run the same command to resume", file=sys.stderr)
    return 0


def named_values(pairs: list[str], flag: str = "--option") -> dict[str, str]:
    """The ``NAME=VALUE`` pairs of a repeatable ``flag``, by name."""
    options = {}
    for number, pair in enumerate(pairs, start=1):
        name, sep, value = pair.partition("=")
        if not sep or not name:  # its text may be a secret with a ':' for the '='
            raise ConfigError(f"{flag} number {number} must look like NAME=VALUE (its text is "
                              "not shown: it may hold a secret)")
        options[name] = value
    return options


def default_job(spec: str) -> str:
    """The job name of an agent spec: ``file:Class`` or ``package.module:Class``."""
    target, _, attr = spec.rpartition(":")
    return f"{Path(target).stem if target.endswith('.py') else target}:{attr}"


def _write_summary(path: Path, summary: dict[str, Any], failing: bool = False) -> None:
    """Write ``summary`` to ``path``; when the run is ``failing``, a summary that cannot be
    written is only a warning (the run's own error is the one to report)."""
    try:
        path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        if failing:
            print(f"warning: --summary {path} cannot be written ({exc.strerror})",
                  file=sys.stderr)
            return
        raise ConfigError(f"--summary {path} cannot be written ({exc.strerror}): give a path "
                          "in a directory that exists and can be written") from None
