"""Agent memory: nested key/value data whose writes are recorded for replay."""

from __future__ import annotations

from typing import Any

from actionstate.errors import MemoryInCallError
from actionstate.records.current import CURRENT_CALL
from actionstate.records.state import MemoryScope, MemoryUpdate
from actionstate.records.values import check_storable

__all__ = ["MemoryObject"]

_MISSING = object()


class MemoryObject:
    """Get and set values on dotted paths (``"order.items"``) of a nested dict.

    Every :meth:`set` is recorded, so that when a completed action is skipped on
    replay its writes are applied again. Values must be storable (docs/determinism.md).
    """

    def __init__(self, data: dict[str, Any], scope: MemoryScope,
                 updates: list[MemoryUpdate]) -> None:
        self._data = data
        self._scope = scope
        self._updates = updates

    def get(self, path: str, default: Any = None) -> Any:
        """The value at ``path``, or ``default`` when any part of it is missing."""
        if CURRENT_CALL.get() is not None:
            self._refuse("read", path)
        node: Any = self._data
        for part in path.split("."):
            if not isinstance(node, dict):
                return default
            node = node.get(part, _MISSING)
            if node is _MISSING:
                return default
        return node

    def set(self, path: str, value: Any) -> None:
        """Set the value at ``path``, creating intermediate objects.

        Raises:
            UnstorableValueError: ``value`` (or something in it) is of a type that
                cannot be stored (see docs/determinism.md); nothing is written.
        """
        if CURRENT_CALL.get() is not None:
            self._refuse("write", path)
        check_storable(value, f"{self._scope} memory {path!r}")
        apply_update(self._data, path, value)
        self._updates.append(MemoryUpdate(self._scope, path, value))

    def _refuse(self, what: str, path: str) -> None:
        fid = getattr(CURRENT_CALL.get(), "fid", "?")
        raise MemoryInCallError(
            f"{self._scope} memory {what} of {path!r} inside the durable call {fid}: a "
            "recorded call is not run again on replay, so memory it touches would differ "
            "between the first run and the replay; pass the value in as an argument and "
            "set memory from the action with the call's result (see docs/determinism.md)")

    def __contains__(self, path: str) -> bool:
        return self.get(path, _MISSING) is not _MISSING


def apply_update(data: dict[str, Any], path: str, value: Any) -> None:
    """Write ``value`` at dotted ``path`` in ``data`` (used by set and by replay)."""
    *parents, leaf = path.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value
