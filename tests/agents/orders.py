"""An agent with two durable calls per input that can be made to fail on input 7 (the
metrics and job-totals tests)."""

from __future__ import annotations

from typing import Any

from actionstate import Agent, InputEvent, OutputEvent, RunnerContext, action

FAIL_ON = {"armed": True}
"""While armed, input 7's action raises after its calls."""


def lookup(order: int) -> dict[str, Any]:
    return {"order": order, "usage": {"prompt_tokens": 10, "completion_tokens": 3}}


def pay(order: int) -> str:
    return f"paid-{order}"


class Orders(Agent):
    """Two durable calls per input; input 7's action fails after both while armed."""

    @action(InputEvent)
    def handle(self, event: InputEvent, ctx: RunnerContext) -> None:
        order = event.input["n"]
        ctx.durable_execute(lookup, order)
        ctx.durable_execute(pay, order)
        if order == 7 and FAIL_ON["armed"]:
            raise RuntimeError("the payments API went away")
        ctx.send_event(OutputEvent(output={"n": order}))
