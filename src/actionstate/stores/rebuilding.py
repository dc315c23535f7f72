"""What a rebuild (:meth:`~actionstate.stores.base.ActionStateStore.rebuild`) checks
before it reads (that the marker's records can still be there) and which records it
skips (those of the states its caller says are done)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from actionstate.errors import StoreError
from actionstate.records.state import CallRecord, CompleteRecord, StateKey, TruncateRecord

__all__ = ["OF_A_STATE", "check_not_past", "skipper"]


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


def check_not_past(start: Mapping[int, int], ends: Mapping[int, int],
                   why: Callable[[int, int, int], str | None]) -> None:
    """StoreError unless every partition of a marker (``start``) begins at or below the
    medium's end there (``ends``; a partition missing ends at 0). Its message is
    ``why(partition, marker offset, end)`` for the lowest partition past its end; None
    lets the rebuild go on (a medium that keeps nothing across processes).

    A marker past the end names records the medium no longer has (it was recreated or
    emptied, or replaced by an older copy, since the checkpoint): a rebuild that read
    nothing there would carry on as if the recorded calls had never run.
    """
    part = min((p for p, first in start.items() if first > ends.get(p, 0)), default=None)
    if part is not None and (message := why(part, start[part], ends.get(part, 0))):
        raise StoreError(message)
