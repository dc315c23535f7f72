"""Run an agent from Python: :func:`run` and :func:`run_async`, with the semantics and
options of ``actionstate run`` (the command is a thin layer over them)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from actionstate.agent import Agent
from actionstate.connectors import SinkSpec, SourceSpec, open_sink, open_source
from actionstate.durable.chain import ChainSettings
from actionstate.durable.execution import POLICIES, DivergencePolicy
from actionstate.durable.stats import RunStats
from actionstate.errors import ConfigError
from actionstate.eventlog import EventLogger, EventLogLevel, Redactor
from actionstate.retry import RetryPolicy, split_options
from actionstate.runners.local import LocalRunner, ProgressFn
from actionstate.runners.statedir import StateDir
from actionstate.stores import open_store, url_from_options
from actionstate.stores.base import DURABILITIES, Durability
from actionstate.telemetry import attach

__all__ = ["default_job", "run", "run_async"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


async def run_async(
    agent: Agent | type[Agent], *, source: SourceSpec, sink: SinkSpec,
    key: str | Callable[[Any], str] | None = None, state: str | Path = ".actionstate",
    store: str | None = None, store_options: Mapping[str, str] | None = None,
    durability: Durability = "sync", checkpoint_interval: float = 1.0, concurrency: int = 64,
    stop_grace: float = 10.0,
    event_log: str | Path | None = None, event_log_level: EventLogLevel = "standard",
    event_log_redact: Redactor | Mapping[str, Iterable[str]] | None = None,
    divergence: DivergencePolicy = "reexecute", retry: RetryPolicy | None = None,
    job: str | None = None, until_end: bool = False, dead_letter: SinkSpec | None = None,
    progress: ProgressFn | None = None, overwrite: bool = False,
    meter_provider: Any = None, stats: RunStats | None = None,
) -> RunStats:
    """Run ``agent`` over ``source`` into ``sink``, resuming from ``state`` if a
    checkpoint is there; returns the run's counters (``stopped_by`` names the signal
    that stopped it early, if one did). :func:`run` is the same, blocking.

    Exactly what ``actionstate run`` does (same options, same recovery):

    * ``source``: a JSONL file path, ``kafka://host:port/topic``, an iterable or async
      iterable of records, or a :class:`~actionstate.connectors.base.Source`. ``key``
      is the record field holding the agent key (``"@key"``: a Kafka message's own
      key), or, for an iterable, a function of a record. A Kafka topic has no end:
      the run goes on until SIGTERM or Ctrl-C (in the main thread; elsewhere, cancel
      the task) unless ``until_end`` (read up to the end offsets when the run starts).
    * ``sink``: a JSONL file path, ``kafka://host:port/topic`` (exactly once, in
      transactions committed with the checkpoints), a function of ``(key, output)``
      or a list (outputs appended; at least once across crashes), or a
      :class:`~actionstate.connectors.base.Sink`. ``dead_letter``: where records the
      source cannot use go (any sink), instead of stopping the run. A first run
      (no checkpoint in ``state``) refuses an output or dead-letter file that
      already holds data, unless ``overwrite``: it would cut it to nothing.
    * ``store``: a store URL (default: SQLite inside ``state``; ``memory://`` for
      none), ``store_options`` its options (Flink Agents' names accepted; their
      ``max-retries`` and ``retry-wait-interval`` set ``retry``'s attempts and first
      wait instead).
    * ``event_log``: a JSONL file of every event handled (docs/eventlog.md), at
      ``event_log_level``; ``event_log_redact`` keeps fields out of it: a mapping of
      event type name (or ``"*"``) to dotted field paths, or a function
      ``(event type, fields) -> fields``.
    * Payloads recorded in the store and the checkpoint are encrypted when keys are
      configured (``ACTIONSTATE_KEYS`` or ``ACTIONSTATE_KEY_FILE``: docs/security.md).
    * Metrics go to OpenTelemetry (``meter_provider``, default the global one; a
      no-op without the SDK): :mod:`actionstate.telemetry` lists them.
    * ``stats``: the counters to count into (default: new ones); a caller that passes
      its own keeps what a run that raises had done (``failed`` names the error), e.g.
      for a summary.
    * ``stop_grace``: after SIGTERM or Ctrl-C, the seconds the inputs in flight get to
      finish before the run abandons them (checkpointed as pending, taken up again by
      the next run); a second signal abandons them at once.
    * ``job``: the name idempotency keys are made of (default ``module:Class`` of the
      agent, which is what the command derives from ``file.py:Class``).

    Raises the errors the command reports: :class:`~actionstate.errors.ActionFailedError`
    (an action raised; its recorded calls are kept), :class:`~actionstate.errors.InputError`,
    :class:`~actionstate.errors.StoreError`, :class:`~actionstate.errors.ConfigError`... Fix
    the cause and call it again with the same arguments to resume.
    """
    if durability not in DURABILITIES:
        raise ConfigError(f"durability {durability!r} is not one of {', '.join(DURABILITIES)}")
    if not stop_grace >= 0:
        raise ConfigError(f"stop grace {stop_grace!r} must be 0 or more seconds")
    if divergence not in POLICIES:
        raise ConfigError(f"divergence {divergence!r} is not one of {', '.join(POLICIES)}")
    if isinstance(agent, type) and issubclass(agent, Agent):
        agent = agent()
    if not isinstance(agent, Agent):
        raise ConfigError(f"{agent!r} is not an Agent: give an instance or a subclass of "
                          "actionstate.Agent")
    retry, options = split_options(retry or RetryPolicy(), store_options or {})
    with contextlib.ExitStack() as opened:  # closed last first, also on errors
        state_dir = StateDir(state)
        state_dir.lock()
        opened.callback(state_dir.unlock)
        the_source = open_source(source, key, until_end=until_end)
        opened.callback(the_source.close)
        url = store or (url_from_options(options) if "actionStateStoreBackend" in options
                        else state_dir.default_store_url)
        the_store = open_store(url, durability=durability, **options)
        opened.callback(the_store.close)
        the_sink = open_sink(sink, overwrite=overwrite)
        opened.callback(the_sink.close)
        letters = None
        if dead_letter is not None:
            letters = open_sink(dead_letter, role="--dead-letter", overwrite=overwrite)
            opened.callback(letters.close)
        logger = EventLogger(str(event_log) if event_log is not None else None,
                             event_log_level, event_log_redact)
        opened.callback(logger.close)
        settings = ChainSettings(job=job or default_job(type(agent)), policy=divergence,
                                 retry=retry, event_log=logger,
                                 stats=stats if stats is not None else RunStats())
        opened.callback(attach(settings.stats, meter_provider))
        runner = LocalRunner(
            agent, source=the_source, sink=the_sink, store=the_store, state_dir=state_dir,
            settings=settings, concurrency=concurrency,
            checkpoint_interval=checkpoint_interval, progress=progress, dead_letter=letters,
            stop_grace=stop_grace)
        try:
            return await runner.run()
        except Exception as exc:
            settings.stats.failed = f"{type(exc).__name__}: {exc}"
            raise


def _blocking(coroutine: Callable[_P, Coroutine[Any, Any, _T]]) -> Callable[_P, _T]:
    """A function that runs ``coroutine`` to its end in a new event loop."""
    @functools.wraps(coroutine)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        return asyncio.run(coroutine(*args, **kwargs))
    return call


run = _blocking(run_async)
"""Run an agent, blocking until the run ends: :func:`run_async` in a new event loop
(see it for the arguments). For example::

    stats = actionstate.run(Triage, source="tickets.jsonl", key="customer",
                            sink="labels.jsonl", state=".actionstate")
"""


def default_job(agent_class: type[Agent]) -> str:
    """``module:Class``: what ``actionstate run file.py:Class`` names the job."""
    return f"{agent_class.__module__}:{agent_class.__qualname__}"
