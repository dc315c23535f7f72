"""The Flink runner: the same agent on Apache Flink (PyFlink), extra ``flink``.

The job: a Kafka topic (Flink's Kafka connector, read committed) -> a Python map
that takes each record's agent key -> ``key_by`` -> :class:`AgentFunction`, a
``KeyedProcessFunction`` that runs inputs' chains of actions through
:func:`~actionstate.durable.chain.process_input` -> Flink's Kafka sink, exactly
once (a transaction per Flink checkpoint), each output keyed by the agent key.

What Flink keeps and what the store keeps:

* **Flink's keyed state** (in its checkpoints) holds, per agent key, the inputs
  that arrived and are not done (``queued``, by seq), the next seq to finish, the
  short-term memory as of the key's last finished input, and ``since``: a lower
  bound of the store offset of any record its unfinished inputs wrote or will write.
  An input is taken off the queue, its memory writes applied and its outputs sent
  in one callback, so a checkpoint holds an input either done (its outputs in the
  checkpoint's transaction) or queued.
* **Several keys in flight per subtask.** ``process_element`` queues the input and
  starts it on the worker's event loop (a thread of its own; ``def`` actions on a
  pool) when its key has nothing running; up to ``concurrency`` keys run at once,
  and a full worker blocks (back-pressure). A finished input is taken in the next
  callback of any key: PyFlink's state backend, which timers follow, is switched
  to the finished input's key for that. A 10 ms timer keeps callbacks coming while
  inputs run; a 1 s timer per key with queued inputs starts them after a restore;
  an event-time timer at the end of time drains everything when the input ends
  (a bounded one, or a stop with drain; processing-time timers do not fire then).
* **The action state store** (Kafka), shared by every subtask, holds the
  recorded calls. Every subtask writes into one namespace of the job (no claim:
  subtasks write side by side).
* **After a restore** the queued inputs start again and the source replays the
  inputs after the checkpoint. A key's first input in a worker reads the key's
  records from its ``since`` up to the store's end when the worker opened
  (:class:`KeyScanner`), so the calls a lost attempt recorded are replayed, not
  paid again. ``since`` moves up only when no record of an unfinished input of the
  key lies below it (two losses in a row keep them). The positions move with the
  keys: a rescaled job reads only what its keys need.

* **Zombies**: each worker writes under its own epoch (:func:`writer_epoch`); a
  key's records are taken only while their epoch does not drop.

* **--until-end on a cluster** runs unbounded and the client drains it at the
  input's end (:func:`submit`): a bounded source that ended leaves a job restored
  after it no callback for the inputs still queued.

Old records go by the store's retention (the workers delete nothing); records that
cannot be inputs go to ``--dead-letter`` (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyflink
from pyflink.common import Configuration, Row, Types
from pyflink.datastream import CheckpointingMode, OutputTag, StreamExecutionEnvironment
from pyflink.datastream.functions import KeyedProcessFunction, ProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor
from pyflink.datastream.time_domain import TimeDomain
from pyflink.table import StreamTableEnvironment

from actionstate.connectors.base import Rejected
from actionstate.connectors.files import Refused
from actionstate.connectors.kafka.source import decode_message, refusal
from actionstate.durable.chain import ChainSettings, InputResult, process_input
from actionstate.durable.threads import ActionThreads, SyncCommitter
from actionstate.errors import ConfigError, InputError
from actionstate.eventlog import EventLogger, FieldRedaction
from actionstate.loader import load_agent_class
from actionstate.memory import apply_update
from actionstate.records.index import Position
from actionstate.records.state import DropRecord, FenceRecord, Record
from actionstate.records.untag import untag
from actionstate.records.values import stored_json, wire
from actionstate.retry import RetryPolicy
from actionstate.stores import open_store
from actionstate.stores.base import ActionStateStore
from actionstate.stores.options import redact_url
from actionstate.telemetry import attach, configure_from_env

__all__ = ["AgentFunction", "FlinkJob", "InputDecoder", "KeyScanner", "build",
           "default_connector_jar", "submit"]

CONNECTOR = "flink-sql-connector-kafka-5.0.0-2.2.jar"
"""Flink's Kafka connector (none is released for 2.3 yet; this one works on 2.3.0)."""


def default_connector_jar() -> str:
    """Where ``scripts/services/flink`` keeps the connector jar (``$ACTIONSTATE_CACHE``,
    default ``~/.cache/actionstate``), or ``ACTIONSTATE_FLINK_CONNECTOR_JAR``."""
    given = os.environ.get("ACTIONSTATE_FLINK_CONNECTOR_JAR")
    if given:
        return given
    cache = Path(os.environ.get("ACTIONSTATE_CACHE")
                 or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                 / "actionstate")
    found = sorted((cache / "flink").glob(f"*/lib/{CONNECTOR}"))
    return str(found[-1]) if found else str(cache / "flink" / "lib" / CONNECTOR)


@dataclass(frozen=True)
class FlinkJob:
    """What ``actionstate flink run`` was asked for (plain values: it travels to the
    Python workers pickled)."""

    agent: str
    input: str
    key: str
    output: str
    store: str
    job: str
    store_options: dict[str, str] = field(default_factory=dict)
    durability: str = "sync"
    divergence: str = "reexecute"
    max_retries: int = 3
    retry_wait: float = 1.0
    parallelism: int = 1
    checkpoint_interval: float = 2.0
    concurrency: int = 64
    """Inputs in flight per subtask (distinct keys; a key's inputs run in order)."""
    until_end: bool = False
    dead_letter: str | None = None
    """A Kafka topic URL for the input records that cannot be inputs (else they fail
    the job)."""
    jobmanager: str | None = None
    connector_jar: str = ""
    savepoint: str | None = None
    """Start from this savepoint (or retained checkpoint) of an earlier run of the job."""
    submitted: int = 0
    """When the job was submitted (ms since the epoch): with the task's attempt number,
    the epoch of each of its writers (see :func:`writer_epoch`)."""
    start_bound: dict[str, int] = field(default_factory=dict)
    """The store's end offsets when the job was submitted (partition as text): no
    record of this submission lies before them."""
    event_log: str | None = None
    """A directory on each TaskManager's file system: every worker appends its event log
    to ``<namespace>-<subtask>-<attempt>.jsonl`` there."""
    event_log_level: str = "standard"
    redact: list[str] = field(default_factory=list)
    """``--redact`` specs for the event log (:meth:`FieldRedaction.parse`)."""
    environment: dict[str, str] = field(default_factory=dict)
    """Set in each Python worker's environment before the agent loads (they travel in
    the job graph: give secrets through the TaskManagers' own environment)."""

    @property
    def consumer_group(self) -> str:
        """The Kafka consumer group the source commits its offsets to at each checkpoint
        (positions live in Flink's state; this shows progress): one per submission, so
        that an earlier run's offsets never read as this one's."""
        return f"{self.namespace}-{self.submitted}"

    @property
    def namespace(self) -> str:
        """The store namespace every subtask of every attempt of this job writes under."""
        return "flink-" + hashlib.sha256(self.job.encode()).hexdigest()[:24]


def _topic(url: str, role: str) -> tuple[str, str]:
    split = urlsplit(url)
    topic = split.path.lstrip("/")
    if split.scheme != "kafka" or not split.netloc or not topic or split.query:
        raise ConfigError(f"{role} {redact_url(url)!r}: the Flink runner reads and writes "
                          "Kafka topics: give kafka://host:port/topic")
    return split.netloc, topic


def writer_epoch(job: FlinkJob, attempt: int) -> int:
    """The epoch a worker stamps on its records: later submissions, and later attempts
    of one, write under higher epochs. A key's records are taken in log order only while
    their epoch does not drop (:meth:`KeyScanner.claim`): once a newer worker wrote for
    a key, what an older one (a zombie of a lost TaskManager) writes later is ignored."""
    return job.submitted * 10_000 + min(attempt, 9_999)


class KeyScanner:
    """Brings a key's recorded states into a worker's index on its first input.

    ``stop`` is the store's end per partition when the worker opened: records after
    it are this worker's own (applied as they are put). A key's records are read from
    its ``since`` (restored from the checkpoint). A key the checkpoint does not know
    (first seen after it) starts at the highest ``since`` restored so far in its
    partition, else at ``start``, the store's end when the job was submitted: each is
    a bound taken before the checkpoint, so no record written after it lies below.
    Each partition is read once from the lowest bound asked so far (earlier ranges
    when a key needs them); the records of keys not yet asked for wait, by key, in
    log order.
    """

    def __init__(self, store: ActionStateStore, stop: dict[int, int],
                 start: dict[int, int]) -> None:
        self.store, self.stop, self.start = store, stop, start
        self._read_from: dict[int, int] = {}
        self._restored: dict[int, int] = {}
        self._waiting: dict[str, list[tuple[Position, Record]]] = {}
        self._claimed: set[str] = set()

    def claim(self, key: str, since: Position | None) -> Position | None:
        """Apply the records of ``key`` from its ``since`` on (once per key and worker;
        ``since`` None: the checkpoint has no state of the key). Returns the bound it
        read from, None when the key was claimed before."""
        if key in self._claimed:
            return None
        self._claimed.add(key)
        if since is None:
            partition = self.store.key_bound(key)[0]
            offset = self._restored.get(partition, self.start.get(partition, 0))
        else:
            partition, offset = since
            self._restored[partition] = max(offset, self._restored.get(partition, 0))
        stop = min(self._read_from.get(partition, self.stop.get(partition, 0)),
                   self.stop.get(partition, 0))
        if offset < stop:
            self._read(key, partition, offset, stop)
            self._read_from[partition] = offset
        top = 0  # the newest writer of the key so far: an older one's later records are a
        for position, record in self._waiting.pop(key, []):  # zombie's, ignored
            if record.epoch >= top:
                top = record.epoch
                self.store.index.apply(record, position, record.epoch)
        return partition, offset

    def _read(self, key: str, partition: int, start: int, stop: int) -> None:
        earlier: dict[str, list[tuple[Position, Record]]] = {}
        for position, record in self.store.records({partition: start}, {partition: stop}):
            if isinstance(record, FenceRecord):
                continue
            owner = record.key if isinstance(record, DropRecord) else record.key.key
            if owner != key and owner in self._claimed:
                continue  # before that key's ``since``: inputs it finished long ago
            earlier.setdefault(owner, []).append((position, record))
        for owner, found in earlier.items():
            self._waiting[owner] = found + self._waiting.get(owner, [])


END_OF_INPUT = 2**63 - 2
"""The event-time timer every key with queued inputs holds: it fires only at the
watermark a bounded input sends when it ends (processing-time timers are dropped
then), and drains what is in flight."""

_TICK_MS = 10
"""How often a worker looks for finished inputs while some run and no element comes."""

_WAKE_MS = 1000
"""The per-key timer that starts a key's queued inputs after a restore."""


class _Loop:
    """A worker's event loop on a thread of its own: the inputs in flight run there
    (``def`` actions on a pool as large as the inputs in flight) while the operator's
    thread takes elements and timers."""

    def __init__(self, store: ActionStateStore, settings: ChainSettings,
                 concurrency: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="actionstate-flink-loop")
        self.thread.start()
        settings.threads = ActionThreads(concurrency)
        if store.durability == "sync" and not store.url.startswith("memory://"):
            settings.committer = self.call(self._committer(store)).result()
        self.settings = settings

    async def _committer(self, store: ActionStateStore) -> SyncCommitter:
        return SyncCommitter(store.flush_begin, asyncio.get_running_loop())

    def _stop(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.stop()

    def call(self, coroutine: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        settings = self.settings
        settings.lock.close()  # an input still running stops at its next durable step
        if settings.committer is not None:
            self.loop.call_soon_threadsafe(settings.committer.close)
        self.loop.call_soon_threadsafe(self._stop)
        self.thread.join(timeout=5)
        if settings.threads is not None:
            settings.threads.shutdown(wait=False)  # an abandoned call may hang
        if not self.thread.is_alive():
            self.loop.close()


_SET_BY_JOB: dict[str, str | None] = {}
"""What the last job's ``--env`` changed in this Python worker: name -> the value before."""


def _job_environment(values: dict[str, str]) -> None:
    """Set a job's ``--env`` values in this worker, after undoing the last job's (a worker
    may serve several jobs: one job's keys or URLs must not reach the next)."""
    for name, before in _SET_BY_JOB.items():
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
    _SET_BY_JOB.clear()
    for name, value in values.items():
        _SET_BY_JOB[name] = os.environ.get(name)
        os.environ[name] = value


class AgentFunction(KeyedProcessFunction):  # type: ignore[misc]  # pyflink is untyped
    """Runs each input's chain of actions, up to ``job.concurrency`` keys at once per
    subtask; per key: seq, memory, queued inputs and ``since`` in Flink's keyed state
    (see the module doc)."""

    def __init__(self, job: FlinkJob) -> None:
        self.job = job
        self.meters: Any = None
        self.detach_meters: Callable[[], None] | None = None

    def open(self, runtime_context: RuntimeContext) -> None:
        job = self.job
        _job_environment(job.environment)
        spec = job.agent
        target, _, name = spec.rpartition(":")
        if target.endswith(".py"):
            # A Python worker may outlive a job and serve the next one: the agent's
            # module is loaded again, so that what it reads from the environment at
            # import is this job's.
            sys.modules.pop(Path(target).stem, None)
            if not Path(target).is_file():
                spec = f"{Path(target).stem}:{name}"  # shipped with add_python_file
        self.agent = load_agent_class(spec)()
        self.store = open_store(job.store, durability=job.durability,  # type: ignore[arg-type]
                                **job.store_options)
        self.store.attach(job.namespace)
        self.store.epoch = writer_epoch(job, runtime_context.get_attempt_number())
        self.scanner = KeyScanner(self.store, self.store.end_offsets(),
                                  {int(p): o for p, o in job.start_bound.items()})
        settings = ChainSettings(
            job=job.job, policy=job.divergence,  # type: ignore[arg-type]
            retry=RetryPolicy(max_attempts=job.max_retries + 1,
                              initial_interval=job.retry_wait))
        if job.event_log:
            subtask = runtime_context.get_index_of_this_subtask()
            name = f"{job.namespace}-{subtask}-{runtime_context.get_attempt_number()}.jsonl"
            settings.event_log = EventLogger(
                Path(job.event_log) / name, job.event_log_level,  # type: ignore[arg-type]
                FieldRedaction.parse(job.redact) if job.redact else None)
        self.lock = settings.lock
        self.stats = settings.stats
        # Metrics (docs/metrics.md): each worker exports its own, as service.instance.id
        # <namespace>-<subtask>-<attempt>, when the job's --env configures OTEL_*.
        subtask = runtime_context.get_index_of_this_subtask()
        self.meters = configure_from_env(
            os.environ, f"{job.namespace}-{subtask}-{runtime_context.get_attempt_number()}")
        self.detach_meters = attach(settings.stats, self.meters) if self.meters else None
        self.engine = _Loop(self.store, settings, job.concurrency)
        # Finished inputs are taken in whatever callback comes next, under their own
        # key: the state backend (PyFlink's, whose timers follow it) is switched to it.
        self.backend = runtime_context._keyed_state_backend
        self.running: dict[str, Future[InputResult]] = {}
        self.finished: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.tick_at: int | None = None
        self.wake_at: dict[str, int] = {}
        self.ending: set[str] = set()
        self.timers: Any = None
        self.seq = runtime_context.get_state(ValueStateDescriptor("seq", Types.LONG()))
        self.next_in = runtime_context.get_state(ValueStateDescriptor("next_in", Types.LONG()))
        self.queued = runtime_context.get_map_state(
            MapStateDescriptor("queued", Types.LONG(), Types.STRING()))
        self.memory = runtime_context.get_state(ValueStateDescriptor("memory", Types.STRING()))
        self.since = runtime_context.get_state(ValueStateDescriptor("since", Types.STRING()))

    def process_element(self, value: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Row]:
        key: str = ctx.get_current_key()
        self.timers = ctx.timer_service()  # follows the state backend's current key
        arrived = self.next_in.value()
        if arrived is None:
            arrived = self.seq.value() or 0
        self.queued.put(arrived, value[1])
        self.next_in.update(arrived + 1)
        self.stats.inputs += 1
        yield from self._take_finished()
        if key not in self.running:
            while len(self.running) >= self.job.concurrency:  # every slot busy: wait
                yield from self._take(self.finished.get(), key)
            self._start(key)
        self._tick()

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext
                 ) -> Iterator[Row]:
        key: str = ctx.get_current_key()
        self.timers = ctx.timer_service()
        if ctx.time_domain() == TimeDomain.EVENT_TIME:
            # The input ended: nothing fires after this, so everything in flight
            # finishes here (inputs of other keys included, each under its key).
            if key not in self.running:
                self._start(key)
            while self.running:
                yield from self._take(self.finished.get(), key)
            return
        if timestamp == self.tick_at:
            self.tick_at = None
        elif timestamp % 2:  # a wake (odd; ticks are even): restored inputs start
            self.wake_at.pop(key, None)
            if self.queued.contains(self.seq.value() or 0):
                if key not in self.running:
                    self._start(key)
                self._wake(key)
        yield from self._take_finished()
        self._tick()

    def _tick(self) -> None:
        """Keep one timer pending while inputs run, to take them when they finish."""
        if self.running and self.tick_at is None:
            at = self.timers.current_processing_time() + _TICK_MS
            self.tick_at = at - at % 2
            self.timers.register_processing_time_timer(self.tick_at)

    def _wake(self, key: str) -> None:
        """Keep a timer pending while the key has queued inputs (the state backend is at
        ``key``): a checkpoint holds it, and after a restore it starts them."""
        now = self.timers.current_processing_time()
        if self.wake_at.get(key, 0) <= now:
            self.wake_at[key] = (now + _WAKE_MS) | 1
            self.timers.register_processing_time_timer(self.wake_at[key])

    def _take_finished(self) -> Iterator[Row]:
        current = self.backend.get_current_key()[0]
        while True:
            try:
                key = self.finished.get_nowait()
            except queue.Empty:
                return
            yield from self._take(key, current)

    def _take(self, key: str, current: str) -> Iterator[Row]:
        """The finished input of ``key``: its state moves on, its outputs leave, and its
        next queued input starts; then the state backend is back at ``current``."""
        if key != current:
            self.backend.set_current_key(Row(key))
        try:
            done = self.running.pop(key).result()  # its failure fails the job
            seq = self.seq.value() or 0
            text = self.memory.value()
            committed: dict[str, Any] = json.loads(text, object_hook=untag) if text else {}
            for update in done.memory_updates:
                apply_update(committed, update.path, update.value)
            self.memory.update(stored_json(committed, "short-term memory of key ", repr(key)))
            self.seq.update(seq + 1)
            self.queued.remove(seq)
            with self.lock:
                self.store.prune(key, seq)
            for output in done.outputs:
                yield Row(key, json.dumps(wire(output, "an output"), ensure_ascii=False))
            self.stats.outputs += len(done.outputs)
            self.engine.settings.event_log.write(done.events)
            self._start(key)
        finally:
            if key != current:
                self.backend.set_current_key(Row(current))

    def _start(self, key: str) -> None:
        """Start the key's next queued input, if any (the state backend is at ``key``)."""
        seq = self.seq.value() or 0
        text = self.queued.get(seq)
        if text is None:
            return
        since = self.since.value()
        bound: Position | None = tuple(json.loads(since)) if since else None
        with self.lock:
            read_from = self.scanner.claim(key, bound)
            if bound is None:
                bound = read_from
            # ``since`` moves up only when no record of this or a later input of the
            # key lies below: records a lost attempt wrote stay above it until the
            # inputs they belong to are done.
            if bound is None or not self.store.index.has_later(key, seq - 1):
                bound = self.store.key_bound(key)
        self.since.update(json.dumps(list(bound)))
        text_memory = self.memory.value()
        memory = json.loads(text_memory, object_hook=untag) if text_memory else {}
        future = self.engine.call(self._run(key, seq, json.loads(text), memory))
        self.running[key] = future
        future.add_done_callback(lambda _: self.finished.put(key))
        self._wake(key)
        if key not in self.ending:
            self.ending.add(key)
            self.timers.register_event_time_timer(END_OF_INPUT)

    async def _run(self, key: str, seq: int, record: Any, memory: dict[str, Any]
                   ) -> InputResult:
        done = await process_input(self.agent, self.store, key, seq, record, memory,
                                   self.engine.settings)
        if self.store.durability == "group":
            with self.lock:
                self.store.flush()  # outputs leave only once their records are durable
        return done

    def close(self) -> None:
        try:
            self.engine.close()
        finally:
            self.engine.settings.event_log.close()
            self.store.close()
            if self.detach_meters is not None:
                self.detach_meters()
                self.meters.shutdown()  # exports the worker's final values


DEAD_LETTERS = OutputTag("actionstate-dead-letters", Types.ROW([Types.STRING(), Types.STRING()]))
"""Where :class:`InputDecoder` puts the records that cannot be inputs."""


class InputDecoder(ProcessFunction):  # type: ignore[misc]  # pyflink is untyped
    """Each Kafka message's agent key and record, under the rules every source shares
    (:func:`~actionstate.connectors.kafka.source.decode_message`: UTF-8 JSON object,
    the key field or a UTF-8 message key). A message that cannot be an input goes to
    the dead-letter output (as ``actionstate run --dead-letter`` writes it), or, without
    one, fails the job with the error naming the message and the fixes."""

    def __init__(self, key_field: str, topic: str, source: str, dead_letters: bool) -> None:
        self.key_field, self.topic, self.source = key_field, topic, source
        self.dead_letters = dead_letters

    def process_element(self, row: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        raw_key, raw, partition, offset = row[0], row[1], row[2], row[3]
        raw_key = bytes(raw_key) if raw_key is not None else None
        raw = bytes(raw) if raw is not None else None
        try:
            key, _ = decode_message(raw_key, raw, self.key_field)
        except Refused as refused:
            error = refusal(self.topic, partition, offset, refused)
            if not self.dead_letters:
                raise InputError(error) from None
            rejected = Rejected(error, raw or b"", raw_key, offset)
            yield DEAD_LETTERS, Row(rejected.key, json.dumps(rejected.letter(self.source),
                                                             ensure_ascii=False))
            return
        assert raw is not None
        yield Row(key, raw.decode("utf-8"))


def build(env: StreamExecutionEnvironment, job: FlinkJob) -> Any:
    """Add the job's pipeline to ``env``; returns the table insert to execute."""
    in_servers, in_topic = _topic(job.input, "--input")
    out_servers, out_topic = _topic(job.output, "--output")
    letters = _topic(job.dead_letter, "--dead-letter") if job.dead_letter else None
    t_env = StreamTableEnvironment.create(env)
    for name, value in _settings(job).items():  # the table planner submits: tell it too
        t_env.get_config().set(name, value)
    # On a cluster, --until-end is an unbounded job the client drains (:func:`submit`):
    # a bounded source that ended before a checkpoint leaves a restored job no
    # callback to run the inputs that checkpoint holds queued.
    bounded = ("'scan.bounded.mode'='latest-offset',"
               if job.until_end and not job.jobmanager else "")
    t_env.execute_sql(f"""
        CREATE TABLE actionstate_input (
            k BYTES, v BYTES,
            `partition` INT METADATA VIRTUAL, `offset` BIGINT METADATA VIRTUAL
        ) WITH (
            'connector'='kafka', 'topic'='{in_topic}',
            'properties.bootstrap.servers'='{in_servers}',
            'properties.isolation.level'='read_committed',
            'properties.group.id'='{job.consumer_group}',
            'scan.startup.mode'='earliest-offset', {bounded}
            'key.format'='raw', 'key.fields'='k',
            'value.format'='raw', 'value.fields-include'='EXCEPT_KEY'
        )""")
    t_env.execute_sql(_sink_table("actionstate_output", out_servers, out_topic, job.namespace))
    if letters is not None:
        t_env.execute_sql(_sink_table("actionstate_dead_letters", *letters,
                                      f"{job.namespace}-dead-letters"))
    pair = Types.ROW([Types.STRING(), Types.STRING()])
    inputs = t_env.to_data_stream(t_env.from_path("actionstate_input"))
    decoder = InputDecoder(job.key, in_topic, f"input topic kafka://{in_servers}/{in_topic}",
                           letters is not None)
    decoded = inputs.process(decoder, output_type=pair).uid("actionstate-keys")
    outputs = (decoded.key_by(lambda row: row[0], key_type=Types.STRING())
               .process(AgentFunction(job), output_type=pair)
               .uid("actionstate-agent").name("actionstate agent"))
    statements = t_env.create_statement_set()
    statements.add_insert("actionstate_output", t_env.from_data_stream(outputs))
    if letters is not None:
        statements.add_insert("actionstate_dead_letters",
                              t_env.from_data_stream(decoded.get_side_output(DEAD_LETTERS)))
    return statements.execute()


def _sink_table(name: str, servers: str, topic: str, transactions: str) -> str:
    """A Kafka topic written exactly once: a transaction per Flink checkpoint."""
    return f"""
        CREATE TABLE {name} (k STRING, v STRING) WITH (
            'connector'='kafka', 'topic'='{topic}',
            'properties.bootstrap.servers'='{servers}',
            'key.format'='raw', 'key.fields'='k',
            'value.format'='raw', 'value.fields-include'='EXCEPT_KEY',
            'sink.delivery-guarantee'='exactly-once',
            'sink.transactional-id-prefix'='{transactions}',
            'properties.transaction.timeout.ms'='60000'
        )"""


def _settings(job: FlinkJob) -> dict[str, str]:
    """Flink settings of the job: where to submit it, Python bundles."""
    settings = {
        # One element (or timer) per bundle. PyFlink applies the timers a bundle
        # registers after the snapshot when a checkpoint barrier closes that bundle:
        # with 1000-element bundles, the wake timers registered in the last one were
        # missing from the checkpoint and a restore left those keys' queued inputs
        # unstarted (tests/flink/test_pyflink_timers.py shows it: 20 of 275 timers
        # lost with 1000, none with 1). A bundle is a round trip to the Python worker:
        # this caps a subtask at about 40 elements/s.
        "python.fn-execution.bundle.size": "1",
    }
    if job.savepoint:
        settings["execution.savepoint.path"] = job.savepoint
    if job.jobmanager:
        host, _, port = job.jobmanager.rpartition(":")
        settings.update({"execution.target": "remote", "rest.address": host or "127.0.0.1",
                         "rest.port": port or "8081"})
    return settings


def environment(job: FlinkJob) -> StreamExecutionEnvironment:
    """The execution environment: the JobManager at ``job.jobmanager`` (host:port of its
    REST API), else a local mini-cluster in this process."""
    config = Configuration()
    for name, value in _settings(job).items():
        config.set_string(name, value)
    if job.jobmanager:
        # Python workers run in the TaskManagers, not in this process: PyFlink would
        # otherwise serve them from here ("loopback"), as for a local mini-cluster.
        os.environ["_python_worker_execution_mode"] = "process"
    env = StreamExecutionEnvironment.get_execution_environment(config)
    if not job.connector_jar or not Path(job.connector_jar).is_file():
        raise ConfigError(
            f"the Flink Kafka connector jar {job.connector_jar or '(none)'} is missing: "
            "scripts/services/flink start fetches it (or give --connector-jar)")
    # The Python operators' classes: `flink run -py` ships this jar with a job, and a
    # job submitted from Python must do the same.
    python_jars = sorted((Path(pyflink.__file__).parent / "opt").glob("flink-python-*.jar"))
    env.add_jars(Path(job.connector_jar).resolve().as_uri(),
                 *(jar.resolve().as_uri() for jar in python_jars))
    agent_file = job.agent.rpartition(":")[0]
    if agent_file.endswith(".py"):
        env.add_python_file(str(Path(agent_file).resolve()))
    env.set_parallelism(job.parallelism)
    env.enable_checkpointing(int(job.checkpoint_interval * 1000), CheckpointingMode.EXACTLY_ONCE)
    return env


def submit(job: FlinkJob, *, detach: bool) -> str:
    """Build and start the job; returns its id. Without ``detach`` it waits until the
    job ends. ``until_end`` on a cluster: the input's end offsets are taken now; once
    the source's offsets committed at a checkpoint reach them, every input up to the
    end is done or queued in that checkpoint, and the job is stopped with a drain (the
    end-of-time watermark: every queued input finishes, then a final savepoint). A lost
    TaskManager before or during the drain restores the job, which goes on; the stop
    is asked again."""
    if job.until_end and job.jobmanager and detach:
        raise ConfigError("--until-end on a cluster: the client stops the job with a drain "
                          "once the input is read to its end, so it cannot --detach (drop "
                          "one of them)")
    end = _input_end(job) if job.until_end and job.jobmanager else None
    result = build(environment(job), job)
    job_id = str(result.get_job_client().get_job_id())
    if end is not None:
        _drain_at_end(job, job_id, end)
    elif not detach:
        result.wait()
    return job_id


def _input_end(job: FlinkJob) -> dict[int, int]:
    """The input topic's end offsets now (read committed: its last stable offsets)."""
    from confluent_kafka import IsolationLevel, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

    servers, topic = _topic(job.input, "--input")
    admin = AdminClient({"bootstrap.servers": servers})
    found = admin.list_topics(topic, timeout=30).topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise ConfigError(f"--input {job.input}: no such topic on {servers}")
    request = {TopicPartition(topic, p): OffsetSpec.latest()  # type: ignore[no-untyped-call]
               for p in found.partitions}
    offsets = admin.list_offsets(request, isolation_level=IsolationLevel.READ_COMMITTED,
                                 request_timeout=30)
    stable = {tp.partition: future.result().offset for tp, future in offsets.items()}
    return _after_last_records(servers, topic, stable)


def _after_last_records(servers: str, topic: str, stable: dict[int, int]) -> dict[int, int]:
    """Per partition, the offset after its last committed record below ``stable`` (the
    last stable offsets): what the source's committed offset reaches once it read
    everything. A transactional producer's commit marker sits after the last record, so
    the stable offset is one more than that, and the source never reports it."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer({"bootstrap.servers": servers, "group.id": f"actionstate-end-{topic}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": "read_committed"})
    ends: dict[int, int] = {}
    try:
        for partition, offset in stable.items():
            window, last = 64, -1
            while offset > 0 and last < 0:
                start = max(0, offset - window)
                consumer.assign([TopicPartition(topic, partition, start)])
                deadline = time.monotonic() + 30
                while True:
                    message = consumer.poll(1.0)
                    if message is None:
                        if time.monotonic() > deadline:
                            raise ConfigError(f"--input {topic}: partition {partition} could "
                                              f"not be read up to offset {offset} in 30 s")
                        continue
                    error = message.error()
                    if error is not None and error.code() == KafkaError._PARTITION_EOF:
                        break
                    if error is None and (message.offset() or 0) < offset:
                        last = max(last, message.offset() or 0)
                    if (message.offset() or 0) >= offset - 1:
                        break
                if start == 0:
                    break
                window *= 8
            ends[partition] = last + 1 if last >= 0 else 0
    finally:
        consumer.close()
    return ends


def _drain_at_end(job: FlinkJob, job_id: str, end: dict[int, int]) -> None:
    """Wait until the source's committed offsets reach ``end``, then stop the job with a
    drain, asking again after a failover, until it is FINISHED."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    servers, topic = _topic(job.input, "--input")
    admin = AdminClient({"bootstrap.servers": servers})
    group = ConsumerGroupTopicPartitions(
        job.consumer_group, [TopicPartition(topic, p) for p in sorted(end)])
    while True:
        state = _rest(job, f"/jobs/{job_id}")["state"]
        if state in ("FAILED", "CANCELED", "FINISHED"):
            if state == "FINISHED":
                return
            raise ConfigError(f"job {job_id} is {state} before its input's end: see the "
                              f"JobManager's exceptions (/jobs/{job_id}/exceptions)")
        committed = admin.list_consumer_group_offsets([group])[job.consumer_group].result()
        done = {tp.partition: tp.offset for tp in committed.topic_partitions}
        if state == "RUNNING" and all(done.get(p, -1) >= offset for p, offset in end.items()
                                      if offset > 0):
            trigger = _rest(job, f"/jobs/{job_id}/stop", {"drain": True})
            while True:
                status = _rest(job, f"/jobs/{job_id}/savepoints/{trigger['request-id']}")
                if status["status"]["id"] == "COMPLETED":
                    break
                time.sleep(0.2)  # the REST API's poll interval
            operation = status.get("operation", {})
            if "location" in operation:  # the job finishes with its final savepoint
                while _rest(job, f"/jobs/{job_id}")["state"] not in (
                        "FINISHED", "FAILED", "CANCELED"):
                    time.sleep(0.2)  # the REST API's poll interval
                continue  # FINISHED returns; a failure is reported above
            cause = json.dumps(operation.get("failure-cause", ""))[:2000]
            if "directory" in cause.lower():  # not a failover: it would fail again
                raise ConfigError(
                    f"stopping job {job_id} with a drain at its input's end failed: give "
                    f"the cluster execution.checkpointing.savepoint-dir ({cause[:300]})")
        time.sleep(0.5)  # the committed offsets move at each checkpoint


def _rest(job: FlinkJob, path: str, body: dict[str, Any] | None = None) -> Any:
    """The JobManager's REST API: GET ``path``, or POST ``body`` to it."""
    import urllib.request

    request = urllib.request.Request(
        f"http://{job.jobmanager}{path}", method="GET" if body is None else "POST",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")
