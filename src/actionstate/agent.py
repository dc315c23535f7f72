"""Agents: classes whose ``@action`` methods react to events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from actionstate.errors import AgentDefinitionError
from actionstate.events import Event

__all__ = ["Agent", "action"]

F = TypeVar("F", bound=Callable[..., Any])
_LISTENS = "__actionstate_listens__"


def action(*event_types: type[Event]) -> Callable[[F], F]:
    """Mark a method ``(self, event, ctx)`` to run for events of ``event_types``.

    The method may be ``def`` or ``async def``. Its action id is its name;
    keep it stable once records exist.
    """
    if not event_types:
        raise AgentDefinitionError(
            "@action() needs at least one event type, e.g. @action(InputEvent)")
    for event_type in event_types:
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise AgentDefinitionError(
                f"@action({event_type!r}): event types must be Event subclasses"
            )

    def mark(fn: F) -> F:
        setattr(fn, _LISTENS, tuple(event_types))
        return fn

    return mark


class Agent:
    """Base class of agents. Subclass it and decorate methods with :func:`action`."""

    _actions: dict[str, tuple[type[Event], ...]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        actions: dict[str, tuple[type[Event], ...]] = {}
        for base in reversed(cls.__mro__):
            for name, member in vars(base).items():
                listens = getattr(member, _LISTENS, None)
                if listens is not None:
                    actions[name] = listens
        cls._actions = actions

    @classmethod
    def action_ids(cls) -> list[str]:
        """The ids of this agent's actions, in definition order."""
        return list(cls._actions)

    def actions_for(self, event: Event) -> list[tuple[str, Callable[..., Any]]]:
        """(action id, bound method) of every action that listens to ``event``."""
        return [
            (name, getattr(self, name))
            for name, types in self._actions.items()
            if isinstance(event, types)
        ]
