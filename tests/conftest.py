"""Shared fixtures: a named in-memory store a test can reopen like a restarted runner,
and the local Kafka broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

# Detailed assertion messages from the shipped helpers (the contract suite, the
# harnesses) too: they must be registered before they are imported.
pytest.register_assert_rewrite("actionstate.testing")

from actionstate.testing.restart import Restartable  # noqa: E402
from actionstate.testing.services import start_service  # noqa: E402


@pytest.fixture
def rs() -> Iterator[Restartable]:
    """A :class:`Restartable` on a new in-memory store, closed after the test."""
    restartable = Restartable(f"memory://{uuid.uuid4().hex}")
    yield restartable
    restartable.close()


@pytest.fixture(scope="session")
def kafka_servers() -> str:
    """The local Kafka broker's bootstrap address (started if needed)."""
    return start_service("kafka")
