"""The demo agent: assess each order with a slow (offline) model, refund when due,
then draft the customer's reply with the model again: a chain of two actions and
three durable calls per order, as a real support agent has.

Every model call and refund is logged to ``$ACTIONSTATE_DEMO_DIR/calls.jsonl``
when it really runs (with the tokens a model call would bill), so the demo can
count what ran twice (nothing should). ``ACTIONSTATE_DEMO_LATENCY`` is the
model's answer time in seconds (default 0.2).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from actionstate import Agent, Event, InputEvent, OutputEvent, RunnerContext, action
from actionstate.llm import OfflineModel

_MODEL = OfflineModel()


def _log_call(kind: str, call_id: str | None, tokens: int = 0) -> None:
    directory = os.environ.get("ACTIONSTATE_DEMO_DIR")
    if directory:
        with open(os.path.join(directory, "calls.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, "call_id": call_id, "tokens": tokens}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _model(kind: str, prompt: str, reply: str, idempotency_key: str) -> dict[str, Any]:
    """A paid model call (offline here, as slow as a real one), with the usage it bills."""
    time.sleep(float(os.environ.get("ACTIONSTATE_DEMO_LATENCY", "0.2")))
    usage = {"prompt_tokens": 40 + len(prompt.split()), "completion_tokens": len(reply.split())}
    _log_call(kind, idempotency_key, usage["prompt_tokens"] + usage["completion_tokens"])
    return {"text": reply, "usage": usage}


def assess(text: str, idempotency_key: str) -> dict[str, Any]:
    """Classify the customer's note."""
    return _model("model", text, _MODEL.chat([{"role": "user", "content": text}]),
                  idempotency_key)


def draft(order_id: str, label: str, refunded: bool, idempotency_key: str) -> dict[str, Any]:
    """Write the reply to the customer."""
    reply = (f"Dear customer, about order {order_id}: "
             + ("we have refunded you." if refunded else f"we logged it as {label}."))
    return _model("model", f"draft a reply for order {order_id} ({label})", reply,
                  idempotency_key)


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
        label = reply["text"].splitlines()[0].removeprefix("label: ")
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
        letter = ctx.durable_execute(draft, event.order_id, event.label, "refund" in outcome)
        outcome["reply"] = letter["text"]
        count = ctx.short_term_memory.get("orders", 0) + 1
        ctx.short_term_memory.set("orders", count)
        outcome["customer_orders"] = count
        ctx.send_event(OutputEvent(output=outcome))
