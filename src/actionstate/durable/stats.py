"""The counters a run reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actionstate.checkpoint import is_count

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
    prompt_tokens_executed: int = 0
    """Tokens of model calls made by this run (from the ``usage`` a chat model's reply
    records: ``{"usage": {"prompt_tokens", "completion_tokens"}}``), paid."""
    completion_tokens_executed: int = 0
    prompt_tokens_replayed: int = 0
    """Tokens of recorded model calls served from the store: not paid again."""
    completion_tokens_replayed: int = 0
    stopped_by: str | None = None
    """The signal that stopped the run early (``"SIGTERM"``, ``"SIGINT"``), or None."""
    resumed_at: str | None = None
    """Where a run that resumed from a checkpoint took the input up again (e.g.
    ``"line 1201 of tickets.jsonl"``), None on a first run."""
    done_fraction: float | None = None
    """The share of the input read so far (a file's bytes), when the source knows it."""

    def add_tokens(self, result: Any, *, replayed: bool) -> None:
        """Count the tokens of a call's result when it is a model reply with usage."""
        usage = result.get("usage") if isinstance(result, dict) else None
        if not isinstance(usage, dict):
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not (is_count(prompt) and is_count(completion)):
            return
        if replayed:
            self.prompt_tokens_replayed += prompt
            self.completion_tokens_replayed += completion
        else:
            self.prompt_tokens_executed += prompt
            self.completion_tokens_executed += completion

    def summary(self, elapsed: float) -> dict[str, Any]:
        """What a run did, as JSON (``actionstate run --summary``)."""
        return {
            "complete": self.stopped_by is None, "stopped_by": self.stopped_by,
            "resumed_at": self.resumed_at, "elapsed_seconds": round(elapsed, 3),
            "inputs": self.inputs, "outputs": self.outputs, "dead_letters": self.dead_letters,
            "actions": {"run": self.actions_run, "skipped": self.actions_skipped},
            "calls": {"executed": self.calls_executed, "replayed": self.calls_replayed,
                      "reconciled": self.calls_reconciled, "retried": self.calls_retried,
                      "truncated": self.calls_truncated},
            "tokens": {
                "executed": {"prompt": self.prompt_tokens_executed,
                             "completion": self.completion_tokens_executed},
                "replayed": {"prompt": self.prompt_tokens_replayed,
                             "completion": self.completion_tokens_replayed},
            },
        }

    def counters(self) -> dict[str, int]:
        """The counters (what a checkpoint keeps)."""
        return {name: value for name, value in vars(self).items()
                if isinstance(value, int) and not isinstance(value, bool)}
