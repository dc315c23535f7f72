"""Events: typed, JSON-serializable messages between actions.

Subclass :class:`Event` with annotated fields; the subclass becomes a
dataclass and is registered under a stable type name so that it can be read
back from JSON into the same class::

    class Checked(Event):
        id: str
        n: int

    Checked(id="t1", n=3)
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar, dataclass_transform

from actionstate.errors import AgentDefinitionError

__all__ = ["Event", "InputEvent", "OutputEvent", "event_class", "event_type_name"]

_REGISTRY: dict[str, type[Event]] = {}
E = TypeVar("E", bound="Event")


def event_type_name(cls: type[Event]) -> str:
    """The stable name an event class is stored under (``module.QualName``)."""
    return cls.__dict__.get("event_type") or f"{cls.__module__}.{cls.__qualname__}"


def event_class(name: str) -> type[Event]:
    """The registered event class for ``name``.

    Raises:
        AgentDefinitionError: no class of that name has been defined (import
            the module that defines it before reading events back).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise AgentDefinitionError(
            f"unknown event type {name!r}: import the module that defines it "
            "before decoding events of that type"
        ) from None


@dataclass_transform()
@dataclasses.dataclass
class Event:
    """Base class of all events. Subclasses are dataclasses of JSON-able fields.

    Set the class attribute ``event_type`` to choose the stored type name
    (default ``module.QualName``); keep it stable once records exist.
    """

    event_type: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(cls)
        name = event_type_name(cls)
        other = _REGISTRY.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise AgentDefinitionError(
                f"event type name {name!r} is used by two classes; set a distinct "
                "`event_type` class attribute on one of them"
            )
        _REGISTRY[name] = cls

    def to_json(self) -> dict[str, Any]:
        """This event as ``{"type": name, "data": {field: value}}``."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"type": event_type_name(type(self)), "data": data}

    @staticmethod
    def from_json(obj: dict[str, Any]) -> Event:
        """Rebuild an event of its original class from :meth:`to_json` output."""
        return event_class(obj["type"])(**obj["data"])



class InputEvent(Event):
    """An input record entering the agent; ``input`` is the decoded record."""

    input: Any
    event_type = "actionstate.InputEvent"


class OutputEvent(Event):
    """A result leaving the agent; ``output`` is written to the sink."""

    output: Any
    event_type = "actionstate.OutputEvent"


_REGISTRY[event_type_name(Event)] = Event
