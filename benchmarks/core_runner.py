"""End-to-end LocalRunner throughput: inputs x 3 durable calls each.

An agent with one action that makes 3 ``ctx.durable_execute`` calls of a
no-op and sends one OutputEvent, run by LocalRunner in process (as
tests/test_runner.py does: JsonlSource -> LocalRunner -> JsonlSink, StateDir
with checkpoints every 1 s, concurrency 64) over 10,000 inputs on 1,000 keys.
The action is a ``def``: LocalRunner runs it on a pool thread.
Stores: sqlite:// in ``sync`` durability (commit + fsync per durable call),
sqlite:// in ``group`` durability (commit every 5 ms) and, as the baseline,
memory:// (no I/O). Each round runs every store once (order rotated), on a new
state dir; medians over rounds. Each run's outputs are checked (one per input).

Usage: .venv/bin/python benchmarks/core_runner.py [--quick]
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from core_common import (
    fmt_rate,
    fmt_ratio,
    machine_lines,
    median,
    parse_args,
    run_local,
    scratch_dir,
    table,
)

from actionstate import Agent, InputEvent, OutputEvent, RunnerContext, action

CALLS = 3
KEYS = 1000


def noop(n: int, call: int) -> int:
    return n + call


class ThreeCalls(Agent):
    @action(InputEvent)
    def work(self, event: InputEvent, ctx: RunnerContext) -> None:
        n = event.input["n"]
        total = 0
        for call in range(CALLS):
            total += ctx.durable_execute(noop, n, call)
        ctx.send_event(OutputEvent(output={"id": n, "total": total}))


def write_inputs(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"n": i, "k": f"key{i % KEYS}", "text": "hello " * 8}) + "\n")


def run_once(tmp: Path, inputs: Path, store_kind: str, n: int) -> tuple[float, float]:
    """One run on a new state dir; returns (wall seconds, process CPU seconds)."""
    work = tmp / f"run-{store_kind}"
    cpu_started = time.process_time()
    elapsed, stats = run_local(
        ThreeCalls(), inputs, work, durability="group" if store_kind == "sqlite-group" else "sync",
        store_url="memory://" if store_kind == "memory" else None)
    cpu = time.process_time() - cpu_started
    lines = (work / "out.jsonl").read_text().count("\n")
    assert stats.inputs == n and stats.outputs == n and lines == n, (stats, lines)
    assert stats.calls_executed == n * CALLS, stats
    shutil.rmtree(work)
    return elapsed, cpu


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rounds, n = (3, 300) if args.quick else (3, 10_000)
    kinds = ["memory", "sqlite-group", "sqlite-sync"]
    rate: dict[str, list[float]] = {k: [] for k in kinds}
    ratio: dict[str, list[float]] = {k: [] for k in kinds}
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    cpu_rate: dict[str, list[float]] = {k: [] for k in kinds}
    with scratch_dir() as tmp:
        inputs = tmp / "in.jsonl"
        write_inputs(inputs, n)
        started = time.monotonic()
        for r in range(rounds):
            for kind in kinds[r % 3:] + kinds[:r % 3]:
                elapsed, cpu = run_once(tmp, inputs, kind, n)
                rate[kind].append(n / elapsed)
                cpu_rate[kind].append(n / cpu)
                seconds[kind].append(elapsed)
            for kind in kinds:
                ratio[kind].append(rate[kind][-1] / rate["memory"][-1])
        total = time.monotonic() - started

        print("## core_runner: LocalRunner end to end, 3 durable calls per input\n")
        print("\n".join(machine_lines(tmp)))
    print(f"- {n:,} inputs over {min(n, KEYS):,} keys, 1 action x {CALLS} ctx.durable_execute "
          "(no-op) + 1 OutputEvent per input; concurrency 64, checkpoint every 1 s, group "
          f"commit every 5 ms; {rounds} rounds, stores interleaved (order rotated); medians "
          f"across rounds; {total:.1f} s\n")
    names = {"memory": "memory:// (baseline, no I/O)", "sqlite-group": "sqlite:// group",
             "sqlite-sync": "sqlite:// sync"}
    rows = []
    for kind in kinds:
        mid = float(median(rate[kind]))
        rows.append([names[kind], fmt_rate(mid), fmt_rate(mid * CALLS),
                     f"{median(seconds[kind]):.2f}", fmt_ratio(median(ratio[kind])),
                     fmt_rate(median(cpu_rate[kind]))])
    print(table(["store", "inputs/s", "calls/s", "s per run", "vs memory://",
                 "inputs per CPU-s"], rows))
    print(f"\nRecords per input: {CALLS} CallRecords + 1 CompleteRecord; in sync durability "
          "each CallRecord is its own commit + WAL fsync and the CompleteRecord rides on the "
          f"next one, so sync throughput is bounded by ~1 / ({CALLS} x fsync latency). The "
          "agent is a `def` action: it runs on a pool thread. inputs per CPU-s: inputs / "
          "process CPU time (fsync waits use no CPU).")


if __name__ == "__main__":
    main()
