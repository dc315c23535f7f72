"""The ``actionstate`` command: run, inspect, demo."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import sys
from pathlib import Path
from typing import TextIO

from actionstate.durable.chain import ChainSettings
from actionstate.durable.execution import POLICIES
from actionstate.durable.stats import RunStats
from actionstate.errors import (
    ActionFailedError,
    ActionStateError,
    AgentDefinitionError,
    ConfigError,
)
from actionstate.eventlog import LEVELS, EventLogger
from actionstate.loader import load_agent_class
from actionstate.retry import RetryPolicy
from actionstate.runners.files import JsonlSink, JsonlSource
from actionstate.runners.local import LocalRunner
from actionstate.runners.statedir import StateDir
from actionstate.stores import open_store, url_from_options
from actionstate.stores.base import DURABILITIES

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 an action failed, 2 bad input)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="actionstate: %(message)s")
    try:
        return int(args.command(args))
    except ActionFailedError as exc:
        print(f"error: {exc}\nrecorded calls are kept: fix the action and run the same "
              "command again to resume", file=sys.stderr)
        return 1
    except ActionStateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `actionstate inspect ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actionstate", description="Durable execution for event-driven AI agents.")
    parser.add_argument("--version", action="version",
                        version=f"actionstate {_version()}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run an agent over a JSONL file, resuming after a crash")
    run.add_argument("agent", help="path/to/file.py:AgentClass or package.module:AgentClass")
    run.add_argument("--input", required=True, help="JSONL input file, one record per line")
    run.add_argument("--key", required=True, help="record field that partitions the inputs")
    run.add_argument("--state", required=True, help="state directory (checkpoint, lock, store)")
    run.add_argument("--output", required=True, help="JSONL output file (exactly once)")
    run.add_argument("--store",
                     help="store URL (default: sqlite inside --state; memory:// for none)")
    run.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                     help="store option, e.g. kafkaActionStateTopicNumPartitions=8; Flink "
                     "Agents' names are accepted (actionStateStoreBackend=kafka, ...)")
    run.add_argument("--durability", choices=DURABILITIES, default="sync")
    run.add_argument("--checkpoint-interval", type=float, default=1.0, metavar="SECONDS")
    run.add_argument("--concurrency", type=int, default=64, help="inputs in flight (distinct keys)")
    run.add_argument("--event-log", metavar="PATH", help="write the event log here (JSONL)")
    run.add_argument("--event-log-level", choices=LEVELS, default="standard")
    run.add_argument("--divergence", choices=POLICIES, default="reexecute",
                     help="what to do when replay finds a different call than recorded")
    run.add_argument("--max-retries", type=int, default=3, metavar="N",
                     help="retries of a durable call that fails transiently (timeouts, "
                     "connection errors, HTTP 429/5xx), with exponential backoff (default 3)")
    run.add_argument("--retry-wait-interval", type=float, default=1.0, metavar="SECONDS",
                     help="wait before the first retry; doubles each time, up to 30 s, "
                     "or what the server's Retry-After asks (default 1)")
    run.add_argument("--job", help="job name for idempotency keys (default: the agent spec)")
    run.add_argument("--quiet", action="store_true", help="no progress or summary")
    run.set_defaults(command=_run)

    inspect = sub.add_parser("inspect", help="show what a state directory holds")
    inspect.add_argument("--state", required=True)
    inspect.add_argument("--key", help="only this input key")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.add_argument("--agent", metavar="SPEC",
                         help="the run's agent (path/to/file.py:Class), so that the events "
                         "its module defines can be read back")
    inspect.set_defaults(command=_inspect)

    demo = sub.add_parser("demo", help="run a bundled agent, kill it mid-run, resume, report")
    demo.add_argument("--dir", help="work directory (default: a new temporary one)")
    demo.add_argument("--inputs", type=int, default=200)
    demo.set_defaults(command=_demo)
    return parser


def _run(args: argparse.Namespace) -> int:
    agent_cls = load_agent_class(args.agent)
    state_dir = StateDir(args.state)
    state_dir.lock()
    source = JsonlSource(args.input, args.key)
    options = _options(args.option)
    url = args.store or (url_from_options(options) if "actionStateStoreBackend" in options
                         else state_dir.default_store_url)
    store = open_store(url, durability=args.durability, **options)
    sink = JsonlSink(args.output)
    event_log = EventLogger(args.event_log, args.event_log_level)
    job = args.job or _default_job(args.agent)
    if args.max_retries < 0 or args.retry_wait_interval < 0:
        raise ConfigError("--max-retries and --retry-wait-interval must not be negative")
    retry = RetryPolicy(max_attempts=args.max_retries + 1,
                        initial_interval=args.retry_wait_interval)
    settings = ChainSettings(job=job, policy=args.divergence, retry=retry, event_log=event_log)
    progress = None if args.quiet else _Progress(sys.stderr)
    runner = LocalRunner(
        agent_cls(), source=source, sink=sink, store=store, state_dir=state_dir,
        settings=settings, concurrency=args.concurrency,
        checkpoint_interval=args.checkpoint_interval, progress=progress)
    try:
        stats = asyncio.run(runner.run())
    finally:
        event_log.close()
        sink.close()
        store.close()
        state_dir.unlock()
    if progress is not None:
        progress.finish()
    if runner.stopped_by is not None:
        print(f"stopped by {runner.stopped_by} after {stats.inputs} inputs; checkpoint "
              f"written to {state_dir.path}: run the same command to resume", file=sys.stderr)
    return 0


def _version() -> str:
    try:
        return importlib.metadata.version("actionstate")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "(not installed)"


def _options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--option {pair!r} must look like NAME=VALUE")
        options[name] = value
    return options


def _default_job(spec: str) -> str:
    target, _, attr = spec.rpartition(":")
    return f"{Path(target).stem if target.endswith('.py') else target}:{attr}"


class _Progress:
    """One status line, redrawn on a terminal; a summary line otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._line = ""

    def __call__(self, stats: RunStats, elapsed: float) -> None:
        rate = stats.inputs / elapsed if elapsed > 0 else 0.0
        self._line = (
            f"{stats.inputs} inputs done, {stats.outputs} outputs | calls: "
            f"{stats.calls_executed} executed, {stats.calls_replayed} replayed | "
            f"{rate:,.0f} inputs/s"
        )
        if self._tty:
            self._stream.write("\r\x1b[2K" + self._line)
            self._stream.flush()

    def finish(self) -> None:
        self._stream.write("\n" if self._tty else self._line + "\n")
        self._stream.flush()


def _inspect(args: argparse.Namespace) -> int:
    from actionstate.inspection import describe_state, render_text

    if args.agent:
        load_agent_class(args.agent)  # registers the event classes its module defines
    try:
        report = describe_state(Path(args.state), key=args.key)
    except AgentDefinitionError as exc:
        raise AgentDefinitionError(f"{exc}; give the run's agent: actionstate inspect "
                                   "--state DIR --agent path/to/file.py:Class") from None
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    else:
        print(render_text(report))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from actionstate.demo.run import run_demo

    return int(run_demo(args.dir, args.inputs))


