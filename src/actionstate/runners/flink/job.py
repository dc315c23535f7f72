"""What a Flink job was asked for (:class:`FlinkJob`, shared by the client and the
Python workers), where the Kafka connector jar is, and the epoch each worker writes
under (:func:`writer_epoch`)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from actionstate.errors import ConfigError
from actionstate.stores.options import redact_url

__all__ = ["CONNECTOR", "FlinkJob", "default_connector_jar", "topic_of", "writer_epoch"]

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


def topic_of(url: str, role: str) -> tuple[str, str]:
    """The servers and the topic of a ``kafka://host:port/topic`` URL (``role``: the
    option that gave it, for the error)."""
    split = urlsplit(url)
    topic = split.path.lstrip("/")
    if split.scheme != "kafka" or not split.netloc or not topic or split.query:
        raise ConfigError(f"{role} {redact_url(url)!r}: the Flink runner reads and writes "
                          "Kafka topics: give kafka://host:port/topic")
    return split.netloc, topic


def writer_epoch(job: FlinkJob, attempt: int) -> int:
    """The epoch a worker stamps on its records: later submissions, and later attempts
    of one, write under higher epochs. A key's records are taken in log order only while
    their epoch does not drop (:meth:`~actionstate.runners.flink.scanner.KeyScanner.claim`):
    once a newer worker wrote for a key, what an older one (a zombie of a lost
    TaskManager) writes later is ignored."""
    return job.submitted * 10_000 + min(attempt, 9_999)
