"""The demo agent: assess each order with a (slow, offline) model, refund when due.

Every model call and refund is logged to ``$ACTIONSTATE_DEMO_DIR/calls.jsonl``
when it really runs, so the demo can count what ran twice (nothing should).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from actionstate import Agent, Event, InputEvent, OutputEvent, RunnerContext, action
from actionstate.llm import OfflineModel

_MODEL = OfflineModel()


def _log_call(kind: str, call_id: str | None) -> None:
    directory = os.environ.get("ACTIONSTATE_DEMO_DIR")
    if directory:
        with open(os.path.join(directory, "calls.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, "call_id": call_id}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def assess(text: str, idempotency_key: str) -> str:
    """The paid model call (offline here; it takes a few milliseconds, like a slow API)."""
    time.sleep(0.004)
    _log_call("model", idempotency_key)
    return _MODEL.chat([{"role": "user", "content": text}])


def refund(order_id: str, amount: float, idempotency_key: str) -> dict[str, Any]:
    """The side effect that must not repeat."""
    _log_call("refund", idempotency_key)
    return {"order": order_id, "refunded": amount}


def _issued(idempotency_key: str) -> bool:
    """Whether the refund with this key happened (what a payments API lets one ask)."""
    directory = os.environ.get("ACTIONSTATE_DEMO_DIR")
    path = os.path.join(directory, "calls.jsonl") if directory else ""
    if not path or not os.path.exists(path):
        return False
    with open(path, encoding="utf-8") as f:
        return any(json.loads(line).get("call_id") == idempotency_key
                   for line in f if line.strip())


def _reconcile(event: Assessed, idempotency_key: str) -> dict[str, Any]:
    if _issued(idempotency_key):
        return {"order": event.order_id, "refunded": event.amount}
    return refund(event.order_id, event.amount, idempotency_key)


class Assessed(Event):
    order_id: str
    label: str
    amount: float


class OrderDesk(Agent):
    @action(InputEvent)
    def assess_order(self, event: InputEvent, ctx: RunnerContext) -> None:
        order = event.input
        reply = ctx.durable_execute(assess, order["note"])
        label = reply.splitlines()[0].removeprefix("label: ")
        ctx.send_event(Assessed(order_id=order["order_id"], label=label,
                                amount=float(order["amount"])))

    @action(Assessed)
    def settle(self, event: Assessed, ctx: RunnerContext) -> None:
        outcome: dict[str, Any] = {"order_id": event.order_id, "label": event.label}
        if event.label == "refund":
            # After a crash between the PENDING record and the refund's own record,
            # the reconciler looks the refund up by its key; if it never happened, it
            # issues it now.
            outcome["refund"] = ctx.durable_execute(
                refund, event.order_id, event.amount,
                reconciler=lambda: _reconcile(event, ctx.call_id or ""))
        count = ctx.short_term_memory.get("orders", 0) + 1
        ctx.short_term_memory.set("orders", count)
        outcome["customer_orders"] = count
        ctx.send_event(OutputEvent(output=outcome))
