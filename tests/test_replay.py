"""Replay semantics (DESIGN 'Semantics' 2-5), ported from the peer tests of the seed system."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import pytest

from actionstate import (
    Agent,
    Event,
    InputEvent,
    NonDeterminismError,
    OutputEvent,
    RunnerContext,
    action,
)
from actionstate.errors import ActionFailedError, MemoryInCallError
from actionstate.records.state import CallStatus
from actionstate.testing.restart import Crash, Restartable


class Counting:
    """Tools that count how often they really run."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.crash_on: str | None = None
        self.keys: list[str] = []

    def llm(self, prompt: str) -> str:
        self.calls[prompt] += 1
        if self.crash_on == prompt:
            raise Crash(prompt)
        return prompt.upper()

    def failing(self, what: str) -> str:
        self.calls[what] += 1
        raise KeyError(what)

    def charge(self, amount: int, idempotency_key: str) -> str:
        self.calls["charge"] += 1
        self.keys.append(idempotency_key)
        if self.crash_on == "charge":
            raise Crash("after the side effect, before its record")
        return f"charged {amount}"


class TwoCalls(Agent):
    def __init__(self, tools: Counting) -> None:
        self.tools = tools

    @action(InputEvent)
    def work(self, event: InputEvent, ctx: RunnerContext) -> None:
        first = ctx.durable_execute(self.tools.llm, f"{event.input}-1")
        second = ctx.durable_execute(self.tools.llm, f"{event.input}-2")
        ctx.short_term_memory.set("last", second)
        ctx.send_event(OutputEvent(output=[first, second]))


def test_completed_action_is_skipped_and_its_outputs_and_memory_replayed(
        rs: Restartable) -> None:
    tools = Counting()
    agent = TwoCalls(tools)
    assert rs.run(agent, "k", 0, "a") == [["A-1", "A-2"]]
    rs.restart()
    rs.short_term.clear()
    assert rs.run(agent, "k", 0, "a") == [["A-1", "A-2"]]
    assert tools.calls == {"a-1": 1, "a-2": 1}
    assert rs.short_term["k"] == {"last": "A-2"}
    assert rs.settings.stats.actions_skipped == 1 and rs.settings.stats.calls_executed == 0


def test_cached_result_recovery_runs_only_the_unrecorded_call(rs: Restartable) -> None:
    tools = Counting()
    tools.crash_on = "a-2"
    with pytest.raises(Crash):
        rs.run(TwoCalls(tools), "k", 0, "a")
    tools.crash_on = None
    rs.restart()
    assert rs.run(TwoCalls(tools), "k", 0, "a") == [["A-1", "A-2"]]
    assert tools.calls == {"a-1": 1, "a-2": 2}
    assert rs.settings.stats.calls_replayed == 1


class FailsThenCrashes(Agent):
    def __init__(self, tools: Counting) -> None:
        self.tools = tools

    @action(InputEvent)
    def work(self, event: InputEvent, ctx: RunnerContext) -> None:
        try:
            ctx.durable_execute(self.tools.failing, "lookup")
        except KeyError as exc:
            ctx.send_event(OutputEvent(output=f"caught {exc.args[0]}"))
        ctx.durable_execute(self.tools.llm, "next")


def test_cached_exception_is_raised_again_with_its_original_type(rs: Restartable) -> None:
    tools = Counting()
    tools.crash_on = "next"
    with pytest.raises(Crash):
        rs.run(FailsThenCrashes(tools), "k", 0, "x")
    tools.crash_on = None
    rs.restart()
    assert rs.run(FailsThenCrashes(tools), "k", 0, "x") == ["caught lookup"]
    assert tools.calls["lookup"] == 1


class Switchable(Agent):
    def __init__(self, tools: Counting, prompts: list[str]) -> None:
        self.tools, self.prompts = tools, prompts

    @action(InputEvent)
    def work(self, event: InputEvent, ctx: RunnerContext) -> None:
        results = [ctx.durable_execute(self.tools.llm, p) for p in self.prompts]
        ctx.send_event(OutputEvent(output=results))


def _crash_after_three(rs: Restartable, tools: Counting) -> None:
    tools.crash_on = "p4"
    with pytest.raises(Crash):
        rs.run(Switchable(tools, ["p1", "p2", "p3", "p4"]), "k", 0, "x")
    tools.crash_on = None


def test_non_deterministic_replay_truncates_from_the_mismatch(rs: Restartable) -> None:
    tools = Counting()
    _crash_after_three(rs, tools)
    rs.restart()
    out = rs.run(Switchable(tools, ["p1", "CHANGED", "p3", "p4"]), "k", 0, "x")
    assert out == [["P1", "CHANGED", "P3", "P4"]]
    assert tools.calls == {"p1": 1, "p2": 1, "p3": 2, "p4": 2, "CHANGED": 1}
    assert rs.settings.stats.calls_truncated == 1
    rs.restart()  # the truncation was persisted: a later replay sees the new history
    rs.run(Switchable(tools, ["p1", "CHANGED", "p3", "p4"]), "k", 0, "x")
    assert tools.calls["CHANGED"] == 1


def test_divergence_policy_warn_logs_and_reexecutes(
        rs: Restartable, caplog: pytest.LogCaptureFixture) -> None:
    tools = Counting()
    _crash_after_three(rs, tools)
    rs.restart(policy="warn")
    with caplog.at_level(logging.WARNING, logger="actionstate"):
        rs.run(Switchable(tools, ["p1", "other"]), "k", 0, "x")
    assert "call position 1" in caplog.text and "re-executing" in caplog.text


def test_divergence_policy_fail_names_key_seq_action_position_and_both_calls(
        rs: Restartable) -> None:
    tools = Counting()
    _crash_after_three(rs, tools)
    rs.restart(policy="fail")
    with pytest.raises(ActionFailedError, match="action 'work' failed on key 'k' seq 0: "
                       "NonDeterminismError") as info:
        rs.run(Switchable(tools, ["p1", "other"]), "k", 0, "x")
    cause = info.value.__cause__
    assert isinstance(cause, NonDeterminismError)
    text = str(cause)
    for part in ("key 'k'", "seq 0", "action 'work'", "call position 1", "Counting.llm"):
        assert part in text
    assert tools.calls["other"] == 0


class Refunder(Agent):
    def __init__(self, tools: Counting, reconciled: list[str], reconcile_fails: bool) -> None:
        self.tools, self.reconciled, self.reconcile_fails = tools, reconciled, reconcile_fails

    def reconcile(self, key: str | None) -> str:
        self.reconciled.append(str(key))
        if self.reconcile_fails:
            raise LookupError("no trace of the charge")
        return "charged 5 (found by the reconciler)"

    @action(InputEvent)
    def work(self, event: InputEvent, ctx: RunnerContext) -> None:
        try:
            result = ctx.durable_execute(self.tools.charge, 5,
                                         reconciler=lambda: self.reconcile(ctx.call_id))
        except LookupError as exc:
            result = f"failed: {exc}"
        ctx.send_event(OutputEvent(output=result))


def test_reconciler_writes_pending_first_and_runs_instead_of_fn_on_recovery(
        rs: Restartable) -> None:
    tools, reconciled = Counting(), list[str]()
    tools.crash_on = "charge"
    with pytest.raises(Crash):
        rs.run(Refunder(tools, reconciled, False), "k", 0, "x")
    [(_, state)] = list(rs.store.states())
    assert state.calls[0].status is CallStatus.PENDING
    tools.crash_on = None
    rs.restart()
    assert rs.run(Refunder(tools, reconciled, False), "k", 0, "x") == [
        "charged 5 (found by the reconciler)"]
    assert tools.calls["charge"] == 1
    assert reconciled == tools.keys, "the reconciler sees the same idempotency key"
    rs.restart()
    assert rs.run(Refunder(tools, reconciled, False), "k", 0, "x") == [
        "charged 5 (found by the reconciler)"]
    assert len(reconciled) == 1 and tools.calls["charge"] == 1


def test_reconciler_failure_is_recorded_and_replayed(rs: Restartable) -> None:
    tools, reconciled = Counting(), list[str]()
    tools.crash_on = "charge"
    with pytest.raises(Crash):
        rs.run(Refunder(tools, reconciled, True), "k", 0, "x")
    tools.crash_on = None
    rs.restart()
    assert rs.run(Refunder(tools, reconciled, True), "k", 0, "x") == [
        "failed: no trace of the charge"]
    rs.restart()
    assert rs.run(Refunder(tools, reconciled, True), "k", 0, "x") == [
        "failed: no trace of the charge"]
    assert len(reconciled) == 1 and tools.calls["charge"] == 1


def test_reconciler_is_not_used_when_the_call_completed(rs: Restartable) -> None:
    tools, reconciled = Counting(), list[str]()
    assert rs.run(Refunder(tools, reconciled, False), "k", 0, "x") == ["charged 5"]
    assert reconciled == [] and tools.calls["charge"] == 1


def test_idempotency_key_is_stable_across_replay_and_distinct_per_call(
        rs: Restartable) -> None:
    tools = Counting()
    tools.crash_on = "charge"
    with pytest.raises(Crash):
        rs.run(Refunder(tools, [], False), "k", 0, "x")
    tools.crash_on = None
    rs.restart()
    rs.short_term.clear()

    class TwoCharges(Agent):
        @action(InputEvent)
        def work(self, event: InputEvent, ctx: RunnerContext) -> None:
            ctx.durable_execute(tools.charge, 5)
            ctx.durable_execute(tools.charge, 6)

    rs.run(TwoCharges(), "k", 0, "x")
    assert tools.keys[0] == tools.keys[1], "same call after the crash: same key"
    assert len(set(tools.keys)) == 2 and all(len(k) == 64 for k in tools.keys)


class Gathering(Agent):
    def __init__(self, log: list[str], crash: bool) -> None:
        self.log, self.crash = log, crash

    async def slow(self, name: str, delay: int) -> str:
        for _ in range(delay):
            await asyncio.sleep(0)
        self.log.append(name)
        return f"{name}!"

    @action(InputEvent)
    async def work(self, event: InputEvent, ctx: RunnerContext) -> None:
        results = await asyncio.gather(
            ctx.durable_execute_async(self.slow, "a", 30),
            ctx.durable_execute_async(self.slow, "b", 1),
            ctx.durable_execute_async(lambda: "sync in a thread"),
        )
        if self.crash:
            raise Crash("after the gather")
        ctx.send_event(OutputEvent(output=results))


def test_gathered_async_calls_replay_deterministically(rs: Restartable) -> None:
    log: list[str] = []
    with pytest.raises(Crash):
        rs.run(Gathering(log, crash=True), "k", 0, "x")
    assert log == ["b", "a"], "completion order differs from call order"
    rs.restart()
    assert rs.run(Gathering(log, crash=False), "k", 0, "x") == [["a!", "b!", "sync in a thread"]]
    assert log == ["b", "a"] and rs.settings.stats.calls_replayed == 3


class Step(Event):
    value: int
    hops: int


class Pipeline(Agent):
    """InputEvent -> Step (feedback) -> OutputEvent, with short-term memory per key."""

    @action(InputEvent)
    def start(self, event: InputEvent, ctx: RunnerContext) -> None:
        ctx.sensory_memory.set("seen.input", event.input)
        ctx.send_event(Step(value=event.input, hops=1))

    @action(Step)
    def step(self, event: Step, ctx: RunnerContext) -> None:
        total = ctx.short_term_memory.get("total", 0) + event.value
        ctx.short_term_memory.set("total", total)
        assert ctx.sensory_memory.get("seen.input") == event.value
        ctx.send_event(OutputEvent(output={"total": total, "seq": ctx.seq}))


def test_events_sent_by_actions_feed_back_and_memory_is_per_key(rs: Restartable) -> None:
    agent = Pipeline()
    assert rs.run(agent, "a", 0, 2) == [{"total": 2, "seq": 0}]
    assert rs.run(agent, "a", 1, 3) == [{"total": 5, "seq": 1}]
    assert rs.run(agent, "b", 0, 10) == [{"total": 10, "seq": 0}]


def test_unencodable_result_is_a_clear_error(rs: Restartable) -> None:
    class ReturnsObject(Agent):
        def __init__(self, fn: Any) -> None:
            self.fn = fn

        @action(InputEvent)
        def work(self, event: InputEvent, ctx: RunnerContext) -> Any:
            return ctx.durable_execute(self.fn)

    made = []

    def make() -> object:
        made.append(1)
        return object()

    make.__actionstate_name__ = "builtins.object"  # type: ignore[attr-defined]
    expected = (r"cannot store a value of type builtins.object \(the result of durable call "
                r"builtins.object\)")
    with pytest.raises(ActionFailedError, match=expected):
        rs.run(ReturnsObject(make), "k", 0, "x")
    rs.restart()
    with pytest.raises(ActionFailedError, match=expected):  # the same error, replayed
        rs.run(ReturnsObject(make), "k", 0, "x")
    assert made == [1], "recorded as the call's failure: the call is not run again"


@pytest.mark.parametrize(("scope", "where"), [("short_term", "sync"), ("sensory", "async")])
def test_memory_inside_a_durable_call_is_a_clear_error_not_a_recorded_outcome(
        rs: Restartable, scope: str, where: str) -> None:
    tools = Counting()

    class Toucher(Agent):
        def __init__(self, fixed: bool) -> None:
            self.fixed = fixed

        @action(InputEvent)
        async def work(self, event: InputEvent, ctx: RunnerContext) -> None:
            memory = ctx.short_term_memory if scope == "short_term" else ctx.sensory_memory

            def sync_touch(prompt: str) -> str:  # run in a worker thread by the async API
                if not self.fixed and where == "sync":
                    memory.set("seen", prompt)
                return tools.llm(prompt)

            async def async_touch(prompt: str) -> str:
                if not self.fixed and where == "async":
                    memory.get("seen")
                return tools.llm(prompt)

            first = ctx.durable_execute(tools.llm, "first")
            second = await ctx.durable_execute_async(sync_touch, "second")
            third = await ctx.durable_execute_async(async_touch, "third")
            ctx.send_event(OutputEvent(output=[first, second, third]))

    with pytest.raises(ActionFailedError) as info:
        rs.run(Toucher(fixed=False), "k", 0, "x")
    assert isinstance(info.value.__cause__, MemoryInCallError)
    what = "write" if where == "sync" else "read"
    assert f"{scope} memory {what} of 'seen' inside the durable call" in str(info.value)
    assert "pass the value in as an argument" in str(info.value)
    rs.restart()
    assert rs.run(Toucher(fixed=True), "k", 0, "x") == [["FIRST", "SECOND", "THIRD"]]
    assert tools.calls == {"first": 1, "second": 1, "third": 1}, (
        "the refused call was not recorded as failed: fixed, it runs once; the rest replay")
