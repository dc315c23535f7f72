"""actionstate: durable execution for event-driven AI agents.

Agents are classes whose ``@action`` methods react to events. Every costly or
side-effecting call inside an action goes through ``ctx.durable_execute``; its
outcome is recorded, so that after a crash the replay skips what already
happened.

Run an agent from the command line (``actionstate run``) or from code::

    import actionstate
    stats = actionstate.run(Triage, source="tickets.jsonl", key="customer",
                            sink="labels.jsonl", state=".actionstate")
"""

from actionstate.agent import Agent, action
from actionstate.api import run, run_async
from actionstate.connectors import (
    CallbackSink,
    InputRecord,
    IterableSource,
    JsonlSink,
    JsonlSource,
    Rejected,
    Sink,
    Source,
)
from actionstate.context import RunnerContext
from actionstate.durable.calls import function_id
from actionstate.durable.stats import RunStats
from actionstate.errors import (
    ActionFailedError,
    ActionStateError,
    AgentDefinitionError,
    ConfigError,
    ConnectorError,
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
    "CallbackSink",
    "ConfigError",
    "ConnectorError",
    "CorruptRecordError",
    "Event",
    "IncompatibleStateError",
    "InputError",
    "InputEvent",
    "InputRecord",
    "IterableSource",
    "JsonlSink",
    "JsonlSource",
    "MemoryObject",
    "NonDeterminismError",
    "OutputEvent",
    "Rejected",
    "ReplayedCallError",
    "RetryPolicy",
    "RunStats",
    "RunnerContext",
    "Sink",
    "Source",
    "StateLockedError",
    "StoreError",
    "action",
    "function_id",
    "open_store",
    "run",
    "run_async",
]
