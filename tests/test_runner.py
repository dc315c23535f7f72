"""LocalRunner in process: exactly-once outputs, per-key order, resume, group commit, prune."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from actionstate import Agent, InputEvent, OutputEvent, RunnerContext, action
from actionstate.checkpoint import Checkpoint
from actionstate.connectors.files import JsonlSink, JsonlSource
from actionstate.durable.chain import ChainSettings
from actionstate.durable.stats import RunStats
from actionstate.runners.keys import KeyStates
from actionstate.runners.local import LocalRunner
from actionstate.runners.statedir import StateDir
from actionstate.stores import Durability, open_store
from tests.agents.counter import Counter


def write_inputs(path: Path, n: int, keys: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "k": f"key_{i % keys}", "n": i}) + "\n")


def run(tmp: Path, agent: Agent, *, durability: Durability = "sync", interval: float = 1.0,
        concurrency: int = 8, progress: Any = None) -> RunStats:
    state = StateDir(tmp / "state")
    store = open_store(state.default_store_url, durability=durability)
    sink = JsonlSink(tmp / "out.jsonl")
    runner = LocalRunner(agent, source=JsonlSource(tmp / "in.jsonl", "k"), sink=sink,
                         store=store, state_dir=state, settings=ChainSettings(job="t"),
                         concurrency=concurrency, checkpoint_interval=interval,
                         progress=progress)
    try:
        return asyncio.run(runner.run())
    finally:
        sink.close()
        store.close()


def outputs(tmp: Path) -> list[Any]:
    return [json.loads(line) for line in (tmp / "out.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("durability", ["sync", "group"])
def test_every_input_gives_one_output_in_per_key_order(
        tmp_path: Path, durability: Durability) -> None:
    write_inputs(tmp_path / "in.jsonl", 200, 7)
    stats = run(tmp_path, Counter(), durability=durability)
    out = outputs(tmp_path)
    assert sorted(o["id"] for o in out) == list(range(200))
    assert stats.inputs == 200 and stats.outputs == 200 and stats.calls_executed == 200
    for key in {o["key"] for o in out}:
        mine = [o for o in out if o["key"] == key]
        assert [o["seq"] for o in mine] == list(range(len(mine)))
        ids = [o["id"] for o in mine]
        assert mine[-1]["total"] == sum(2 * i for i in ids)


def test_second_run_resumes_at_the_end_and_appended_inputs_continue(tmp_path: Path) -> None:
    write_inputs(tmp_path / "in.jsonl", 50, 5)
    run(tmp_path, Counter())
    assert run(tmp_path, Counter()).calls_executed == 0
    with open(tmp_path / "in.jsonl", "a") as f:
        f.write(json.dumps({"id": 50, "k": "key_0", "n": 50}) + "\n")
    stats = run(tmp_path, Counter())
    assert stats.calls_executed == 1
    out = outputs(tmp_path)
    assert len(out) == 51
    last = out[-1]
    assert last["seq"] == 10 and last["total"] == sum(2 * i for i in range(0, 51, 5))


class Blocking(Agent):
    """Holds input 'hold' in flight until a checkpoint has been taken."""

    def __init__(self) -> None:
        self.checkpointed = asyncio.Event()

    @action(InputEvent)
    async def work(self, event: InputEvent, ctx: RunnerContext) -> None:
        first = ctx.durable_execute(str.upper, event.input["id"])
        if event.input["id"] == "hold":
            await self.checkpointed.wait()
        ctx.send_event(OutputEvent(output=first))


def test_checkpoint_keeps_inputs_in_flight_and_prunes_only_completed_seqs(
        tmp_path: Path) -> None:
    with open(tmp_path / "in.jsonl", "w") as f:
        for i, key in enumerate(["a", "a", "b", "a"]):
            f.write(json.dumps({"id": "hold" if i == 1 else f"x{i}", "k": key}) + "\n")
    agent = Blocking()
    seen: list[tuple[Checkpoint, set[tuple[str, int]]]] = []

    def on_checkpoint(stats: RunStats, elapsed: float) -> None:
        # what a restart from this checkpoint, taken while 'hold' is in flight, reads
        if not agent.checkpointed.is_set():
            checkpoint = StateDir(tmp_path / "state").load_checkpoint()
            assert checkpoint is not None
            store = open_store(checkpoint.store)
            store.rebuild(checkpoint.marker, read_only=True)  # a claim would fence the run
            seen.append((checkpoint, {(sk.key, sk.seq) for sk, _ in store.states()}))
            # What a restore holds: the rebuild skips the inputs done before the checkpoint.
            keys = KeyStates(StateDir(tmp_path / "state"), store)
            keys.restore(checkpoint)
            store.rebuild(checkpoint.marker, read_only=True, done=keys.done_through)
            restored.update((sk.key, sk.seq) for sk, _ in store.states())
            store.close()
            agent.checkpointed.set()

    restored: set[tuple[str, int]] = set()
    run(tmp_path, agent, interval=0.01, progress=on_checkpoint)
    checkpoint, held = seen[0]
    pending = {(p.key, p.seq) for p in checkpoint.pending}
    assert restored == held & pending, "a restore holds the states of inputs in flight only"
    assert ("a", 1) in pending and ("a", 2) in pending, "in flight and queued behind it"
    assert ("b", 0) not in pending and ("a", 0) not in pending
    assert ("a", 1) in held, "the in-flight input's recorded call survives the checkpoint"
    assert ("a", 0) not in held, "completed before the in-flight input: not reread"
    assert sorted(outputs(tmp_path)) == ["HOLD", "X0", "X2", "X3"]


def test_group_mode_holds_outputs_until_their_records_are_durable(tmp_path: Path) -> None:
    write_inputs(tmp_path / "in.jsonl", 300, 64)
    stats = run(tmp_path, Counter(), durability="group", concurrency=64)
    assert stats.outputs == 300
    checkpoint = StateDir(tmp_path / "state").load_checkpoint()
    assert checkpoint is not None
    assert checkpoint.pending == [] and checkpoint.sink["offset"] == (
        tmp_path / "out.jsonl").stat().st_size


def test_a_checkpoint_writes_only_the_keys_that_changed_and_lets_idle_keys_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_inputs(tmp_path / "in.jsonl", 2000, 1000)
    run(tmp_path, Counter())
    written: list[int] = []
    save = StateDir.save_checkpoint

    def counting(self: StateDir, checkpoint: Checkpoint, changed: Any = None,
                 **kw: Any) -> int:
        written.append(len(changed or {}))
        return save(self, checkpoint, changed, **kw)

    monkeypatch.setattr(StateDir, "save_checkpoint", counting)
    with open(tmp_path / "in.jsonl", "a") as f:
        for i in range(2000, 2003):
            f.write(json.dumps({"id": i, "k": "key_7", "n": i}) + "\n")
    state = StateDir(tmp_path / "state")
    store = open_store(state.default_store_url)
    sink = JsonlSink(tmp_path / "out.jsonl")
    runner = LocalRunner(Counter(), source=JsonlSource(tmp_path / "in.jsonl", "k"), sink=sink,
                         store=store, state_dir=state, settings=ChainSettings(job="t"))
    try:
        stats = asyncio.run(runner.run())
    finally:
        sink.close()
        store.close()
    assert stats.inputs == 3 and sum(written) == 1, "one key of 1,000 changed"
    assert runner._keys._next_seq == {} and runner._keys._committed == {}, (
        "no key held after the run")
    last = outputs(tmp_path)[-1]
    assert last["seq"] == 4 and last["total"] == sum(2 * i for i in [7, 1007, 2000, 2001, 2002])


def test_a_state_dir_of_format_1_resumes_and_moves_to_the_new_layout(tmp_path: Path) -> None:
    """Format 1 kept every key inside checkpoint.json; such a state dir resumes."""
    write_inputs(tmp_path / "in.jsonl", 30, 3)
    run(tmp_path, Counter())
    state = tmp_path / "state"
    head = StateDir(state).load_checkpoint()
    assert head is not None
    keys = list(StateDir(state).key_states())
    legacy = {"format": 1, **head.to_json(), "version": 2,
              "next_seq": {k: n for k, n, _ in keys}, "short_term": {k: m for k, _, m in keys}}
    for name in ("checkpoint.db", "checkpoint.db-wal", "checkpoint.db-shm"):
        (state / name).unlink(missing_ok=True)
    (state / "checkpoint.json").write_text(json.dumps(legacy))
    (state / "actionstate.json").write_text('{"format": 1}')
    with open(tmp_path / "in.jsonl", "a") as f:
        f.write(json.dumps({"id": 30, "k": "key_0", "n": 30}) + "\n")
    stats = run(tmp_path, Counter())
    assert stats.calls_executed == 1
    last = outputs(tmp_path)[-1]
    assert last["seq"] == 10 and last["total"] == sum(2 * i for i in range(0, 31, 3))
    assert not (state / "checkpoint.json").exists()
    assert json.loads((state / "actionstate.json").read_text()) == {"format": 2}
    assert len(list(StateDir(state).key_states())) == 3


class _Slow(Agent):
    """Each input takes 0.3 s (a model's answer time), one at a time."""

    @action(InputEvent)
    async def handle(self, event: InputEvent, ctx: RunnerContext) -> None:
        await asyncio.sleep(0.3)
        ctx.send_event(OutputEvent(output=event.input))


def test_progress_is_reported_every_second_whatever_the_checkpoint_interval(
        tmp_path: Path) -> None:
    """With checkpoints every 10 minutes, a run of about 2.4 s still reports its
    progress while it goes (it used to report only after each checkpoint)."""
    import actionstate

    seen: list[int] = []
    actionstate.run(_Slow, source=[{"k": "a", "n": n} for n in range(8)], key="k", sink=[],
                    state=tmp_path / "state", checkpoint_interval=600, concurrency=1,
                    progress=lambda stats, elapsed: seen.append(stats.inputs))
    during = [n for n in seen if n < 8]
    assert during, f"no report before the end: {seen}"
    assert seen[-1] == 8, "the last report has every input"
