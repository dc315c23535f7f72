"""Issue 7: a store failure is reported as the store's problem, naming the store and the
fix, exit code 2, no traceback, not as "action failed ... fix the action" (exit 1):
SQLite out of space, a Kafka state topic whose records a restore needs were deleted,
a Kafka broker nobody answers at. (A SQLite file held by another process: see
``test_cli.test_a_store_that_fails_mid_run_is_reported_as_the_store_and_the_rerun_resumes``.)
"""

from __future__ import annotations

import resource
import socket
import time
import uuid
from pathlib import Path

import pytest

from actionstate.runners.statedir import StateDir
from actionstate.testing import FakeLLMServer
from actionstate.testing.recovery import Item, Job
from actionstate.testing.services import delete_topics, start_service
from tests.agents.recovery import FAIL_ON, STEPS

ITEMS: list[Item] = [{"id": f"d{i:03d}", "key": f"k{i % 8}", "calls": 2} for i in range(300)]
FILE_LIMIT = 256 * 1024
"""Bytes: the largest file the run may write (RLIMIT_FSIZE), far under what it needs."""


def _names(stderr: str, *phrases: str) -> None:
    """The message holds every phrase (:meth:`Job.finish` checked the exit code and that
    there is no traceback) and blames no action."""
    for phrase in phrases:
        assert phrase in stderr, stderr
    assert "action failed" not in stderr and "fix the action" not in stderr, stderr


@pytest.mark.slow
def test_a_sqlite_store_out_of_space_exits_2_naming_it_and_the_rerun_resumes(
        tmp_path: Path) -> None:
    """The run may write no file beyond 256 KiB (RLIMIT_FSIZE: as on a full disk or
    quota, the OS refuses the write, here with EFBIG, which SQLite reports as a disk
    I/O error; on a full file system, ENOSPC, it says "database or disk is full" and
    the fix "free disk space"); the store's write-ahead log grows past it first."""
    def small_files() -> None:  # in the child, before exec; Python ignores SIGXFSZ
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))

    with FakeLLMServer() as server:
        job = Job(tmp_path, STEPS, server, ITEMS, concurrency=8)
        proc = job.start(preexec_fn=small_files)
        job.finish(proc, exit_code=2, timeout=120)
        stderr = job.stderr(0)
        _names(stderr, "cannot write to SQLite store", "state.db", "disk I/O error",
               "check the disk and the file", "run the same command again")
        first = sum(server.calls.values())
        assert 0 < first < 2 * len(ITEMS), "the store filled up mid-run"
        job.finish()  # room again
        calls = server.calls
    assert sorted(str(o["id"]) for o in job.outputs()) == [str(i["id"]) for i in ITEMS]
    # The calls whose records the full disk refused (one per key in flight: 8 at most)
    # alone run again.
    assert sum(calls.values()) - 2 * len(ITEMS) <= 8, calls.most_common(10)


@pytest.mark.slow
def test_a_kafka_state_topic_whose_needed_records_were_deleted_exits_2(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """An action fails (exit 1): the calls recorded since the last checkpoint (here the
    first, before any input) are kept for the rerun, after the checkpoint's marker.
    Those records are deleted (as retention or an operator's delete-records would);
    the rerun cannot restore them and says so, having run no call."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    servers = start_service("kafka")
    topic = f"actionstate-deleted-{uuid.uuid4().hex[:12]}"
    request.addfinalizer(lambda: delete_topics(servers, [topic]))
    items = ITEMS[:24]
    with FakeLLMServer() as server:
        job = Job(tmp_path, STEPS, server, items, f"kafka://{servers}/{topic}?partitions=2")
        # A topic with retention (cleanup.policy compact,delete): a compacted-only one
        # refuses delete-records (POLICY_VIOLATION).
        job.command += ["--option", "kafkaActionStateTopicRetentionMs=600000"]
        job.finish(exit_code=1, env={FAIL_ON: "d009"})
        assert "action 'step' failed" in job.stderr(0)
        checkpoint = StateDir(tmp_path / "state").load_checkpoint()
        assert checkpoint is not None
        admin = AdminClient({"bootstrap.servers": servers})
        ends = [TopicPartition(topic, p, -1) for p in range(2)]  # -1: the high watermark
        deleted_to = {p: f.result().low_watermark for p, f in
                      zip(range(2), admin.delete_records(ends).values(), strict=True)}
        assert any(checkpoint.marker.offsets[p] < deleted_to[p] for p in range(2)), (
            "the rerun needs records that are gone", checkpoint.marker, deleted_to)
        calls_before = sum(server.calls.values())
        job.finish(exit_code=2)
        assert sum(server.calls.values()) == calls_before, "no call ran"
    stderr = job.stderr(1)
    _names(stderr, f"Kafka topic {topic} partition", "were deleted",
           "restore from a newer checkpoint or start fresh")


@pytest.mark.slow
def test_a_kafka_broker_nobody_answers_at_exits_2_within_the_connect_timeout(
        tmp_path: Path) -> None:
    with socket.socket() as bound:  # a port of this host that nothing listens on
        bound.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{bound.getsockname()[1]}"
        with FakeLLMServer() as server:
            job = Job(tmp_path, STEPS, server, ITEMS[:4], f"kafka://{address}/actionstate-x")
            job.command += ["--option", "kafkaConnectTimeoutMs=3000"]
            started = time.monotonic()
            job.finish(exit_code=2, timeout=60)
            elapsed = time.monotonic() - started
            assert not server.calls
    stderr = job.stderr(0)
    _names(stderr, f"cannot reach Kafka at {address} within 3s",
           "start a broker", "fix the address")
    assert elapsed < 3 + 10, f"exit {elapsed:.1f} s after start: the timeout is 3 s"
