"""Shared fixtures: a named in-memory store that a test can reopen like a restarted runner."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actionstate import Agent
from actionstate.durable.chain import ChainSettings, process_input
from actionstate.stores import ActionStateStore, open_store


class Crash(BaseException):
    """Stands for the process dying: no `except Exception` catches it, nothing is recorded."""


class Restartable:
    """A store plus what a restart needs: the marker of the last checkpoint."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.store = open_store(url)
        self.store.rebuild(None)
        self.marker = self.store.recovery_marker()
        self.short_term: dict[str, dict[str, Any]] = {}
        self.settings = ChainSettings(job="test")

    def restart(self, policy: str = "reexecute") -> None:
        """Open the store again from the last marker, as a restarted runner does."""
        self.store = open_store(self.url)
        self.store.rebuild(self.marker)
        self.settings = ChainSettings(job="test", policy=policy)  # type: ignore[arg-type]

    def run(self, agent: Agent, key: str, seq: int, record: Any) -> list[Any]:
        stm = self.short_term.setdefault(key, {})
        return asyncio.run(process_input(agent, self.store, key, seq, record, stm,
                                         self.settings)).outputs


@pytest.fixture
def restartable() -> Callable[[], Restartable]:
    return lambda: Restartable(f"memory://{uuid.uuid4().hex}")


@pytest.fixture
def rs(restartable: Callable[[], Restartable]) -> Restartable:
    return restartable()


def fresh_store() -> ActionStateStore:
    store = open_store(f"memory://{uuid.uuid4().hex}")
    store.rebuild(None)
    return store


SERVICES = Path(__file__).resolve().parents[1] / "scripts" / "services"


def start_service(name: str, *args: str) -> str:
    """Start (or reuse) a real local service with scripts/services; returns its address.

    A service that cannot start fails the test: CI must not hide a missing service.
    """
    done = subprocess.run([str(SERVICES / name), "start", *args], capture_output=True,
                          text=True, timeout=600, check=False)
    if done.returncode != 0:
        pytest.fail(f"scripts/services/{name} start {' '.join(args)} failed:\n"
                    f"{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def kafka_servers() -> str:
    """The local Kafka broker's bootstrap address (started if needed)."""
    return start_service("kafka")
