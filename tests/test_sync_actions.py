"""Plain ``def`` actions and sync durable calls run as many inputs at once as the
runner's concurrency allows, against a fake model server that holds every answer.

The server counts requests as they arrive and answers none until the test
releases them: the number of requests in flight is the number of inputs the
runner runs at once. Run inline on the event loop (the behaviour before pool
threads), the first blocking call stops every other key and the count stays
at 1.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from actionstate import Agent, InputEvent, OutputEvent, RunnerContext, action
from actionstate.connectors.files import JsonlSink, JsonlSource
from actionstate.durable.chain import ChainSettings
from actionstate.durable.stats import RunStats
from actionstate.durable.threads import ActionThreads, SyncCommitter
from actionstate.errors import ActionFailedError, StoreError
from actionstate.llm import OpenAICompatibleModel
from actionstate.runners.local import LocalRunner
from actionstate.runners.statedir import StateDir
from actionstate.stores import open_store
from actionstate.stores.sqlite import SqliteActionStateStore
from actionstate.testing.fake_llm import FakeLLMServer

KEYS, CONCURRENCY = 24, 12  # more than the default executor's 6 threads on 2 cores


class SyncAgent(Agent):
    """A ``def`` action that asks the model once per input (blocking HTTP)."""

    model: OpenAICompatibleModel

    @action(InputEvent)
    def classify(self, event: InputEvent, ctx: RunnerContext) -> None:
        prompt = f"ticket {event.input['id']}"
        reply = ctx.durable_execute(self.model.reply, [{"role": "user", "content": prompt}])
        count = ctx.short_term_memory.get("count") or 0
        ctx.short_term_memory.set("count", count + 1)
        ctx.send_event(OutputEvent(output={"id": event.input["id"], "text": reply["text"],
                                           "count": count + 1}))


class AsyncAgentWithSyncCall(SyncAgent):
    """An ``async def`` action whose durable call is a blocking function."""

    @action(InputEvent)
    async def classify(self, event: InputEvent, ctx: RunnerContext) -> None:  # type: ignore[override]
        prompt = f"ticket {event.input['id']}"
        reply = await ctx.durable_execute_async(self.model.reply,
                                                [{"role": "user", "content": prompt}])
        ctx.send_event(OutputEvent(output={"id": event.input["id"], "text": reply["text"],
                                           "count": 1}))


def run_in_thread(tmp: Path, agent: Agent, inputs: int) -> tuple[threading.Thread, list[Any]]:
    with open(tmp / "in.jsonl", "w") as f:
        for i in range(inputs):
            f.write(json.dumps({"id": i, "k": f"key_{i % KEYS}"}) + "\n")
    result: list[Any] = []

    def main() -> None:
        state = StateDir(tmp / "state")
        store = open_store(state.default_store_url, durability="sync")
        sink = JsonlSink(tmp / "out.jsonl")
        runner = LocalRunner(agent, source=JsonlSource(tmp / "in.jsonl", "k"), sink=sink,
                             store=store, state_dir=state, settings=ChainSettings(job="t"),
                             concurrency=CONCURRENCY)
        try:
            result.append(asyncio.run(runner.run()))
        except BaseException as exc:
            result.append(exc)
        finally:
            sink.close()
            store.close()

    thread = threading.Thread(target=main)
    thread.start()
    return thread, result


@pytest.mark.parametrize("agent_type", [SyncAgent, AsyncAgentWithSyncCall])
def test_blocking_calls_run_concurrency_inputs_at_once(tmp_path: Path,
                                                       agent_type: type[SyncAgent]) -> None:
    with FakeLLMServer(hold_timeout=60) as server:
        for i in range(2 * KEYS):
            server.hold(f"ticket {i}")
        full = threading.Event()
        server.on_call = lambda total: full.set() if total >= CONCURRENCY else None
        agent = agent_type()
        agent.model = OpenAICompatibleModel(server.base_url, "fake", timeout=60)
        thread, result = run_in_thread(tmp_path, agent, 2 * KEYS)
        try:
            assert full.wait(30), (f"only {server.total_calls} of {CONCURRENCY} blocking "
                                   "calls in flight at once")
            # Every one of them is held: no input can finish, so no other call can start.
            assert server.total_calls == CONCURRENCY
        finally:
            server.release()
            thread.join(60)
    assert not thread.is_alive()
    stats = result[0]
    assert isinstance(stats, RunStats), stats
    assert stats.inputs == 2 * KEYS and stats.calls_executed == 2 * KEYS
    assert server.total_calls == 2 * KEYS
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(o["id"] for o in out) == list(range(2 * KEYS))
    if agent_type is SyncAgent:  # per-key order and memory, as with async actions
        for key in range(KEYS):
            mine = [o for o in out if o["id"] % KEYS == key]
            assert [o["id"] for o in mine] == [key, key + KEYS]
            assert [o["count"] for o in mine] == [1, 2]


class FailsOnce(SyncAgent):
    """Fails after its paid call on the first run; the restart serves the call."""

    fail = True

    @action(InputEvent)
    def classify(self, event: InputEvent, ctx: RunnerContext) -> None:
        super().classify(event, ctx)
        if self.fail:
            raise RuntimeError("the action broke after its call")


def test_a_def_action_serves_its_recorded_call_after_a_failure(tmp_path: Path) -> None:
    with FakeLLMServer() as server:
        agent = FailsOnce()
        agent.model = OpenAICompatibleModel(server.base_url, "fake", timeout=60)
        thread, result = run_in_thread(tmp_path, agent, 1)
        thread.join(60)
        assert not isinstance(result[0], RunStats) and server.total_calls == 1
        agent.fail = False
        thread, again = run_in_thread(tmp_path, agent, 1)
        thread.join(60)
    stats = again[0]
    assert isinstance(stats, RunStats), stats
    assert (stats.calls_executed, stats.calls_replayed, server.total_calls) == (0, 1, 1)


class OneFails(SyncAgent):
    """Input 0 waits on the model; input 1 fails once that call is out, ending the run."""

    arrived: threading.Event

    @action(InputEvent)
    def classify(self, event: InputEvent, ctx: RunnerContext) -> None:
        if event.input["id"] == 1:
            self.arrived.wait(30)
            raise RuntimeError("a bug in the action")
        super().classify(event, ctx)


def test_an_action_abandoned_on_its_thread_does_not_touch_the_store_after_the_run(
        tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": 0, "k": "a"}\n{"id": 1, "k": "b"}\n')
    state = StateDir(tmp_path / "state")
    store = open_store(state.default_store_url, durability="sync")
    late: list[object] = []
    put = store.put

    def watched_put(record: Any, **kw: Any) -> None:
        if store_closed:
            late.append(record)
        put(record, **kw)

    store.put = watched_put  # type: ignore[method-assign]
    store_closed = False
    threads = ActionThreads(4)
    sink = JsonlSink(tmp_path / "out.jsonl")
    with FakeLLMServer(hold_timeout=60) as server:
        server.hold("ticket 0")
        agent = OneFails()
        arrived = agent.arrived = threading.Event()
        server.on_call = lambda total: arrived.set()
        agent.model = OpenAICompatibleModel(server.base_url, "fake", timeout=60)
        runner = LocalRunner(agent, source=JsonlSource(tmp_path / "in.jsonl", "k"),
                             sink=sink, store=store, state_dir=state,
                             settings=ChainSettings(job="t", threads=threads), concurrency=4,
                             stop_grace=0.1)
        with pytest.raises(ActionFailedError):
            asyncio.run(runner.run())
        assert arrived.is_set(), "input 0's call was in flight when the run ended"
        sink.close()
        store.close()
        store_closed = True
        server.release()  # the abandoned call returns; its action goes on, on its thread
        threads.shutdown(wait=True)
    assert late == [], "nothing recorded into a closed store"
    assert server.succeeded["ticket 0"] == 1


def test_calls_put_before_a_commit_share_it() -> None:
    flushed: list[int] = []

    async def main() -> list[BaseException | None]:
        committer = SyncCommitter(lambda: flushed.append(1), asyncio.get_running_loop())
        tickets = [committer.ticket() for _ in range(8)]  # before the loop runs the commit
        errors: list[BaseException | None] = []

        def wait_on_a_thread() -> None:  # as a ``def`` action does
            try:
                committer.wait(tickets[-1])
                errors.append(None)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=wait_on_a_thread)
        thread.start()
        await asyncio.gather(*(committer.wait_async(t) for t in tickets[:-1]))
        await asyncio.to_thread(thread.join, 30)
        assert committer.commits == 1
        committer.close()
        return errors

    assert asyncio.run(main()) == [None], "the thread's call was covered too"
    assert flushed == [1], "eight calls, one commit"


def test_a_failed_commit_fails_every_call_it_covered_and_later_ones() -> None:
    def flush() -> None:
        raise StoreError("cannot write to the store: disk full")

    async def main() -> None:
        committer = SyncCommitter(flush, asyncio.get_running_loop())
        for _ in range(2):
            with pytest.raises(StoreError, match="disk full"):
                await committer.wait_async(committer.ticket())
        committer.close()

    asyncio.run(main())


def test_a_call_still_waiting_when_the_run_ends_is_told_so() -> None:
    async def main() -> list[BaseException]:
        committer = SyncCommitter(lambda: None, asyncio.get_running_loop())
        ticket = committer.ticket()
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                committer.wait(ticket + 1)  # a ticket no commit will cover
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=wait)
        thread.start()
        await committer.wait_async(ticket)
        committer.close()
        await asyncio.to_thread(thread.join, 30)
        return errors

    errors = asyncio.run(main())
    assert len(errors) == 1 and isinstance(errors[0], asyncio.CancelledError)


def test_a_commit_waits_for_the_disk_off_the_event_loop() -> None:
    """The COMMIT part a store returns runs on the commit thread: the loop goes on
    (here it is what lets the commit end), and calls put meanwhile join the next one."""
    released = threading.Event()
    begun: list[int] = []

    def begin() -> Callable[[], None]:
        begun.append(1)

        def finish() -> None:  # an fsync that ends only once the loop ran on
            if not released.wait(30):
                raise AssertionError("the event loop was blocked during the commit's wait")
        return finish

    async def main() -> int:
        committer = SyncCommitter(begin, asyncio.get_running_loop())
        first = committer.ticket()
        waiting = asyncio.ensure_future(committer.wait_async(first))
        await asyncio.sleep(0)  # one loop iteration: the commit ticket() scheduled begins
        second = committer.ticket()  # put while the first commit waits for the disk
        released.set()  # only the loop can get here: the commit did not hold it
        await waiting
        await committer.wait_async(second)
        committer.close()
        return committer.commits

    assert asyncio.run(main()) == 2
    assert begun == [1, 1], "the second call waits for a commit of its own"


def test_a_commit_that_fails_at_the_disk_fails_its_calls() -> None:
    def begin() -> Callable[[], None]:
        def finish() -> None:
            raise StoreError("cannot write to the store: disk I/O error")
        return finish

    async def main() -> None:
        committer = SyncCommitter(begin, asyncio.get_running_loop())
        ticket = committer.ticket()
        with pytest.raises(StoreError, match="disk I/O error"):
            await committer.wait_async(ticket)
        with pytest.raises(StoreError, match="disk I/O error"):
            committer.wait(committer.ticket())  # on the loop's thread: raised at once
        committer.close()

    asyncio.run(main())



_HELD = threading.Event()
"""Set by the final checkpoint's flush: frees the default executor's only thread."""


class _ReleasingStore(SqliteActionStateStore):
    """A SQLite store whose second plain flush (the final checkpoint's; the first is the
    fresh start's) first frees the default executor's thread."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        if self.flushes == 2:
            _HELD.set()
        super().flush()


def _double(n: int) -> int:
    return 2 * n


class _HoldsTheExecutor(Agent):
    """Its first input takes the default executor's only thread until the final flush,
    so the ticker's group commit waits in its queue when the run ends."""

    @action(InputEvent)
    async def work(self, event: InputEvent, ctx: RunnerContext) -> None:
        if event.input["id"] == 0:
            asyncio.get_running_loop().run_in_executor(None, _HELD.wait)
        n = await ctx.durable_execute_async(_double, event.input["id"])
        ctx.send_event(OutputEvent(output={"id": event.input["id"], "n": n}))


def test_a_group_commit_queued_when_the_run_ends_still_runs(tmp_path: Path) -> None:
    """The ticker is cancelled at the run's end while its group commit's COMMIT waits
    for a thread; that COMMIT holds the store, so it must still run (a cancelled one
    left the final checkpoint waiting forever: 2 in 10 random-kill runs hung)."""
    with open(tmp_path / "in.jsonl", "w") as f:
        for i in range(8):
            f.write(json.dumps({"id": i, "k": f"key_{i % 2}"}) + "\n")
    state = StateDir(tmp_path / "state")
    store = _ReleasingStore(tmp_path / "state" / "state.db", durability="group")
    sink = JsonlSink(tmp_path / "out.jsonl")
    runner = LocalRunner(_HoldsTheExecutor(), source=JsonlSource(tmp_path / "in.jsonl", "k"),
                         sink=sink, store=store, state_dir=state,
                         settings=ChainSettings(job="t"), concurrency=4,
                         checkpoint_interval=3600)
    result: list[Any] = []

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        result.append(await runner.run())

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the run's final checkpoint waits for a cancelled commit"
    assert _HELD.is_set() and store.flushes == 2
    assert result[0].outputs == 8
    sink.close()
    store.close()
