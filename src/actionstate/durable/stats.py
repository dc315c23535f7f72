"""The counters a run reports."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RunStats"]


@dataclass
class RunStats:
    """Counters a runner reports."""

    inputs: int = 0
    outputs: int = 0
    calls_executed: int = 0
    calls_replayed: int = 0
    calls_reconciled: int = 0
    calls_retried: int = 0
    calls_truncated: int = 0
    actions_run: int = 0
    actions_skipped: int = 0
