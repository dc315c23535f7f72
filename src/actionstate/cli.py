"""The ``actionstate`` command: run, inspect, demo."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from actionstate.api import run_async
from actionstate.durable.execution import POLICIES
from actionstate.durable.stats import RunStats
from actionstate.errors import (
    ActionFailedError,
    ActionStateError,
    AgentDefinitionError,
    ConfigError,
)
from actionstate.eventlog import LEVELS, FieldRedaction
from actionstate.loader import load_agent_class
from actionstate.retry import RetryPolicy
from actionstate.stores import open_store
from actionstate.stores.base import DURABILITIES
from actionstate.telemetry import configure_from_env

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

    run = sub.add_parser("run", help="run an agent over a JSONL file or a Kafka topic, "
                         "resuming after a crash")
    run.add_argument("agent", help="path/to/file.py:AgentClass or package.module:AgentClass")
    run.add_argument("--input", required=True, metavar="FILE|URL",
                     help="JSONL input file (one record per line) or kafka://host:port/topic "
                     "(every partition; ?partitions=0,1 for some)")
    run.add_argument("--key", required=True, metavar="FIELD",
                     help="record field that partitions the inputs (@key: a Kafka message's "
                     "own key)")
    run.add_argument("--state", required=True, help="state directory (checkpoint, lock, store)")
    run.add_argument("--output", required=True, metavar="FILE|URL",
                     help="JSONL output file or kafka://host:port/topic (exactly once)")
    run.add_argument("--until-end", action="store_true",
                     help="a Kafka input: stop at the end offsets the topic has when the run "
                     "starts (default: run until SIGTERM or Ctrl-C)")
    run.add_argument("--dead-letter", metavar="FILE|URL",
                     help="send input records that cannot be inputs (not JSON, no key) here, "
                     "with what was wrong, instead of stopping the run")
    run.add_argument("--store",
                     help="store URL (default: sqlite inside --state; memory:// for none)")
    run.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                     help="store option, e.g. kafkaActionStateTopicNumPartitions=8; Flink "
                     "Agents' names are accepted (actionStateStoreBackend=kafka, ...)")
    run.add_argument("--durability", choices=DURABILITIES, default="sync",
                     help="sync: each durable call's record is on disk before the call "
                     "returns; group: records are committed together every few ms, a crash "
                     "may re-run the calls of the last group (default: %(default)s)")
    run.add_argument("--checkpoint-interval", type=float, default=1.0, metavar="SECONDS",
                     help="seconds between checkpoints (input position, outputs, per-key "
                     "state) (default: %(default)s)")
    run.add_argument("--concurrency", type=int, default=64, metavar="N",
                     help="inputs in flight, each of another key (default: %(default)s)")
    run.add_argument("--event-log", metavar="PATH",
                     help="write the event log here (JSONL; each input's events once across "
                     "crashes: docs/eventlog.md)")
    run.add_argument("--event-log-level", choices=LEVELS, default="standard",
                     help="off, standard (events) or verbose (plus each action run with its "
                     "calls) (default: %(default)s)")
    run.add_argument("--redact", action="append", default=[], metavar="TYPE:FIELD[,FIELD]",
                     help="keep fields out of the event log, first runs and replays alike: an "
                     "event type (as the log names it, or *) and dotted field paths, e.g. "
                     "InputEvent:input.email,input.card (repeatable)")
    run.add_argument("--divergence", choices=POLICIES, default="reexecute",
                     help="what to do when replay finds a different call than recorded "
                     "(default: %(default)s)")
    run.add_argument("--max-retries", type=int, default=3, metavar="N",
                     help="retries of a durable call that fails transiently (timeouts, "
                     "connection errors, HTTP 429/5xx), with exponential backoff (default 3)")
    run.add_argument("--retry-wait-interval", type=float, default=1.0, metavar="SECONDS",
                     help="wait before the first retry; doubles each time, up to 30 s, "
                     "or what the server's Retry-After asks (default 1)")
    run.add_argument("--job", help="job name for idempotency keys (default: the agent spec)")
    run.add_argument("--overwrite", action="store_true",
                     help="on a first run (no checkpoint in --state), replace an --output or "
                     "--dead-letter file that already holds data (default: refuse)")
    run.add_argument("--summary", metavar="PATH",
                     help="at the end, write what the run did as JSON here: inputs, outputs, "
                     "actions, durable calls executed and replayed, model tokens paid and "
                     "replayed (not paid again)")
    run.add_argument("--quiet", action="store_true", help="no progress or summary")
    run.set_defaults(command=_run)

    flink = sub.add_parser("flink", help="run an agent on an Apache Flink cluster")
    flink_sub = flink.add_subparsers(required=True, metavar="COMMAND")
    flink_run = flink_sub.add_parser(
        "run", help="submit the agent as a Flink job: Kafka in, exactly-once Kafka out, "
        "recorded calls in a shared store, recovery through Flink checkpoints")
    flink_run.add_argument("agent", help="path/to/file.py:AgentClass or package.module:AgentClass")
    flink_run.add_argument("--input", required=True, metavar="URL",
                           help="kafka://host:port/topic (every partition)")
    flink_run.add_argument("--key", required=True, metavar="FIELD",
                           help="record field holding the agent key (@key: the message key)")
    flink_run.add_argument("--output", required=True, metavar="URL",
                           help="kafka://host:port/topic (exactly once, keyed by agent key)")
    flink_run.add_argument("--store", required=True, metavar="URL",
                           help="a store every TaskManager reaches: kafka://host:port/topic")
    flink_run.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                           help="store option (as for actionstate run)")
    flink_run.add_argument("--jobmanager", metavar="HOST:PORT",
                           help="the JobManager's REST address (default: a local mini-cluster "
                           "in this process, for development)")
    flink_run.add_argument("--parallelism", type=int, default=1, metavar="N",
                           help="subtasks of the agent operator (default 1)")
    flink_run.add_argument("--concurrency", type=int, default=64, metavar="N",
                           help="inputs in flight per subtask, each of another key "
                           "(default: %(default)s)")
    flink_run.add_argument("--checkpoint-interval", default="2s", metavar="DURATION",
                           help="Flink checkpoint interval: 2s, 500ms, 1m (default 2s)")
    flink_run.add_argument("--durability", choices=DURABILITIES, default="sync",
                           help="store durability (default sync)")
    flink_run.add_argument("--divergence", choices=POLICIES, default="reexecute",
                           help="what to do when replay finds a different call than recorded")
    flink_run.add_argument("--max-retries", type=int, default=3, metavar="N",
                           help="retries of a durable call that fails transiently (default 3)")
    flink_run.add_argument("--retry-wait-interval", type=float, default=1.0, metavar="SECONDS",
                           help="wait before the first retry (default 1)")
    flink_run.add_argument("--job", help="job name: the store namespace and idempotency keys "
                           "derive from it (default: the agent spec)")
    flink_run.add_argument("--until-end", action="store_true",
                           help="read the input up to its end when the job starts, then "
                           "finish (on a cluster the client waits and stops the job with a "
                           "drain: not with --detach)")
    flink_run.add_argument("--dead-letter", metavar="URL",
                           help="a Kafka topic (kafka://host:port/topic) for input records "
                           "that cannot be inputs (not UTF-8 JSON objects, no key), written "
                           "exactly once with the outputs; without it such a record fails "
                           "the job, which Flink restarts at it again")
    flink_run.add_argument("--event-log", metavar="DIR",
                           help="a directory on each TaskManager: every worker appends its "
                           "event log (JSONL) to a file of its own there")
    flink_run.add_argument("--event-log-level", choices=LEVELS, default="standard",
                           help="(default: %(default)s)")
    flink_run.add_argument("--redact", action="append", default=[],
                           metavar="TYPE:FIELD[,FIELD]", help="as in actionstate run")
    flink_run.add_argument("--from-savepoint", metavar="PATH",
                           help="start from a savepoint of this job (e.g. after a stop with "
                           "savepoint; the parallelism may differ), a retained checkpoint "
                           "(chk-N), or a lost job's checkpoints directory (its newest "
                           "completed checkpoint)")
    flink_run.add_argument("--detach", action="store_true",
                           help="print the job id and return at once (with --jobmanager)")
    flink_run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                           help="set in the Python workers' environment (e.g. the model's "
                           "URL); not for secrets: it travels in the job graph")
    flink_run.add_argument("--connector-jar", metavar="PATH",
                           help="Flink's Kafka connector jar (default: the one "
                           "scripts/services/flink fetched)")
    flink_run.set_defaults(command=_flink_run)

    inspect = sub.add_parser("inspect", help="show what a state directory holds")
    inspect.add_argument("--state", required=True, help="the run's state directory")
    inspect.add_argument("--key", help="only this input key")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.add_argument("--agent", metavar="SPEC",
                         help="the run's agent (path/to/file.py:Class), so that the events "
                         "its module defines can be read back (default: the one the "
                         "checkpoint names, if its file is still there)")
    inspect.add_argument("--store", metavar="URL",
                         help="the store URL with its credentials: the checkpoint keeps the "
                         "URL with secret option values masked as ***")
    inspect.set_defaults(command=_inspect)

    keygen = sub.add_parser(
        "keygen", help="print a new encryption key entry (id:base64) for ACTIONSTATE_KEYS or "
        "ACTIONSTATE_KEY_FILE (docs/security.md)")
    keygen.add_argument("id", help="the key's id (letters, digits, '.', '_', '-'), e.g. k2")
    keygen.set_defaults(command=_keygen)

    demo = sub.add_parser("demo", help="run a bundled agent, kill it mid-run, resume, report")
    demo.add_argument("--dir", help="work directory (default: a new temporary one)")
    demo.add_argument("--inputs", type=int, default=200, metavar="N",
                      help="tickets to run (default: %(default)s)")
    demo.set_defaults(command=_demo)
    return parser


def _run(args: argparse.Namespace) -> int:
    agent_cls = load_agent_class(args.agent)
    if args.max_retries < 0 or args.retry_wait_interval < 0:
        raise ConfigError("--max-retries and --retry-wait-interval must not be negative")
    retry = RetryPolicy(max_attempts=args.max_retries + 1,
                        initial_interval=args.retry_wait_interval)
    progress = None if args.quiet else _Progress(sys.stderr)
    started = time.monotonic()
    meters = configure_from_env(os.environ)  # OTEL_METRICS_EXPORTER: docs/metrics.md
    try:
        stats = asyncio.run(run_async(
            agent_cls, source=args.input, sink=args.output, key=args.key, state=args.state,
            store=args.store, store_options=_options(args.option),
            durability=args.durability, checkpoint_interval=args.checkpoint_interval,
            concurrency=args.concurrency, event_log=args.event_log,
            event_log_level=args.event_log_level,
            event_log_redact=FieldRedaction.parse(args.redact) if args.redact else None,
            divergence=args.divergence, retry=retry,
            job=args.job or _default_job(args.agent), until_end=args.until_end,
            dead_letter=args.dead_letter, progress=progress, overwrite=args.overwrite,
            meter_provider=meters))
    finally:
        if meters is not None:
            meters.shutdown()  # exports the final values
    if args.summary:
        _write_summary(Path(args.summary), stats.summary(time.monotonic() - started))
    if progress is not None:
        progress.finish()
    if stats.stopped_by is not None:
        print(f"stopped by {stats.stopped_by} after {stats.inputs} inputs; checkpoint "
              f"written to {args.state}: run the same command to resume", file=sys.stderr)
    return 0


def _flink_run(args: argparse.Namespace) -> int:
    try:
        from actionstate.runners.flink.graph import submit
        from actionstate.runners.flink.job import FlinkJob, default_connector_jar
    except ImportError as exc:
        raise ConfigError(f"the Flink runner needs the optional dependency {exc.name!r}: "
                          "pip install 'actionstate[flink]' (in an environment without the "
                          "fluss extra: their pandas pins conflict)") from None
    if args.parallelism < 1:
        raise ConfigError(f"--parallelism must be at least 1, got {args.parallelism}")
    if args.concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, got {args.concurrency}")
    target, sep, name = args.agent.rpartition(":")
    agent = (f"{Path(target).resolve()}:{name}" if sep and target.endswith(".py")
             else args.agent)
    load_agent_class(agent)  # a bad spec fails here, not in a TaskManager
    options = _options(args.option)
    store = open_store(args.store, durability=args.durability, **options)
    try:  # no record of this submission lies before the store's end now
        start_bound = {str(p): o for p, o in store.end_offsets().items()}
    finally:
        store.close()
    job = FlinkJob(
        agent=agent, input=args.input, key=args.key, output=args.output, store=args.store,
        job=args.job or _default_job(args.agent), store_options=options,
        durability=args.durability, divergence=args.divergence,
        max_retries=args.max_retries, retry_wait=args.retry_wait_interval,
        parallelism=args.parallelism, checkpoint_interval=_duration(args.checkpoint_interval),
        concurrency=args.concurrency, until_end=args.until_end, jobmanager=args.jobmanager,
        dead_letter=args.dead_letter,
        connector_jar=args.connector_jar or default_connector_jar(),
        environment=_options(args.env, "--env"), start_bound=start_bound,
        submitted=int(time.time() * 1000),
        event_log=str(Path(args.event_log).resolve()) if args.event_log else None,
        event_log_level=args.event_log_level, redact=list(args.redact),
        savepoint=_restore_point(args.from_savepoint))
    job_id = submit(job, detach=args.detach)
    print(job_id)
    return 0


def _restore_point(path: str | None) -> str | None:
    """A savepoint or checkpoint to start from: ``path`` itself when it holds Flink's
    ``_metadata``, else the newest completed ``chk-N`` in it (a job's checkpoints
    directory, e.g. after the JobManager was lost)."""
    if path is None:
        return None
    split = urlsplit(path)
    if split.scheme not in ("", "file"):
        return path  # a remote file system: Flink reads it
    local = Path(split.path if split.scheme else path)
    if (local / "_metadata").is_file():
        return str(local)
    completed = sorted((int(chk.name[4:]), chk) for chk in local.glob("chk-*")
                       if chk.name[4:].isdigit() and (chk / "_metadata").is_file())
    if not completed:
        raise ConfigError(
            f"--from-savepoint {path}: neither a savepoint or checkpoint (no _metadata in "
            "it) nor a job's checkpoints directory with a completed chk-N: give the "
            "location a stop with savepoint printed, or the cluster's "
            "execution.checkpointing.dir/<job id>")
    newest = completed[-1][1]
    print(f"restoring from {newest}", file=sys.stderr)
    return str(newest)


def _duration(text: str) -> float:
    """Seconds of ``2s``, ``500ms``, ``1m`` or a bare number of seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for suffix in ("ms", "s", "m"):
        if text.endswith(suffix):
            number, scale = text[:-len(suffix)], units[suffix]
            break
    else:
        number, scale = text, 1.0
    try:
        seconds = float(number) * scale
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ConfigError(f"--checkpoint-interval {text!r} must be a positive duration: 2s, "
                          "500ms, 1m")
    return seconds


def _version() -> str:
    try:
        return importlib.metadata.version("actionstate")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "(not installed)"


def _options(pairs: list[str], flag: str = "--option") -> dict[str, str]:
    options = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"{flag} {pair!r} must look like NAME=VALUE")
        options[name] = value
    return options


def _default_job(spec: str) -> str:
    target, _, attr = spec.rpartition(":")
    return f"{Path(target).stem if target.endswith('.py') else target}:{attr}"


class _Progress:
    """A status line redrawn on a terminal, or a plain line every ``every`` seconds
    otherwise; where a resumed run took up its input; a last line at the end."""

    def __init__(self, stream: TextIO, every: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._every, self._clock = every, clock
        self._line = ""
        self._stats: RunStats | None = None
        self._first: tuple[float, float] | None = None  # (elapsed, share) at the first report
        self._printed: float | None = None

    def __call__(self, stats: RunStats, elapsed: float) -> None:
        if self._stats is None and stats.resumed_at is not None:
            self._write(f"resuming at {stats.resumed_at}\n")
        self._stats = stats
        rate = stats.inputs / elapsed if elapsed > 0 else 0.0
        parts = [f"{stats.inputs:,} inputs done"]
        fraction = stats.done_fraction
        if fraction is not None:
            if self._first is None:
                self._first = (elapsed, fraction)
            parts[0] += f" ({fraction:.0%} of the input)"
        parts += [f"{stats.outputs:,} outputs | calls: {stats.calls_executed:,} executed, "
                  f"{stats.calls_replayed:,} replayed | {rate:,.1f} inputs/s"]
        saved = stats.prompt_tokens_replayed + stats.completion_tokens_replayed
        if saved:
            parts.append(f"{saved:,} tokens replayed, not paid again")
        if fraction is not None and self._first is not None and fraction > self._first[1]:
            since, share = self._first  # the rate of this run, not of the earlier ones
            left = (elapsed - since) * (1 - fraction) / (fraction - share)
            parts.append(f"ETA {_clock_text(left)}")
        self._line = ", ".join(parts[:2]) + "".join(f" | {p}" for p in parts[2:])
        if self._tty:
            self._write("\r\x1b[2K" + self._line)
        elif self._printed is None or self._clock() - self._printed >= self._every:
            self._printed = self._clock()
            self._write(self._line + "\n")

    def finish(self) -> None:
        stats = self._stats
        if stats is not None and stats.stopped_by is None and stats.inputs == 0 \
                and stats.resumed_at is not None:
            self._write(("\n" if self._tty else "") + "already complete: every input was "
                        "done by an earlier run; nothing to do\n")
            return
        self._write("\n" if self._tty else self._line + "\n")

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()


def _write_summary(path: Path, summary: dict[str, Any]) -> None:
    try:
        path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--summary {path} cannot be written ({exc.strerror}): give a path "
                          "in a directory that exists and can be written") from None


def _clock_text(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``42s``."""
    whole = int(seconds + 0.5)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole}s"


def _inspect(args: argparse.Namespace) -> int:
    from actionstate.inspection import describe_state, render_text

    spec = args.agent or _remembered_agent(Path(args.state))
    if spec:
        load_agent_class(spec)  # registers the event classes its module defines
    try:
        report = describe_state(Path(args.state), key=args.key, store_url=args.store)
    except AgentDefinitionError as exc:
        raise AgentDefinitionError(f"{exc}; give the run's agent: actionstate inspect "
                                   "--state DIR --agent path/to/file.py:Class") from None
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    else:
        print(render_text(report))
    return 0


def _remembered_agent(state: Path) -> str | None:
    """The agent the run that took the last checkpoint ran, if its file is still there."""
    if not (state / "actionstate.json").exists():
        return None
    from actionstate.runners.statedir import StateDir

    checkpoint = StateDir(state, sealed_ok=True).load_checkpoint()
    spec = checkpoint.agent if checkpoint is not None else None
    if spec is None or not Path(spec.rpartition(":")[0]).is_file():
        return None
    return spec


def _keygen(args: argparse.Namespace) -> int:
    from actionstate.records.crypto import new_key_entry

    print(new_key_entry(args.id))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from actionstate.demo.run import run_demo

    return int(run_demo(args.dir, args.inputs))


