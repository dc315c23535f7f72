"""A durable call's identity: the stable id of the function it calls, what the engine
needs to know of that function (cached per function), and the :class:`Step` of one call
being made, whose idempotency key is SHA-256 of (job, store namespace, key, seq, action,
event id, position)."""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable
from typing import Any

from actionstate.records.digests import canonical_bytes
from actionstate.records.state import CallResult

__all__ = ["Step", "function_id", "function_info"]


def function_id(fn: Callable[..., Any]) -> str:
    """The stable id of ``fn``: ``__actionstate_name__`` or ``module.qualname``."""
    name = getattr(fn, "__actionstate_name__", None)
    if name:
        return str(name)
    if isinstance(fn, functools.partial):
        return function_id(fn.func)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


@functools.lru_cache(maxsize=4096)
def _describe(fn: Callable[..., Any]) -> tuple[str, bool, bool]:
    try:
        wants_key = "idempotency_key" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        wants_key = False
    return function_id(fn), wants_key, inspect.iscoroutinefunction(fn)


def function_info(fn: Callable[..., Any]) -> tuple[str, bool, bool]:
    """(function id, takes ``idempotency_key``, is a coroutine function), cached per function."""
    target = getattr(fn, "__func__", fn)  # a bound method: describe its function
    try:
        return _describe(target)
    except TypeError:  # unhashable callable
        return _describe.__wrapped__(target)


class Step:
    """One durable call being made; its idempotency key is computed on first use."""

    __slots__ = ("_call_id", "_id_parts", "digest", "fid", "is_coroutine", "position",
                 "recorded", "replayed", "wants_key")

    def __init__(self, position: int, info: tuple[str, bool, bool], digest: str,
                 recorded: CallResult | None, id_parts: list[Any]) -> None:
        self.fid, self.wants_key, self.is_coroutine = info
        self.position, self.digest, self.recorded = position, digest, recorded
        self._id_parts = id_parts
        self._call_id: str | None = None
        self.replayed: Any = None

    @property
    def call_id(self) -> str:
        if self._call_id is None:
            self._call_id = hashlib.sha256(canonical_bytes(self._id_parts)).hexdigest()
        return self._call_id
