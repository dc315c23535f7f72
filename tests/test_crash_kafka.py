"""The SIGKILL crash test of tests/test_crash.py with the Kafka store on a real broker."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from actionstate.testing.crash import crash_check
from actionstate.testing.services import delete_topics


@pytest.mark.slow
def test_sigkill_at_random_points_kafka_sync(tmp_path: Path, kafka_servers: str) -> None:
    topic = f"actionstate-crash-{uuid.uuid4().hex[:12]}"
    try:
        crash_check(tmp_path, f"kafka://{kafka_servers}/{topic}?partitions=4", seed=5)
    finally:
        delete_topics(kafka_servers, [topic])
