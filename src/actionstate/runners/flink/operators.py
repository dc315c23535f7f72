"""The Python operators of the job, run in the Python workers: :class:`InputDecoder`
(before ``key_by``: each Kafka message's agent key, or the dead-letter output) and
:class:`AgentFunction`, a ``KeyedProcessFunction`` that runs inputs' chains of actions
through :func:`~actionstate.durable.chain.process_input` on an event loop of its own.

Both live in this one module on purpose: a worker unpickles its operators on several
threads at once, and the first thread to import this module imports everything the
operators need (the Kafka store's modules included) while the others wait for it.
Split up, threads take Python's import locks in opposite orders: with the package's
``__init__`` importing the operators' modules, two of them deadlocked
(``_DeadlockError``: the task failed and restarted); with an operator per module, one
operator's ``open`` could import the Kafka store's package while another thread still
imports its modules the other way up. The package's ``__init__`` imports nothing.

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
"""

from __future__ import annotations

import json
import os
import queue
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag
from pyflink.datastream.functions import KeyedProcessFunction, ProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor
from pyflink.datastream.time_domain import TimeDomain

from actionstate.connectors.base import Rejected
from actionstate.connectors.files import Refused
from actionstate.connectors.kafka.source import decode_message, refusal
from actionstate.durable.chain import ChainSettings, InputResult, process_input
from actionstate.errors import InputError
from actionstate.eventlog import EventLogger, FieldRedaction
from actionstate.loader import load_agent_class
from actionstate.memory import apply_update
from actionstate.records.index import Position
from actionstate.records.untag import untag
from actionstate.records.values import stored_json, wire
from actionstate.retry import RetryPolicy
from actionstate.runners.flink.job import FlinkJob, writer_epoch
from actionstate.runners.flink.runtime import WorkerLoop, job_environment
from actionstate.runners.flink.scanner import KeyScanner
from actionstate.stores import open_store
from actionstate.telemetry import attach, configure_from_env

__all__ = ["DEAD_LETTERS", "END_OF_INPUT", "AgentFunction", "InputDecoder"]

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


END_OF_INPUT = 2**63 - 2
"""The event-time timer every key with queued inputs holds: it fires only at the
watermark a bounded input sends when it ends (processing-time timers are dropped
then), and drains what is in flight."""

_TICK_MS = 10
"""How often a worker looks for finished inputs while some run and no element comes."""

_WAKE_MS = 1000
"""The per-key timer that starts a key's queued inputs after a restore."""


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
        job_environment(job.environment)
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
        self.engine = WorkerLoop(self.store, settings, job.concurrency)
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
