"""Which records a rebuild (:meth:`~actionstate.stores.base.ActionStateStore.rebuild`)
skips: those of the states its caller says are done."""

from __future__ import annotations

from collections.abc import Callable

from actionstate.records.state import CallRecord, CompleteRecord, StateKey, TruncateRecord

__all__ = ["OF_A_STATE", "skipper"]


OF_A_STATE = (CallRecord, CompleteRecord, TruncateRecord)
"""The records that change one state (the others: fences and drops)."""


def skipper(done: Callable[[str], int]) -> Callable[[StateKey], bool]:
    """Whether the state ``key`` is done (``key.seq <= done(key.key)``, asked once per
    input key)."""
    limits: dict[str, int] = {}

    def skipped(key: StateKey) -> bool:
        limit = limits.get(key.key)
        if limit is None:
            limit = limits[key.key] = done(key.key)
        return key.seq <= limit

    return skipped

