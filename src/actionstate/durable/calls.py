"""A durable call's identity: the stable id of the function it calls, what the engine
needs to know of that function (cached per function), and the :class:`Step` of one call
being made, whose idempotency key is SHA-256 of (job, store namespace, key, seq, action,
event id, position)."""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable
from types import FunctionType
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


_FUNCTIONS: dict[Any, tuple[str, bool, bool]] = {}
"""Plain functions already described (the hot path: one dict lookup)."""


def function_info(fn: Callable[..., Any]) -> tuple[str, bool, bool]:
    """(function id, takes ``idempotency_key``, is a coroutine function), cached per function."""
    info = _FUNCTIONS.get(fn) if type(fn) is FunctionType else None
    if info is not None:
        return info
    target = getattr(fn, "__func__", fn)  # a bound method: describe its function
    try:
        info = _describe(target)
    except TypeError:  # unhashable callable
        return _describe.__wrapped__(target)
    if target is fn and type(fn) is FunctionType:
        if len(_FUNCTIONS) >= 4096:  # a bound, as _describe's (lambdas made per call)
            _FUNCTIONS.clear()
        _FUNCTIONS[fn] = info
    return info


class Step:
    """One durable call being made; its idempotency key is computed on first use, from
    ``id_head`` (job, store namespace, key, seq, action, event id) and the position."""

    __slots__ = ("_call_id", "_id_head", "digest", "fid", "is_coroutine", "position",
                 "recorded", "wants_key")

    def __init__(self, position: int, info: tuple[str, bool, bool], digest: str,
                 recorded: CallResult | None, id_head: Callable[[], list[Any]]) -> None:
        self.fid, self.wants_key, self.is_coroutine = info
        self.position, self.digest, self.recorded = position, digest, recorded
        self._id_head = id_head
        self._call_id: str | None = None

    @property
    def call_id(self) -> str:
        if self._call_id is None:
            parts = [*self._id_head(), self.position]
            self._call_id = hashlib.sha256(canonical_bytes(parts)).hexdigest()
        return self._call_id
