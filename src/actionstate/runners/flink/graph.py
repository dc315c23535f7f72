"""The client side of the Flink runner: the job graph (:func:`build`: the Kafka tables,
:class:`~actionstate.runners.flink.operators.InputDecoder`, ``key_by``,
:class:`~actionstate.runners.flink.operators.AgentFunction`), the execution environment
and :func:`submit`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyflink
from pyflink.common import Configuration, Types
from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
from pyflink.table import StreamTableEnvironment

from actionstate.errors import ConfigError
from actionstate.runners.flink.drain import drain_at_end, input_end
from actionstate.runners.flink.job import FlinkJob, topic_of
from actionstate.runners.flink.operators import DEAD_LETTERS, AgentFunction, InputDecoder

__all__ = ["build", "environment", "submit"]


def build(env: StreamExecutionEnvironment, job: FlinkJob) -> Any:
    """Add the job's pipeline to ``env``; returns the table insert to execute."""
    in_servers, in_topic = topic_of(job.input, "--input")
    out_servers, out_topic = topic_of(job.output, "--output")
    letters = topic_of(job.dead_letter, "--dead-letter") if job.dead_letter else None
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
    end = input_end(job) if job.until_end and job.jobmanager else None
    result = build(environment(job), job)
    job_id = str(result.get_job_client().get_job_id())
    if end is not None:
        drain_at_end(job, job_id, end)
    elif not detach:
        result.wait()
    return job_id
