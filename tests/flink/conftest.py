"""The local Flink cluster (``scripts/services/flink``) for tests run with the Flink
venv's pytest (``.venv-flink/bin/pytest tests/flink``; the main run ignores this
directory: apache-flink cannot share a venv with pyfluss)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actionstate.testing.flink import Flink, script
from actionstate.testing.topics import Topics


@pytest.fixture(scope="session")
def flink() -> Flink:
    """The local Flink cluster (started if needed)."""
    address = script("start").strip().splitlines()[-1]
    return Flink(address, script("conf-dir").strip(), script("jar").strip())


@pytest.fixture
def topics(kafka_servers: str) -> Iterator[Topics]:
    """Topics a test creates on the broker, deleted after it."""
    made = Topics(kafka_servers)
    yield made
    made.delete()


@pytest.fixture
def cluster(flink: Flink) -> Iterator[Flink]:
    """The cluster with its slots free and a TaskManager (a failed test may leave a job
    running, or a TaskManager killed); jobs still running after the test are canceled."""
    def cancel_all() -> None:
        for job in flink.rest("/jobs/overview")["jobs"]:
            if job["state"] not in ("FINISHED", "FAILED", "CANCELED"):
                flink.cancel(job["jid"])

    cancel_all()
    if not flink.rest("/taskmanagers")["taskmanagers"]:
        script("start-taskmanager")
    yield flink
    cancel_all()
