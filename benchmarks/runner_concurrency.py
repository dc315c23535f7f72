"""A ``def`` agent against a slow model: does it run as many inputs at once as an
``async def`` agent?

The same agent written two ways: a ``def`` action that calls
``ctx.durable_execute(model.reply, ...)`` (blocking HTTP with the ``openai``
SDK's sync client) and an ``async def`` action that awaits
``ctx.durable_execute_async(model.areply, ...)`` (the SDK's async client).
Both run in process through LocalRunner (JsonlSource -> LocalRunner ->
JsonlSink, sqlite:// ``sync`` store in a new state dir, concurrency 64, the
CLI's default) over 128 inputs on 128 keys, against FakeLLMServer (a fake
OpenAI-compatible server, in this process) that answers each request after
200 ms. The async agent is the baseline; rounds alternate the two; medians.

Usage: .venv/bin/python benchmarks/runner_concurrency.py [--quick]
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from core_common import (
    fmt_ratio,
    machine_lines,
    median,
    parse_args,
    run_local,
    scratch_dir,
    table,
)

from actionstate import Agent, InputEvent, OutputEvent, RunnerContext, action
from actionstate.llm import OpenAIModel
from actionstate.testing.fake_llm import FakeLLMServer

LATENCY, CONCURRENCY, TARGET = 0.2, 64, 1.2


class DefAgent(Agent):
    model: OpenAIModel

    @action(InputEvent)
    def classify(self, event: InputEvent, ctx: RunnerContext) -> None:
        reply = ctx.durable_execute(self.model.reply, _messages(event))
        ctx.send_event(OutputEvent(output={"id": event.input["id"], "text": reply["text"]}))


class AsyncAgent(Agent):
    model: OpenAIModel

    @action(InputEvent)
    async def classify(self, event: InputEvent, ctx: RunnerContext) -> None:
        reply = await ctx.durable_execute_async(self.model.areply, _messages(event))
        ctx.send_event(OutputEvent(output={"id": event.input["id"], "text": reply["text"]}))


def _messages(event: InputEvent) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"classify ticket {event.input['id']}"}]


def run_once(tmp: Path, inputs: Path, agent: Agent, n: int) -> float:
    elapsed, stats = run_local(agent, inputs, tmp / "run", concurrency=CONCURRENCY)
    assert stats.inputs == n and stats.outputs == n and stats.calls_executed == n, stats
    shutil.rmtree(tmp / "run")
    return elapsed


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rounds, n = (2, 32) if args.quick else (5, 128)
    seconds: dict[str, list[float]] = {"async": [], "def": []}
    ratios: list[float] = []
    with scratch_dir() as tmp, FakeLLMServer(latency=LATENCY) as server:
        inputs = tmp / "in.jsonl"
        inputs.write_text("".join(json.dumps({"id": i, "k": f"key{i}"}) + "\n"
                                  for i in range(n)))
        agents: dict[str, Agent] = {"async": AsyncAgent(), "def": DefAgent()}
        for agent in agents.values():
            agent.model = OpenAIModel(server.base_url, "fake", api_key="none")  # type: ignore[attr-defined]
        started = time.monotonic()
        for r in range(rounds):
            for name in (["async", "def"] if r % 2 == 0 else ["def", "async"]):
                seconds[name].append(run_once(tmp, inputs, agents[name], n))
            ratios.append(seconds["def"][-1] / seconds["async"][-1])
        total = time.monotonic() - started
        print("## runner_concurrency: a `def` agent vs the same agent `async`, 200 ms model\n")
        print("\n".join(machine_lines(tmp)))
    print(f"- {n} inputs on {n} keys, 1 model call each (openai SDK, sync vs async client) "
          f"to a fake server answering after {LATENCY * 1000:.0f} ms; LocalRunner, sqlite "
          f"sync, concurrency {CONCURRENCY}; {rounds} rounds alternated; medians; "
          f"{total:.1f} s\n")
    rows = [["async def + durable_execute_async (baseline)", f"{median(seconds['async']):.2f}",
             "1.00x"],
            ["def + durable_execute", f"{median(seconds['def']):.2f}",
             fmt_ratio(median(ratios))]]
    print(table(["agent", "s per run", "vs async"], rows))
    ratio = median(ratios)
    verdict = "meets" if ratio <= TARGET else "MISSES"
    print(f"\ndef agent: {ratio:.2f}x the async agent's wall time vs target <= {TARGET}x: "
          f"{verdict} the target. Floor: {math.ceil(n / CONCURRENCY)} waves x {LATENCY} s = "
          f"{math.ceil(n / CONCURRENCY) * LATENCY:.1f} s.")


if __name__ == "__main__":
    main()
