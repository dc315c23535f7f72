"""``--until-end`` on a cluster: the client drains the job at its input's end.

The job runs unbounded: a bounded source that ended leaves a job restored after it no
callback for the inputs still queued. :func:`input_end` takes the input's end offsets
at submission; :func:`drain_at_end` waits until the source's committed offsets reach
them and stops the job with a drain.
"""

from __future__ import annotations

import json
import time
from typing import Any

from actionstate.errors import ConfigError
from actionstate.runners.flink.job import FlinkJob, topic_of

__all__ = ["drain_at_end", "input_end"]

def input_end(job: FlinkJob) -> dict[int, int]:
    """The input topic's end offsets now (read committed: its last stable offsets)."""
    from confluent_kafka import IsolationLevel, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

    servers, topic = topic_of(job.input, "--input")
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


def drain_at_end(job: FlinkJob, job_id: str, end: dict[int, int]) -> None:
    """Wait until the source's committed offsets reach ``end``, then stop the job with a
    drain, asking again after a failover, until it is FINISHED."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    servers, topic = topic_of(job.input, "--input")
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
