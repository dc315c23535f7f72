"""The Flink runner: the same agent on Apache Flink (PyFlink), extra ``flink``.

The job: a Kafka topic (Flink's Kafka connector, read committed) -> a Python map
that takes each record's agent key -> ``key_by`` -> :class:`AgentFunction`, a
``KeyedProcessFunction`` that runs the input's chain of actions through
:func:`~actionstate.durable.chain.process_input` -> Flink's Kafka sink, exactly
once (a transaction per Flink checkpoint), each output keyed by the agent key.

What Flink keeps and what the store keeps:

* **Flink's keyed state** (in its checkpoints) holds, per agent key, the next seq,
  the short-term memory as of the key's last completed input, and ``since``: a
  lower bound of the store offset of any record the key's later inputs write
  (the key's partition's end, taken as an input starts, unless records of this or
  a later input of the key lie below it: see ``process_element``). A Python operator
  finishes its bundle before a checkpoint barrier, and an input runs to its end
  inside ``process_element``: a checkpoint never holds half an input.
* **The action state store** (Kafka), shared by every subtask, holds the
  recorded calls. Every subtask writes into one namespace of the job (no claim:
  subtasks write side by side).
* **After a restore** the source replays the inputs after the checkpoint. The
  first input of a key in a worker reads the key's records from its ``since`` up
  to the store's end when the worker opened (:class:`KeyScanner`), so the calls
  the lost attempt recorded for that key are replayed, not paid again. The
  positions move with the keys: a rescaled job reads only what its keys need.

Not yet: more than one input in flight per subtask; zombie fencing per writer
(a lost TaskManager's Python workers are stopped by the service script);
cleanup of old records in the store; Fluss as the store (pyfluss 1.0.0 and
apache-flink 2.3.0 cannot share an environment).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyflink
from pyflink.common import Configuration, Row, Types
from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor
from pyflink.table import StreamTableEnvironment

from actionstate.connectors.files import Refused, decode_object, record_key
from actionstate.durable.chain import ChainSettings, process_input
from actionstate.errors import ConfigError, InputError
from actionstate.loader import load_agent_class
from actionstate.memory import apply_update
from actionstate.records.canonical import stored_json, untag, wire
from actionstate.records.index import Position
from actionstate.records.state import DropRecord, FenceRecord, Record
from actionstate.retry import RetryPolicy
from actionstate.stores import open_store
from actionstate.stores.base import ActionStateStore

__all__ = ["AgentFunction", "FlinkJob", "KeyScanner", "build", "default_connector_jar",
           "submit"]

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
    until_end: bool = False
    jobmanager: str | None = None
    connector_jar: str = ""
    savepoint: str | None = None
    """Start from this savepoint (or retained checkpoint) of an earlier run of the job."""
    start_bound: dict[str, int] = field(default_factory=dict)
    """The store's end offsets when the job was submitted (partition as text): no
    record of this submission lies before them."""
    environment: dict[str, str] = field(default_factory=dict)
    """Set in each Python worker's environment before the agent loads (they travel in
    the job graph: give secrets through the TaskManagers' own environment)."""

    @property
    def namespace(self) -> str:
        """The store namespace every subtask of every attempt of this job writes under."""
        return "flink-" + hashlib.sha256(self.job.encode()).hexdigest()[:24]


def _topic(url: str, role: str) -> tuple[str, str]:
    split = urlsplit(url)
    topic = split.path.lstrip("/")
    if split.scheme != "kafka" or not split.netloc or not topic or split.query:
        raise ConfigError(f"{role} {url!r}: the Flink runner reads and writes Kafka topics: "
                          "give kafka://host:port/topic")
    return split.netloc, topic


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
        for position, record in self._waiting.pop(key, []):
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


class AgentFunction(KeyedProcessFunction):  # type: ignore[misc]  # pyflink is untyped
    """Runs each input's chain of actions; per key: seq, memory and ``since`` in
    Flink's keyed state (see the module doc)."""

    def __init__(self, job: FlinkJob) -> None:
        self.job = job

    def open(self, runtime_context: RuntimeContext) -> None:
        job = self.job
        os.environ.update(job.environment)
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
        self.scanner = KeyScanner(self.store, self.store.end_offsets(),
                                  {int(p): o for p, o in job.start_bound.items()})
        self.settings = ChainSettings(
            job=job.job, policy=job.divergence,  # type: ignore[arg-type]
            retry=RetryPolicy(max_attempts=job.max_retries + 1,
                              initial_interval=job.retry_wait))
        self.loop = asyncio.new_event_loop()
        self.seq = runtime_context.get_state(ValueStateDescriptor("seq", Types.LONG()))
        self.memory = runtime_context.get_state(ValueStateDescriptor("memory", Types.STRING()))
        self.since = runtime_context.get_state(ValueStateDescriptor("since", Types.STRING()))

    def process_element(self, value: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Row]:
        key: str = ctx.get_current_key()
        record = json.loads(value[1])
        seq = self.seq.value() or 0
        text = self.memory.value()
        committed: dict[str, Any] = json.loads(text, object_hook=untag) if text else {}
        since = self.since.value()
        restored = json.loads(since) if since else None
        bound: Position | None = (restored[0], restored[1]) if restored else None
        read_from = self.scanner.claim(key, bound)
        if bound is None:
            bound = read_from
        # ``since`` moves up only when no record of this or a later input of the key
        # lies below it: records a lost attempt wrote for inputs after the checkpoint
        # stay above it until those inputs are done here, so that a second loss
        # (restoring a checkpoint this attempt takes before then) still reads them.
        if bound is None or not self.store.index.has_later(key, seq - 1):
            bound = self.store.key_bound(key)
        self.since.update(json.dumps(list(bound)))
        done = self.loop.run_until_complete(process_input(
            self.agent, self.store, key, seq, record, copy.deepcopy(committed), self.settings))
        if self.store.durability == "group":
            self.store.flush()  # outputs leave only once their records are durable
        for update in done.memory_updates:
            apply_update(committed, update.path, update.value)
        self.memory.update(stored_json(committed, "short-term memory of key ", repr(key)))
        self.seq.update(seq + 1)
        self.store.prune(key, seq)
        for output in done.outputs:
            yield Row(key, json.dumps(wire(output, "an output"), ensure_ascii=False))

    def close(self) -> None:
        try:
            self.store.close()
        finally:
            self.loop.close()


def agent_key(key_field: str, raw_key: str | None, value: str, where: str) -> str:
    """The agent key of one input record, under the rules every source shares."""
    try:
        return record_key(decode_object(value.encode()), key_field, raw_key)
    except Refused as refused:
        raise InputError(f"{where}: {refused}") from None


def build(env: StreamExecutionEnvironment, job: FlinkJob) -> Any:
    """Add the job's pipeline to ``env``; returns the table insert to execute."""
    in_servers, in_topic = _topic(job.input, "--input")
    out_servers, out_topic = _topic(job.output, "--output")
    t_env = StreamTableEnvironment.create(env)
    for name, value in _settings(job).items():  # the table planner submits: tell it too
        t_env.get_config().set(name, value)
    bounded = "'scan.bounded.mode'='latest-offset'," if job.until_end else ""
    t_env.execute_sql(f"""
        CREATE TABLE actionstate_input (
            k STRING, v STRING,
            `partition` INT METADATA VIRTUAL, `offset` BIGINT METADATA VIRTUAL
        ) WITH (
            'connector'='kafka', 'topic'='{in_topic}',
            'properties.bootstrap.servers'='{in_servers}',
            'properties.isolation.level'='read_committed',
            'properties.group.id'='{job.namespace}',
            'scan.startup.mode'='earliest-offset', {bounded}
            'key.format'='raw', 'key.fields'='k',
            'value.format'='raw', 'value.fields-include'='EXCEPT_KEY'
        )""")
    t_env.execute_sql(f"""
        CREATE TABLE actionstate_output (k STRING, v STRING) WITH (
            'connector'='kafka', 'topic'='{out_topic}',
            'properties.bootstrap.servers'='{out_servers}',
            'key.format'='raw', 'key.fields'='k',
            'value.format'='raw', 'value.fields-include'='EXCEPT_KEY',
            'sink.delivery-guarantee'='exactly-once',
            'sink.transactional-id-prefix'='{job.namespace}',
            'properties.transaction.timeout.ms'='60000'
        )""")
    key_field, topic = job.key, in_topic

    def keyed(row: Row) -> Row:
        where = f"{topic}[{row[2]}]@{row[3]}"
        return Row(agent_key(key_field, row[0], row[1], where), row[1])

    pair = Types.ROW([Types.STRING(), Types.STRING()])
    inputs = t_env.to_data_stream(t_env.from_path("actionstate_input"))
    outputs = (inputs.map(keyed, output_type=pair).uid("actionstate-keys")
               .key_by(lambda row: row[0], key_type=Types.STRING())
               .process(AgentFunction(job), output_type=pair)
               .uid("actionstate-agent").name("actionstate agent"))
    return t_env.from_data_stream(outputs).execute_insert("actionstate_output")


def _settings(job: FlinkJob) -> dict[str, str]:
    """Flink settings of the job: where to submit it, Python bundles."""
    settings = {
        # A Python bundle finishes before every checkpoint barrier, so a checkpoint (or
        # a stop with savepoint) waits for the inputs in it: with model calls taking
        # seconds, a bundle is one input. The default also waits up to 1 s to fill one.
        "python.fn-execution.bundle.time": "50",
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
    job ends (a bounded input: ``until_end``)."""
    result = build(environment(job), job)
    job_id = str(result.get_job_client().get_job_id())
    if not detach:
        result.wait()
    return job_id
