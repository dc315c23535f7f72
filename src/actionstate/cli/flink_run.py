"""``actionstate flink run``: submit an agent as a job to an Apache Flink cluster."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from actionstate.cli.run import default_job, named_values
from actionstate.errors import ConfigError
from actionstate.loader import load_agent_class
from actionstate.retry import RetryPolicy, split_options
from actionstate.stores import open_store

__all__ = ["flink_run_command"]


def flink_run_command(args: argparse.Namespace) -> int:
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
    if args.max_retries < 0 or args.retry_wait_interval < 0:
        raise ConfigError("--max-retries and --retry-wait-interval must not be negative")
    retry, options = split_options(  # Flink Agents' names as options win over the flags
        RetryPolicy(max_attempts=args.max_retries + 1,
                    initial_interval=args.retry_wait_interval), named_values(args.option))
    store = open_store(args.store, durability=args.durability, **options)
    try:  # no record of this submission lies before the store's end now
        start_bound = {str(p): o for p, o in store.end_offsets().items()}
    finally:
        store.close()
    job = FlinkJob(
        agent=agent, input=args.input, key=args.key, output=args.output, store=args.store,
        job=args.job or default_job(args.agent), store_options=options,
        durability=args.durability, divergence=args.divergence,
        max_retries=retry.max_attempts - 1, retry_wait=retry.initial_interval,
        parallelism=args.parallelism, checkpoint_interval=_duration(args.checkpoint_interval),
        concurrency=args.concurrency, until_end=args.until_end, jobmanager=args.jobmanager,
        dead_letter=args.dead_letter,
        connector_jar=args.connector_jar or default_connector_jar(),
        environment=named_values(args.env, "--env"), start_bound=start_bound,
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
