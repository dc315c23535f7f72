"""The context an action receives: the user-facing API, kept apart from the engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

from actionstate.events import Event
from actionstate.memory import MemoryObject
from actionstate.retry import RetryPolicy

__all__ = ["RunnerContext"]

T = TypeVar("T")


class RunnerContext(ABC):
    """What an action may do: send events, use memory, make durable calls.

    Everything an action does that costs money, touches the outside world or is
    not deterministic belongs in :meth:`durable_execute`: its outcome is
    recorded, and on replay it is returned (or raised) without calling again.
    """

    @property
    @abstractmethod
    def key(self) -> str:
        """The key of the input being processed."""

    @property
    @abstractmethod
    def seq(self) -> int:
        """The sequence number of the input within its key (0, 1, ...)."""

    @abstractmethod
    def send_event(self, event: Event) -> None:
        """Send ``event`` to the actions listening to it (an OutputEvent goes to the sink)."""

    @property
    @abstractmethod
    def short_term_memory(self) -> MemoryObject:
        """Memory of this key, kept across inputs."""

    @property
    @abstractmethod
    def sensory_memory(self) -> MemoryObject:
        """Memory of this input, cleared when its chain of actions ends."""

    @abstractmethod
    def durable_execute(
        self, fn: Callable[..., T], *args: Any, reconciler: Callable[[], T] | None = None,
        retry: RetryPolicy | None = None, **kwargs: Any,
    ) -> T:
        """Call ``fn(*args, **kwargs)`` once: on replay return (or raise) its recorded outcome.

        Args:
            fn: the function; its id is ``module.qualname`` (or ``fn.__actionstate_name__``).
            retry: how a transient failure is tried again (default: the run's
                policy, ``--max-retries``); only the final outcome is recorded.
            reconciler: for side effects that must not repeat. A PENDING record is
                written before ``fn`` runs; if the run dies before the outcome is
                recorded, replay calls ``reconciler()`` (which asks the outside world
                what happened) instead of ``fn``.
        """

    @abstractmethod
    async def durable_execute_async(
        self, fn: Callable[..., Any], *args: Any, reconciler: Callable[[], Any] | None = None,
        retry: RetryPolicy | None = None, **kwargs: Any,
    ) -> Any:
        """Like :meth:`durable_execute`; awaits a coroutine ``fn`` or runs ``fn`` in a thread.

        Several may be awaited together (``asyncio.gather``): positions are taken
        in the order the calls start, so replay matches them deterministically.
        """

    @property
    @abstractmethod
    def call_id(self) -> str | None:
        """Idempotency key of the durable call running now (None outside one).

        Stable across replays; pass it to services that deduplicate requests.
        A called function with an ``idempotency_key`` parameter receives it.
        """
