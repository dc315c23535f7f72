"""The command line of ``actionstate``: its commands and their options."""

from __future__ import annotations

import argparse
import importlib.metadata

from actionstate.cli.commands import demo_command, inspect_command, keygen_command
from actionstate.cli.flink_run import flink_run_command
from actionstate.cli.run import run_command
from actionstate.durable.execution import POLICIES
from actionstate.eventlog import LEVELS
from actionstate.stores.base import DURABILITIES

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``actionstate`` command line: each command's handler is its
    ``command`` default."""
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
    run.add_argument("--stop-grace", type=float, default=10.0, metavar="SECONDS",
                     help="after SIGTERM or Ctrl-C, seconds the inputs in flight get to "
                     "finish; then (or at a second signal) they are left for the next run "
                     "(default: %(default)s)")
    run.add_argument("--event-log", metavar="PATH",
                     help="write the event log here (JSONL; each input's events once across "
                     "crashes: docs/eventlog.md)")
    run.add_argument("--event-log-level", choices=LEVELS, default="standard",
                     help=_LEVEL_HELP)
    run.add_argument("--redact", action="append", default=[], metavar="TYPE:FIELD[,FIELD]",
                     help="keep fields out of the event log, first runs and replays alike: an "
                     "event type (as the log names it, or *) and dotted field paths, e.g. "
                     "InputEvent:input.email,input.card (repeatable)")
    _add_call_options(run)
    run.add_argument("--job", help="job name for idempotency keys (default: the agent spec)")
    run.add_argument("--overwrite", action="store_true",
                     help="on a first run (no checkpoint in --state), replace an --output or "
                     "--dead-letter file that already holds data (default: refuse)")
    run.add_argument("--summary", metavar="PATH",
                     help="at the end, write what the run did as JSON here: inputs, outputs, "
                     "actions, durable calls executed and replayed, model tokens paid and "
                     "replayed (not paid again)")
    run.add_argument("--quiet", action="store_true", help="no progress or summary")
    run.set_defaults(command=run_command)

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
    _add_call_options(flink_run)
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
                           help=_LEVEL_HELP)
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
    flink_run.set_defaults(command=flink_run_command)

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
    inspect.set_defaults(command=inspect_command)

    keygen = sub.add_parser(
        "keygen", help="print a new encryption key entry (id:base64) for ACTIONSTATE_KEYS or "
        "ACTIONSTATE_KEY_FILE (docs/security.md)")
    keygen.add_argument("id", help="the key's id (letters, digits, '.', '_', '-'), e.g. k2")
    keygen.set_defaults(command=keygen_command)

    demo = sub.add_parser("demo", help="run a bundled agent, kill it mid-run, resume, report")
    demo.add_argument("--dir", help="work directory (default: a new temporary one)")
    demo.add_argument("--inputs", type=int, default=200, metavar="N",
                      help="tickets to run (default: %(default)s)")
    demo.set_defaults(command=demo_command)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("actionstate")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "(not installed)"


_LEVEL_HELP = ("off, standard (events) or verbose (plus each action run with its calls) "
               "(default: %(default)s)")


def _add_call_options(parser: argparse.ArgumentParser) -> None:
    """How durable calls diverge and retry: the same for ``run`` and ``flink run``."""
    parser.add_argument("--divergence", choices=POLICIES, default="reexecute",
                        help="what to do when replay finds a different call than recorded "
                        "(default: %(default)s)")
    parser.add_argument("--max-retries", type=int, default=3, metavar="N",
                        help="retries of a durable call that fails transiently (timeouts, "
                        "connection errors, HTTP 408/429/5xx), with exponential backoff "
                        "(default 3)")
    parser.add_argument("--retry-wait-interval", type=float, default=1.0, metavar="SECONDS",
                        help="wait before the first retry; doubles each time, up to 30 s, "
                        "or what the server's Retry-After asks (default 1)")
