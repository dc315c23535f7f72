"""LocalRunner: one process, asyncio, many keys in flight, strict order per key.

Reads inputs from a :class:`~actionstate.connectors.base.Source` (a JSONL file,
a Kafka topic, an iterable), runs each input's chain of actions through
:func:`~actionstate.durable.chain.process_input`, writes outputs to a
:class:`~actionstate.connectors.base.Sink`, and checkpoints periodically (source
position, per-key seq counters and short-term memory, inputs in flight, the
sink's prepared state, store marker; then the sink commits). On start it
restores the last checkpoint: the sink goes back to the checkpoint, inputs in
flight are run again, and their recorded work is replayed, not redone.

Per-key state and the inputs in flight are kept by
:class:`~actionstate.runners.keys.KeyStates`; outputs leave through
:class:`~actionstate.runners.outputs.Outputs` (in ``group`` durability after the
store commit that covers them).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actionstate.agent import Agent
from actionstate.checkpoint import Checkpoint, offsets_text
from actionstate.connectors.base import InputRecord, Rejected, Sink, Source
from actionstate.durable.chain import ChainSettings, process_input
from actionstate.durable.stats import RunStats, add_counters
from actionstate.durable.threads import ActionThreads, EngineLock, SyncCommitter
from actionstate.errors import ConfigError, InputError
from actionstate.runners.keys import KeyStates
from actionstate.runners.outputs import Outputs
from actionstate.runners.statedir import StateDir
from actionstate.runners.tasks import first_error, install_signals, remove_signals
from actionstate.stores.base import ActionStateStore

__all__ = ["LocalRunner"]

ProgressFn = Callable[[RunStats, float], None]

_REPORT_EVERY = 1.0
"""Seconds between progress reports (the progress shows a plain line every few of them)."""


class LocalRunner:
    """Runs ``agent`` over ``source`` into ``sink`` with durable execution.

    Args:
        concurrency: most inputs processed at once (each of a different key).
        checkpoint_interval: seconds between checkpoints.
        group_interval: in ``group`` durability, seconds between group commits;
            outputs are held until the commit that covers them.
        stop_grace: after SIGTERM or Ctrl-C, seconds the inputs in flight get to
            finish before they are abandoned (they run again on the next start).
        dead_letter: where records the source rejects (not JSON, no key) go, with
            what was wrong; without one, such a record stops the run.
    """

    def __init__(
        self, agent: Agent, *, source: Source, sink: Sink,
        store: ActionStateStore, state_dir: StateDir, settings: ChainSettings,
        concurrency: int = 64, checkpoint_interval: float = 1.0,
        group_interval: float = 0.005, progress: ProgressFn | None = None,
        stop_grace: float = 10.0, dead_letter: Sink | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        if checkpoint_interval <= 0:
            raise ConfigError(f"checkpoint interval must be positive, got {checkpoint_interval}")
        self.agent, self.source, self.sink, self.store = agent, source, sink, store
        self.dead_letter = dead_letter
        self.state_dir, self.settings = state_dir, settings
        self.stats = settings.stats
        self._agent_spec = agent_spec(type(agent))
        self._started = time.monotonic()
        self._concurrency = concurrency
        self._checkpoint_interval = checkpoint_interval
        self._tick = (group_interval if store.durability == "group"
                      else min(0.2, checkpoint_interval))
        self._progress = progress
        self._stop_grace = stop_grace
        self._keys = KeyStates(state_dir, store)
        self._outputs = Outputs(store, sink, settings)
        self._fresh = False
        self._earlier: dict[str, int] = {}
        """The job's totals before this run (:meth:`Checkpoint.job_totals`); {} at first."""
        # Created unbound (asyncio binds them to the loop of their first use): a runner
        # runs once; entering its task group a second time raises.
        self._slots = asyncio.Semaphore(concurrency)  # inputs processed at once
        self._space = asyncio.Semaphore(concurrency * 4)  # inputs read and not yet done
        self._done = asyncio.Event()  # every input is done: the ticker stops
        self._group = asyncio.TaskGroup()  # the ticker, the reader, a worker per key
        self._queues: dict[str, deque[tuple[int, Any]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._reader: asyncio.Task[InputError | None] | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._failed = False
        self.stopped_by: str | None = None
        """The signal that stopped the run early (``"SIGTERM"``, ``"SIGINT"``), or None."""

    async def run(self) -> RunStats:
        """Restore, process every input, checkpoint at the end; returns the counters.
        A runner runs once."""
        started = self._started = time.monotonic()
        own_threads = self.settings.threads is None
        if own_threads:  # every input in flight may be in a blocking ``def`` action
            self.settings.threads = ActionThreads(self._concurrency)
        lock = self.settings.lock = EngineLock()  # this run's, closed when it ends
        committer = None
        if self.store.durability == "sync" and not self.store.url.startswith("memory://"):
            committer = self.settings.committer = SyncCommitter(self._outputs.flush_begin,
                                                                asyncio.get_running_loop())
        try:
            return await self._run(started)
        finally:
            # An action abandoned on a pool thread stops at its next durable step:
            # the caller may close the store once this returns.
            lock.close()
            if committer is not None:
                committer.close()  # after the final checkpoint's flush: all is durable
                self.settings.committer = None
            if own_threads:
                assert self.settings.threads is not None
                self.settings.threads.shutdown(wait=False)  # abandoned calls may hang
                self.settings.threads = None

    async def _run(self, started: float) -> RunStats:
        self._restore()
        signals = install_signals(self.stop)
        try:
            try:
                async with self._group as group:
                    ticker = group.create_task(self._ticker(started))
                    for (key, seq), (record, _line) in sorted(self._keys.pending.items(),
                                                               key=lambda kv: kv[0][1]):
                        await self._space.acquire()
                        self._enqueue(key, seq, record)
                    reader = self._reader = group.create_task(self._read())
                    if self.stopped_by is not None:
                        reader.cancel()
                    await asyncio.wait([reader])
                    bad_input = None if reader.cancelled() else reader.result()
                    while self._workers:
                        await asyncio.wait(list(self._workers.values()))
                    self._done.set()
                    ticker.cancel()
            except BaseExceptionGroup as group_error:
                raise first_error(group_error) from None
            finally:
                if self._grace is not None:
                    self._grace.cancel()
            self._checkpoint()
        finally:
            # Only now: a SIGTERM or Ctrl-C during the final checkpoint goes to stop(),
            # which has nothing left to stop, instead of killing the process mid-write.
            remove_signals(signals)
        if bad_input is not None:
            raise bad_input
        self._report(time.monotonic() - started)
        return self.stats

    def stop(self, reason: str = "stop") -> None:
        """Stop reading; let the inputs in flight finish for ``stop_grace`` seconds (a
        second call abandons them at once), then checkpoint and return."""
        if self.stopped_by is not None:
            self._abandon()
            return
        self.stopped_by = self.stats.stopped_by = reason
        if self._reader is not None:
            self._reader.cancel()
        self._grace = asyncio.get_running_loop().call_later(self._stop_grace, self._abandon)

    def _abandon(self) -> None:
        """Cancel the inputs in flight: they stay pending and run again on restart."""
        for worker in list(self._workers.values()):
            worker.cancel()

    async def _read(self) -> InputError | None:
        """Admit inputs until the end of the source or a bad line (returned, not raised,
        so that the inputs before it finish and are checkpointed first)."""
        try:
            await self._admit_all()
        except InputError as exc:
            return exc
        return None

    async def _admit_all(self) -> None:
        async for batch in self.source.batches():
            # One lookup for the keys of many records (a lookup per new key would wait
            # for the interpreter lock each time, the pool threads being busy).
            self._keys.reading = {item.key for item in batch if isinstance(item, InputRecord)}
            self._keys.load_many(self._keys.reading)
            for item in batch:
                if isinstance(item, Rejected):
                    self._reject(item)
                else:
                    await self._admit(item)
            self._keys.reading = set()
            await asyncio.sleep(0)  # an empty batch (nothing arrived yet): let workers run

    async def _admit(self, item: InputRecord) -> None:
        await self._space.acquire()
        seq = self._keys.admit(item.key, item.record, item.where)
        self.source.admitted(item)
        self._enqueue(item.key, seq, item.record)
        await asyncio.sleep(0)  # let workers run between reads

    def _reject(self, item: Rejected) -> None:
        """Send a rejected record to the dead-letter sink, or stop reading (the inputs
        before it finish and are checkpointed first)."""
        if self.dead_letter is None:
            raise InputError(item.error)
        self.dead_letter.write([(item.key, item.letter(self.source.describe()))])
        self.source.admitted(item)
        self.stats.dead_letters += 1

    def _enqueue(self, key: str, seq: int, record: Any) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._workers[key] = self._group.create_task(self._work(key, queue))
        queue.append((seq, record))

    async def _work(self, key: str, queue: deque[tuple[int, Any]]) -> None:
        working = self._keys.working_memory(key)
        try:
            while queue and self.stopped_by is None:
                seq, record = queue[0]
                async with self._slots:
                    # Another input failed, or the run was stopped while this waited for
                    # a slot: start no new paid call (the input stays in flight).
                    if self._failed or self.stopped_by is not None:
                        return
                    try:
                        done = await process_input(self.agent, self.store, key, seq, record,
                                                   working, self.settings)
                    except BaseException:
                        self._failed = True
                        raise
                self._keys.complete(key, seq, done.memory_updates)
                queue.popleft()
                self.stats.inputs += 1
                self._outputs.emit([(key, output) for output in done.outputs], done.events)
                self._space.release()
            if not queue:  # every input done: live and committed memory agree
                self._keys.idle(key)
        finally:
            del self._queues[key]
            del self._workers[key]

    async def _ticker(self, started: float) -> None:
        last_checkpoint = last_report = time.monotonic()
        while not self._done.is_set():
            await asyncio.sleep(self._tick)  # a timer: commit and checkpoint periodically
            await self._outputs.commit_group_off_loop()
            now = time.monotonic()
            if now - last_checkpoint >= self._checkpoint_interval:
                self._checkpoint()
                last_checkpoint = now
            if now - last_report >= _REPORT_EVERY:  # whatever the checkpoint interval
                self._report(now - started)
                last_report = now

    def _report(self, elapsed: float) -> None:
        if self._progress:
            fraction = getattr(self.source, "fraction", None)
            self.stats.done_fraction = fraction() if fraction is not None else None
            self._progress(self.stats, elapsed)

    # -- checkpoints ---------------------------------------------------------

    def _checkpoint(self) -> None:
        started = time.perf_counter_ns()
        with self.settings.lock:  # pool threads of ``def`` actions use the store too
            self._checkpoint_locked()
        self.stats.observe("checkpoint_us", (time.perf_counter_ns() - started) // 1000)

    def _checkpoint_locked(self) -> None:
        self._outputs.commit_group()
        sink = self.sink.prepare()  # the outputs so far are durable (not yet committed)
        dead_letter = self.dead_letter.prepare() if self.dead_letter is not None else None
        event_log = self.settings.event_log.prepare()
        self._keys.prune()
        marker = self.store.recovery_marker()
        changed = self._keys.changes()
        counters = self.stats.counters()
        written = self.state_dir.save_checkpoint(Checkpoint(
            job=self.settings.job, marker=marker, store=self.store.url,
            source=self.source.state(), sink=sink, dead_letter=dead_letter,
            event_log=event_log, pending=self._keys.pending_inputs(),
            epoch=self.store.epoch, stats=counters, agent=self._agent_spec,
            summary=self.stats.summary(time.monotonic() - self._started),
            job_stats=add_counters(self._earlier, counters),
        ), changed, fresh=self._fresh)
        self.stats.observe("checkpoint_bytes", written)
        # The checkpoint holds what the sinks need to finish their commits after a crash.
        self.sink.commit()
        if self.dead_letter is not None:
            self.dead_letter.commit()
        self._fresh = False
        self._keys.saved(busy=self._queues)
        self.store.release(marker)

    def _restore(self) -> None:
        checkpoint = self.state_dir.load_checkpoint()
        if checkpoint is None:
            self.store.rebuild(None)
            if self.store.url == self.state_dir.default_store_url:
                self.store.discard_other_runs()  # this state dir's own file: no one else's
            self.source.restore(None)
            self.sink.restore(None)
            if self.dead_letter is not None:
                self.dead_letter.restore(None)
            # The first checkpoint, before any input: from here on a crash resumes,
            # with every call this run records.
            self._fresh = True
            self._checkpoint()
            return
        if checkpoint.job != self.settings.job:
            raise ConfigError(
                f"state dir {self.state_dir.path} belongs to job {checkpoint.job!r}, not "
                f"{self.settings.job!r}: use a new --state for a different agent"
            )
        self._earlier = checkpoint.job_totals()  # this run's counters add to them
        self.source.restore(checkpoint.source)
        self.stats.resumed_at = _resume_point(checkpoint.source, len(checkpoint.pending))
        self._keys.restore(checkpoint)
        # States of inputs completed before the checkpoint are skipped, never held.
        self.store.rebuild(checkpoint.marker, done=self._keys.done_through)
        self.sink.restore(checkpoint.sink)
        if self.dead_letter is not None:
            self.dead_letter.restore(checkpoint.dead_letter)
        self.settings.event_log.restore(checkpoint.event_log)


def _resume_point(source: dict[str, Any], in_flight: int) -> str:
    """Where a resumed run takes its input up again, in words."""
    if "line" in source:
        where = f"line {int(source['line']) + 1} of {Path(str(source['path'])).name}"
    elif "offsets" in source:
        where = "offsets " + offsets_text(source["offsets"])
    else:
        where = "its checkpoint"
    return where + (f", {in_flight} inputs in flight redone first" if in_flight else "")


def agent_spec(cls: type) -> str | None:
    """``/abs/path/file.py:Class`` of an agent class defined in a file (what the
    checkpoint remembers for ``inspect``), else None."""
    try:
        path = inspect.getfile(cls)
    except (TypeError, OSError):
        return None
    if not path.endswith(".py") or "<" in cls.__qualname__:
        return None
    return f"{Path(path).resolve()}:{cls.__qualname__}"
