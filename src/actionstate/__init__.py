"""actionstate: durable execution for event-driven AI agents.

Agents are classes whose ``@action`` methods react to events. Every costly or
side-effecting call inside an action goes through ``ctx.durable_execute``; its
outcome is recorded, so that after a crash the replay skips what already
happened.
"""

from actionstate.agent import Agent, action
from actionstate.context import RunnerContext
from actionstate.durable.execution import function_id
from actionstate.durable.stats import RunStats
from actionstate.errors import (
    ActionFailedError,
    ActionStateError,
    AgentDefinitionError,
    ConfigError,
    CorruptRecordError,
    IncompatibleStateError,
    InputError,
    NonDeterminismError,
    ReplayedCallError,
    StateLockedError,
    StoreError,
)
from actionstate.events import Event, InputEvent, OutputEvent
from actionstate.memory import MemoryObject
from actionstate.retry import RetryPolicy
from actionstate.stores import ActionStateStore, open_store

__all__ = [
    "ActionFailedError",
    "ActionStateError",
    "ActionStateStore",
    "Agent",
    "AgentDefinitionError",
    "ConfigError",
    "CorruptRecordError",
    "Event",
    "IncompatibleStateError",
    "InputError",
    "InputEvent",
    "MemoryObject",
    "NonDeterminismError",
    "OutputEvent",
    "ReplayedCallError",
    "RetryPolicy",
    "RunStats",
    "RunnerContext",
    "StateLockedError",
    "StoreError",
    "action",
    "function_id",
    "open_store",
]
