"""Recorded calls/s in ``group`` durability with 64 keys in flight.

64 asyncio tasks (one per key) each run actions through an ActionContext, as
``process_input`` does: ``store.get`` of the StateKey, a new ActionContext,
10 durable calls of a no-op, then the action's CompleteRecord; each task
yields to the event loop once per action (as an action awaiting I/O would).
A ticker task commits the group like ``LocalRunner._ticker`` /
``Outputs.commit_group_off_loop`` (runners/outputs.py):
``asyncio.wait_for(done.wait(), 0.005)``, then
``store.flush_begin(write_now=False)`` on the loop (SQLite takes the buffered
rows) and ``await asyncio.to_thread`` of the commit it returns, which writes
them in a transaction and commits (the tasks go on putting meanwhile). The
clock stops after the final flush, so every counted call's record is durable
(flushed); a call counts once the flush that started after it was recorded has
returned. Every second (LocalRunner's default checkpoint interval) the ticker
prunes the states of the actions completed since, as a checkpoint does
(``KeyStates.prune``): a run's index holds the inputs in flight, not every state
it ever recorded. Two more runs never prune (the measure of the tables before
2026-12-02's evening): their index, and the heap the cyclic GC walks, grow with
every call.

Two call variants: ``ctx.durable_execute(fn)`` with a plain function, and
``await ctx.durable_execute_async(coro_fn)`` with a coroutine no-op.
Baseline in the same run (interleaved rounds): the same loop on the memory://
store (no I/O, flush is a no-op): the upper bound of the engine. A third SQLite
run, sync variant, commits with ``flush_begin(write_now=True)`` (the rows written
on the loop, only the COMMIT on the thread: how group commits worked before).

Usage: .venv/bin/python benchmarks/core_group_calls.py [--quick]
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core_common import (
    fmt_rate,
    fmt_ratio,
    machine_lines,
    median,
    parse_args,
    pct,
    scratch_dir,
    table,
)

from actionstate.durable.execution import ActionContext
from actionstate.durable.stats import RunStats
from actionstate.events import InputEvent
from actionstate.records.state import CompleteRecord, StateKey
from actionstate.stores.base import ActionStateStore
from actionstate.stores.memory import MemoryActionStateStore
from actionstate.stores.sqlite import SqliteActionStateStore

KEYS = 64
CALLS_PER_ACTION = 10
TICK = 0.005  # LocalRunner's default group_interval
RESULT = "r" * 256
TARGET = 50_000
CHECKPOINT = 1.0  # LocalRunner's default checkpoint interval: when it prunes
Config = tuple[str, str, bool]
"""(store kind, call variant, pruned at each checkpoint)."""


def noop(key: int, action: int, call: int) -> str:
    return RESULT


async def anoop(key: int, action: int, call: int) -> str:
    return RESULT


@dataclass
class Outcome:
    calls: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0
    flushes: int = 0
    flushed_records: list[int] = field(default_factory=list)
    flush_seconds: list[float] = field(default_factory=list)


async def drive(store: ActionStateStore, variant: str, actions: int,
                write_now: bool = False, prune: bool = True) -> Outcome:
    store.rebuild(None)
    store.flush()
    stats = RunStats()
    outcome = Outcome()
    recorded = [0]  # calls recorded (put) so far
    pending_records = [0]
    done = asyncio.Event()
    completed: dict[str, int] = {}  # key -> its last completed action's seq, since a prune
    eids = [hashlib.sha256(f"event{a}".encode()).hexdigest() for a in range(actions)]

    async def worker(k: int) -> None:
        short_term: dict[str, Any] = {}
        for a in range(actions):
            key = StateKey(f"key{k}", a, "work", eids[a])
            state = store.get(key)
            ctx = ActionContext(key, state, store, short_term, {}, job="bench", stats=stats)
            if variant == "sync":
                for c in range(CALLS_PER_ACTION):
                    ctx.durable_execute(noop, k, a, c)
            else:
                for c in range(CALLS_PER_ACTION):
                    await ctx.durable_execute_async(anoop, k, a, c)
            store.put(CompleteRecord(key, InputEvent(input={"n": a}), tuple(ctx.sent),
                                     tuple(ctx.memory_updates)))
            recorded[0] += CALLS_PER_ACTION
            pending_records[0] += CALLS_PER_ACTION + 1
            completed[key.key] = a
            await asyncio.sleep(0)

    async def commit() -> None:
        calls, records = recorded[0], pending_records[0]  # put before the flush starts
        pending_records[0] = 0
        t0 = time.perf_counter()
        finish = store.flush_begin(write_now=write_now)  # as the runner commits a group
        if finish is not None:
            await asyncio.to_thread(finish)
        if records:  # a group commit that wrote something
            outcome.flush_seconds.append(time.perf_counter() - t0)
            outcome.flushed_records.append(records)
        outcome.calls = calls  # every call recorded before this flush is durable

    async def ticker() -> None:
        last_checkpoint = time.monotonic()
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), TICK)
            except TimeoutError:
                pass
            await commit()
            if prune and time.monotonic() - last_checkpoint >= CHECKPOINT:
                for agent_key, seq in completed.items():  # as a checkpoint prunes
                    store.prune(agent_key, seq)
                completed.clear()
                last_checkpoint = time.monotonic()

    started, cpu_started = time.perf_counter(), time.process_time()
    tick_task = asyncio.create_task(ticker())
    await asyncio.gather(*(worker(k) for k in range(KEYS)))
    done.set()
    await tick_task
    await commit()
    outcome.elapsed = time.perf_counter() - started
    outcome.cpu = time.process_time() - cpu_started
    outcome.flushes = len(outcome.flushed_records)
    expected = KEYS * actions * CALLS_PER_ACTION
    assert outcome.calls == expected and stats.calls_executed == expected, (outcome, stats)
    return outcome


def run_one(tmp: Path, store_kind: str, variant: str, pruned: bool, actions: int,
            index: int) -> Outcome:
    if store_kind.startswith("sqlite"):
        path = tmp / f"group-{index}.db"
        store: ActionStateStore = SqliteActionStateStore(path, "group")
    else:
        store = MemoryActionStateStore(durability="group")
    try:
        return asyncio.run(drive(store, variant, actions, write_now=store_kind == "sqlite-loop",
                                 prune=pruned))
    finally:
        store.close()
        if store_kind.startswith("sqlite"):
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rounds, actions = (3, 5) if args.quick else (5, 200)
    configs: list[Config] = [
        ("memory", "sync", True), ("sqlite", "sync", True), ("sqlite-loop", "sync", True),
        ("memory", "async", True), ("sqlite", "async", True),
        ("memory", "sync", False), ("sqlite", "sync", False)]
    rates: dict[Config, list[float]] = {c: [] for c in configs}
    cpu_rates: dict[Config, list[float]] = {c: [] for c in configs}
    ratios: dict[Config, list[float]] = {c: [] for c in configs}
    per_flush: dict[Config, list[float]] = {c: [] for c in configs}
    flush_ms: dict[Config, list[float]] = {c: [] for c in configs}
    interval_ms: dict[Config, list[float]] = {c: [] for c in configs}
    with scratch_dir() as tmp:
        run_one(tmp, "sqlite", "sync", True, 2, -1)  # warm up imports, caches
        started = time.monotonic()
        index = 0
        for r in range(rounds):
            order = configs[r % len(configs):] + configs[:r % len(configs)]
            for config in order:
                out = run_one(tmp, *config, actions, index)
                index += 1
                rates[config].append(out.calls / out.elapsed)
                cpu_rates[config].append(out.calls / out.cpu)
                per_flush[config].append(sum(out.flushed_records) / out.flushes)
                flush_ms[config].append(
                    pct(sorted(out.flush_seconds), 0.5) * 1000)
                interval_ms[config].append(out.elapsed / out.flushes * 1000)
            for config in configs:
                baseline = ("memory", config[1], config[2])
                ratios[config].append(rates[config][-1] / rates[baseline][-1])
        elapsed = time.monotonic() - started

        print("## core_group_calls: recorded calls/s, `group` durability, 64 keys in flight\n")
        print("\n".join(machine_lines(tmp)))
        print(f"- {rounds} rounds; per run {KEYS} tasks x {actions} actions x "
              f"{CALLS_PER_ACTION} calls = {KEYS * actions * CALLS_PER_ACTION:,} calls "
              f"(+1 CompleteRecord per action); group commit every {TICK * 1000:.0f} ms "
              f"(LocalRunner ticker); completed states pruned every {CHECKPOINT:.0f} s (its "
              f"checkpoint), but in the rows marked never pruned, whose ratio is to memory:// "
              f"never pruned; result {len(RESULT)} B str; configs interleaved, order rotated "
              f"per round; medians across rounds; {elapsed:.1f} s\n")
    names = {
        ("memory", "sync"): "memory:// (baseline), ctx.durable_execute(fn)",
        ("sqlite", "sync"): "sqlite:// group, ctx.durable_execute(fn)",
        ("sqlite-loop", "sync"): "sqlite:// group, rows written on the loop (write_now=True)",
        ("memory", "async"): "memory:// (baseline), await ctx.durable_execute_async(coro)",
        ("sqlite", "async"): "sqlite:// group, await ctx.durable_execute_async(coro)",
    }
    rows = []
    for config in configs:
        name = names[config[:2]] + ("" if config[2] else ", never pruned")
        rows.append([name, fmt_rate(median(rates[config])),
                     fmt_ratio(median(ratios[config])), fmt_rate(median(cpu_rates[config])),
                     f"{median(per_flush[config]):,.0f}",
                     f"{median(interval_ms[config]):.1f}",
                     f"{median(flush_ms[config]):.2f}"])
    print(table(["subject", "flushed calls/s", "vs memory://", "calls per CPU-s",
                 "records/flush",
                 "ms between flushes", "flush p50 ms"], rows))
    for variant in ("sync", "async"):
        got = median(rates[("sqlite", variant, True)])
        verdict = "meets" if got >= TARGET else "MISSES"
        print(f"\nsqlite group, {variant} variant: {got:,.0f} calls/s vs target ≥ "
              f"{TARGET:,}: {verdict} the target "
              f"({1e6 / got:.1f} µs per call; memory:// bound "
              f"{median(rates[('memory', variant, True)]):,.0f} calls/s).")
    print("\ncalls per CPU-s: calls / process CPU time (what one uncontended core would "
          "do; the event loop and the SQLite writes share one thread).")
    print("records/flush and ms between flushes show the real group size: each event-loop "
          "iteration runs one action of every task, and the ticker's "
          "asyncio.wait_for(done.wait(), 0.005) takes several iterations to return after "
          "its timeout, so commits come far less often than every 5 ms under load.")


if __name__ == "__main__":
    main()
