"""Agents for the recovery tests: async actions making several slow model calls.

Every call sends a prompt unique to its input and position (``"<id> ... call
<i>"``) to the model of ``ACTIONSTATE_MODEL_BASE_URL``, so a fake server's
counts tell exactly which calls ran again. An input ``{"id", "key", "calls"}``
asks for ``calls`` sequential calls.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from actionstate import Agent, InputEvent, OutputEvent, RunnerContext, action
from actionstate.llm import model_from_env

MODEL = model_from_env()
FAIL_ON = "RECOVERY_FAIL_ON"
"""Environment variable: the id of an input whose action raises after its calls."""
STEPS = f"{Path(__file__).resolve()}:Steps"
TALLY = f"{Path(__file__).resolve()}:Tally"
REPLIES = f"{Path(__file__).resolve()}:Replies"
"""The agent specs of :class:`Steps`, :class:`Tally` and :class:`Replies` for
``actionstate run``."""


async def ask(ctx: RunnerContext, item: dict[str, Any], tag: str) -> list[str]:
    """Make the input's calls one after another; the replies, in order."""
    replies = []
    for i in range(1, int(item["calls"]) + 1):
        messages = [{"role": "user", "content": f"{item['id']} {tag}call {i}"}]
        replies.append(str(await ctx.durable_execute_async(MODEL.chat, messages)))
    if os.environ.get(FAIL_ON) == item["id"]:
        raise RuntimeError(f"{FAIL_ON}={item['id']} is set: failing after the calls")
    return replies


class Steps(Agent):
    """Calls the model ``calls`` times per input; uses no memory."""

    @action(InputEvent)
    async def step(self, event: InputEvent, ctx: RunnerContext) -> None:
        item = event.input
        replies = await ask(ctx, item, "")
        ctx.send_event(OutputEvent(output={"id": item["id"], "key": ctx.key, "seq": ctx.seq,
                                           "replies": replies}))


class Tally(Agent):
    """Counts the inputs of each key in short-term memory *before* its calls, and
    puts the count in every prompt: an action that ran on top of its own
    unfinished write would count twice and send other prompts."""

    @action(InputEvent)
    async def tally(self, event: InputEvent, ctx: RunnerContext) -> None:
        item = event.input
        count = ctx.short_term_memory.get("count", 0) + 1
        ctx.short_term_memory.set("count", count)
        replies = await ask(ctx, item, f"count {count} ")
        ctx.send_event(OutputEvent(output={"id": item["id"], "key": ctx.key, "seq": ctx.seq,
                                           "count": count, "replies": replies}))


class Replies(Agent):
    """Two model replies (text and token usage) per input, in one ``def`` action: a kill
    at an input's second request finds its first reply recorded and its action open."""

    @action(InputEvent)
    def answer(self, event: InputEvent, ctx: RunnerContext) -> None:
        item = event.input
        texts = []
        for i in (1, 2):
            messages = [{"role": "user", "content": f"{item['id']} reply {i}"}]
            texts.append(ctx.durable_execute(MODEL.reply, messages)["text"])
        ctx.send_event(OutputEvent(output={"id": item["id"], "texts": texts}))
