"""The demo agent: assess each order with a slow (offline) model, refund when due,
then draft the customer's reply with the model again: a chain of two actions and
three durable calls per order, as a real support agent has.

Every model call and refund is logged to ``$ACTIONSTATE_DEMO_DIR/calls.jsonl``
when it really runs (its idempotency key, order and the tokens a model call would
bill), so the demo can count what ran twice. Each result carries the call's
``id`` (the request id a model server or payments API answers with; here the
idempotency key), so the demo can tell which calls the store had recorded when
it was killed. ``ACTIONSTATE_DEMO_LATENCY`` is the model's mean answer time in
seconds (default 0.2; each answer takes 50% to 150% of it).
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

from actionstate import Agent, Event, InputEvent, OutputEvent, RunnerContext, action
from actionstate.llm import OfflineModel

_MODEL = OfflineModel()
_JITTER = random.Random()


def _log_call(kind: str, call_id: str, order_id: str, tokens: int = 0) -> None:
    directory = os.environ.get("ACTIONSTATE_DEMO_DIR")
    if directory:
        with open(os.path.join(directory, "calls.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, "call_id": call_id, "order_id": order_id,
                                "tokens": tokens}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _model(order_id: str, prompt: str, reply: str, idempotency_key: str) -> dict[str, Any]:
    """A paid model call (offline here, as slow as a real one), with the usage it bills."""
    # As a real model's, the answer time varies: the keys do not move in lockstep.
    mean = float(os.environ.get("ACTIONSTATE_DEMO_LATENCY", "0.2"))
    time.sleep(mean * _JITTER.uniform(0.5, 1.5))
    usage = {"prompt_tokens": 40 + len(prompt.split()), "completion_tokens": len(reply.split())}
    _log_call("model", idempotency_key, order_id,
              usage["prompt_tokens"] + usage["completion_tokens"])
    return {"id": idempotency_key, "text": reply, "usage": usage}


def assess(order_id: str, text: str, idempotency_key: str) -> dict[str, Any]:
    """Classify the customer's note."""
    return _model(order_id, text, _MODEL.chat([{"role": "user", "content": text}]),
                  idempotency_key)


def draft(order_id: str, label: str, refunded: bool, idempotency_key: str) -> dict[str, Any]:
    """Write the reply to the customer."""
    reply = (f"Dear customer, about order {order_id}: "
             + ("we have refunded you." if refunded else f"we logged it as {label}."))
    return _model(order_id, f"draft a reply for order {order_id} ({label})", reply,
                  idempotency_key)


def refund(order_id: str, amount: float, idempotency_key: str) -> dict[str, Any]:
    """The side effect that must not repeat."""
    _log_call("refund", idempotency_key, order_id)
    return {"id": idempotency_key, "order": order_id, "refunded": amount}


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
        return {"id": idempotency_key, "order": event.order_id, "refunded": event.amount}
    return refund(event.order_id, event.amount, idempotency_key)


class Assessed(Event):
    order_id: str
    label: str
    amount: float


class OrderDesk(Agent):
    @action(InputEvent)
    def assess_order(self, event: InputEvent, ctx: RunnerContext) -> None:
        order = event.input
        reply = ctx.durable_execute(assess, order["order_id"], order["note"])
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
