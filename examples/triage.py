"""Support-ticket triage: classify each ticket with a chat model, refund when asked.

Run it (offline model, no network)::

    actionstate run examples/triage.py:Triage --input examples/tickets.jsonl \
        --key customer --state .actionstate --output labels.jsonl

Point it at any OpenAI-compatible server with ``ACTIONSTATE_MODEL_BASE_URL``
(and ``ACTIONSTATE_MODEL``, ``OPENAI_API_KEY``). Refunds go to a ledger file
(``ACTIONSTATE_REFUND_LEDGER``, default ``refunds.jsonl``) standing in for a
payments API: issuing one is a side effect that must never happen twice, so
it runs with a reconciler that looks the refund up after a crash.
"""

from __future__ import annotations

import json
import os
from typing import Any

from actionstate import Agent, Event, InputEvent, OutputEvent, RunnerContext, action
from actionstate.llm import model_from_env

MODEL = model_from_env()
LEDGER = os.environ.get("ACTIONSTATE_REFUND_LEDGER", "refunds.jsonl")


class Classified(Event):
    ticket_id: str
    customer: str
    label: str
    confidence: int
    amount: float


def parse_reply(reply: str) -> dict[str, Any]:
    fields = dict(line.split(":", 1) for line in reply.splitlines() if ":" in line)
    return {"label": fields.get("label", "question").strip(),
            "confidence": int(fields.get("confidence", "0").strip() or 0)}


def issue_refund(ticket_id: str, amount: float, idempotency_key: str) -> dict[str, Any]:
    """Issue a refund (appends to the ledger, durably). Not idempotent by itself."""
    entry = {"ticket_id": ticket_id, "amount": amount, "idempotency_key": idempotency_key}
    with open(LEDGER, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return {"refund_id": f"rf-{idempotency_key[:12]}", "amount": amount}


def find_refund(idempotency_key: str) -> dict[str, Any] | None:
    """Look a refund up by its idempotency key (what a payments API offers)."""
    if not os.path.exists(LEDGER):
        return None
    with open(LEDGER, encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            if entry["idempotency_key"] == idempotency_key:
                return {"refund_id": f"rf-{idempotency_key[:12]}", "amount": entry["amount"]}
    return None


class Triage(Agent):
    """Classifies tickets; refund requests with enough confidence get a refund."""

    @action(InputEvent)
    def classify(self, event: InputEvent, ctx: RunnerContext) -> None:
        ticket = event.input
        messages = [
            {"role": "system", "content": "Classify the support ticket. Answer "
             "'label: refund|bug|account|question' and 'confidence: 0-100'."},
            {"role": "user", "content": f"[{ticket['id']}] {ticket['text']}"},
        ]
        reply = ctx.durable_execute(MODEL.reply, messages)  # text and token usage, recorded
        parsed = parse_reply(reply["text"])
        ctx.short_term_memory.set("tickets_seen", ctx.short_term_memory.get("tickets_seen", 0) + 1)
        ctx.send_event(Classified(ticket_id=ticket["id"], customer=ticket["customer"],
                                  amount=float(ticket.get("amount", 0)), **parsed))

    @action(Classified)
    def act(self, event: Classified, ctx: RunnerContext) -> None:
        result: dict[str, Any] = {"id": event.ticket_id, "label": event.label,
                                  "confidence": event.confidence}
        if event.label == "refund" and event.amount > 0 and event.confidence >= 60:
            # issue_refund gets the call's idempotency key; after a crash between the
            # refund and its record, the reconciler looks it up instead of paying again.
            result["refund"] = ctx.durable_execute(
                issue_refund, event.ticket_id, event.amount,
                reconciler=lambda: self.reconcile_refund(event, ctx.call_id or ""))
        ctx.short_term_memory.set("last_label", event.label)
        ctx.send_event(OutputEvent(output=result))

    @staticmethod
    def reconcile_refund(event: Classified, idempotency_key: str) -> dict[str, Any]:
        found = find_refund(idempotency_key)
        return found or issue_refund(event.ticket_id, event.amount, idempotency_key)
