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
    dead_letters: int = 0
    """Input records that could not be inputs, sent to the dead-letter sink."""
    stopped_by: str | None = None
    """The signal that stopped the run early (``"SIGTERM"``, ``"SIGINT"``), or None."""
    resumed_at: str | None = None
    """Where a run that resumed from a checkpoint took the input up again (e.g.
    ``"line 1201 of tickets.jsonl"``), None on a first run."""
    done_fraction: float | None = None
    """The share of the input read so far (a file's bytes), when the source knows it."""

    def counters(self) -> dict[str, int]:
        """The counters (what a checkpoint keeps)."""
        return {name: value for name, value in vars(self).items()
                if isinstance(value, int) and not isinstance(value, bool)}
