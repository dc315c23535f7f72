"""A small agent for runner tests: counts per key, logs each real call to a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from actionstate import Agent, InputEvent, OutputEvent, RunnerContext, action

AGENT = f"{Path(__file__).resolve()}:Counter"
"""The agent spec of :class:`Counter` for ``actionstate run``."""


def input_line(i: int) -> str:
    """Input ``i`` for the counter (key field ``k``, three keys), as a JSONL line."""
    return json.dumps({"id": i, "k": f"k{i % 3}", "n": i})


def double(n: int) -> int:
    log = os.environ.get("COUNTER_CALL_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(n) + "\n")
    return n * 2


class Counter(Agent):
    @action(InputEvent)
    def count(self, event: InputEvent, ctx: RunnerContext) -> None:
        doubled = ctx.durable_execute(double, event.input["n"])
        total = ctx.short_term_memory.get("total", 0) + doubled
        ctx.short_term_memory.set("total", total)
        ctx.send_event(OutputEvent(output={"id": event.input["id"], "key": ctx.key,
                                           "seq": ctx.seq, "total": total}))
