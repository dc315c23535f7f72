"""Errors raised by actionstate.

The tree::

    ActionStateError
    ├── ConfigError               bad URL, option or argument
    │   └── EncryptionKeyError    a sealed payload whose key is missing or wrong
    ├── ActionFailedError         an action raised (its recorded calls are kept)
    ├── AgentDefinitionError      an agent or event class that cannot work
    ├── InputError                an input record that cannot be processed
    ├── ConnectorError            a source or sink that cannot be reached or used
    ├── StoreError                a store that cannot be reached or used
    │   ├── CorruptRecordError    a stored record that cannot be decoded
    │   ├── StateLockedError      a state dir held by another live run
    │   └── FencedError           a newer run took over this run's records (a zombie)
    ├── IncompatibleStateError    state written by an incompatible version
    ├── NonDeterminismError       replay found a different call than recorded
    ├── MemoryInCallError         agent memory touched inside a durable call
    └── ReplayedCallError         a recorded exception whose type cannot be rebuilt

Every message names the thing at fault and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ActionFailedError",
    "ActionStateError",
    "AgentDefinitionError",
    "ConfigError",
    "ConnectorError",
    "CorruptRecordError",
    "EncryptionKeyError",
    "FencedError",
    "IncompatibleStateError",
    "InputError",
    "MemoryInCallError",
    "NonDeterminismError",
    "RESUME_HINT",
    "ReplayedCallError",
    "StateLockedError",
    "StoreError",
]


class ActionStateError(Exception):
    """Base class of every error actionstate raises on purpose."""


class ConfigError(ActionStateError):
    """A URL, option or argument is invalid."""


class EncryptionKeyError(ConfigError):
    """A sealed payload's key is not configured, or the key under its id does not open it.
    The message names the key id (never a key)."""


RESUME_HINT = ("recorded calls are kept: fix the action and run the same command again "
               "to resume")
"""The hint of an action that raised on its own (not a durable call's recorded failure)."""


class ActionFailedError(ActionStateError):
    """An action raised. Its recorded calls are kept: a restart replays them.

    What to do next depends on what the action raised, and ``hint`` says it in one
    line (the command prints it under the error; an API caller can show it too):

    * the action's own code raised: fix the action and run again (:data:`RESUME_HINT`);
    * a durable call failed transiently until its attempts ran out (an outage): the
      failure is recorded as retryable, so the next run tries the call again, and
      replays every call that succeeded;
    * a durable call's failure is its recorded outcome (not retryable, or a result that
      cannot be stored): the next run replays it without running the call. To get
      past it, change the call (another function or other arguments: with divergence
      ``reexecute``, the default, the changed call runs), catch the error in the
      action, or start over with a new state.

    Attributes:
        key, seq, action: the input's key, its sequence number and the action's id.
        hint: what to do next (above), for a person.
    """

    def __init__(self, key: str, seq: int, action: str, cause: BaseException,
                 hint: str | None = None) -> None:
        super().__init__(
            f"action {action!r} failed on key {key!r} seq {seq}: "
            f"{type(cause).__name__}: {cause}"
        )
        self.key, self.seq, self.action = key, seq, action
        self.hint = RESUME_HINT if hint is None else hint


class AgentDefinitionError(ActionStateError):
    """An agent, action or event class is defined in a way that cannot work."""


class InputError(ActionStateError):
    """An input record cannot be decoded or has no usable key."""


class ConnectorError(ActionStateError):
    """A source or sink (an input or output topic, ...) cannot be reached or used."""


class StoreError(ActionStateError):
    """The action state store cannot be reached or used."""


class CorruptRecordError(StoreError):
    """A stored record cannot be decoded; the message names the record."""


class StateLockedError(StoreError):
    """Another live run holds the state directory."""


class FencedError(StoreError):
    """A newer run restored this run's records and claimed a higher epoch.

    This process is a zombie: whatever it writes now would be ignored, so the
    store refuses it. Stop it; the newer run carries on.
    """


class MemoryInCallError(ActionStateError):
    """Agent memory was read or written inside a function passed to durable_execute."""


class IncompatibleStateError(ActionStateError):
    """State on disk was written by an incompatible version of actionstate."""


class NonDeterminismError(ActionStateError):
    """A replayed action made a different durable call than the one recorded."""


class ReplayedCallError(ActionStateError):
    """A recorded exception replayed when its original type cannot be rebuilt.

    Attributes:
        type_name: the fully qualified name of the original exception type.
        message: the original exception's message.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
