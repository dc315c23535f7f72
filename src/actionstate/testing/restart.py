"""Crash and restart an agent inside one test process.

:class:`Restartable` runs inputs through the engine against a named in-memory
store and reopens that store from the last marker, as a restarted runner does;
:class:`Crash` stands for the process dying in the middle of an action::

    rs = Restartable(f"memory://{uuid.uuid4().hex}")
    with pytest.raises(Crash):
        rs.run(agent_that_crashes, "k", 0, "input")
    rs.restart()
    assert rs.run(fixed_agent, "k", 0, "input") == [...]
    rs.close()
"""

from __future__ import annotations

import asyncio
from typing import Any

from actionstate.agent import Agent
from actionstate.durable.chain import ChainSettings, process_input
from actionstate.durable.execution import DivergencePolicy
from actionstate.stores import open_store

__all__ = ["Crash", "Restartable"]


class Crash(BaseException):
    """Stands for the process dying: no ``except Exception`` catches it, nothing is recorded."""


class Restartable:
    """A store plus what a restart needs: the marker of the last checkpoint.

    The marker is taken once, at the fresh start, so a restart reads back every
    record of the run (nothing is pruned in between).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.store = open_store(url)
        self.store.rebuild(None)
        self.marker = self.store.recovery_marker()
        self.short_term: dict[str, dict[str, Any]] = {}
        self.settings = ChainSettings(job="test")

    def restart(self, policy: DivergencePolicy = "reexecute") -> None:
        """Open the store again from the last marker, as a restarted runner does."""
        self.store.close()
        self.store = open_store(self.url)
        self.store.rebuild(self.marker)
        self.settings = ChainSettings(job="test", policy=policy)

    def run(self, agent: Agent, key: str, seq: int, record: Any) -> list[Any]:
        """Process one input (``key``, ``seq``) and return its outputs (its event log
        records are written, as a runner does when it takes the input as done)."""
        stm = self.short_term.setdefault(key, {})
        done = asyncio.run(process_input(agent, self.store, key, seq, record, stm,
                                         self.settings))
        self.settings.event_log.write(done.events)
        return done.outputs

    def close(self) -> None:
        """Close the current store."""
        self.store.close()
