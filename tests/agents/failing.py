"""Agents for the hints of a failed action (tests/test_failure_hints.py), run by
``actionstate run`` over tickets (``make_tickets``) against a fake model server.

:class:`Opaque`: its durable call asks the model and returns a value that cannot be
stored (recorded as the call's failure). :class:`Buggy`: its own code raises after
a durable call on ticket T3, until ``BUGGY_FIXED`` is set (the action is "fixed").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from actionstate import Agent, InputEvent, OutputEvent, RunnerContext, action
from actionstate.llm import model_from_env

HERE = Path(__file__).resolve()
OPAQUE = f"{HERE}:Opaque"
BUGGY = f"{HERE}:Buggy"
MODEL = model_from_env()


class Reply:
    """A plain class: no codec stores it."""

    def __init__(self, text: str) -> None:
        self.text = text


def ask(prompt: str) -> Reply:
    return Reply(MODEL.reply([{"role": "user", "content": prompt}])["text"])


def ask_text(prompt: str) -> str:
    return str(MODEL.reply([{"role": "user", "content": prompt}])["text"])


def _prompt(ticket: dict[str, Any]) -> str:
    return f"[{ticket['id']}] {ticket['text']}"


class Opaque(Agent):
    @action(InputEvent)
    def answer(self, event: InputEvent, ctx: RunnerContext) -> None:
        prompt = _prompt(event.input)
        reply = ctx.durable_execute(ask, prompt) if "[T3]" in prompt else Reply(
            ctx.durable_execute(ask_text, prompt))
        ctx.send_event(OutputEvent(output={"id": event.input["id"], "text": reply.text}))


class Buggy(Agent):
    @action(InputEvent)
    def answer(self, event: InputEvent, ctx: RunnerContext) -> None:
        text = ctx.durable_execute(ask_text, _prompt(event.input))
        if event.input["id"] == "T3" and not os.environ.get("BUGGY_FIXED"):
            raise ValueError("a bug in the action")
        ctx.send_event(OutputEvent(output={"id": event.input["id"], "text": text}))
