"""Does the runner slow down as keys grow? Inputs/s and checkpoint cost vs distinct keys.

The same number of inputs spread over 64, 10,000, 100,000 and 1,000,000
distinct keys (1,000,000 inputs; ``--inputs=N`` caps both the inputs and the
key counts at N; ``--keys=64,1000000`` picks the key counts; ``--quick``:
20,000 inputs over 64, 1,000 and 20,000 keys).
The agent has one action: one ``ctx.durable_execute`` of a no-op and a 1 KB
string written to the key's short-term memory, then one output.
LocalRunner in process, sqlite:// ``group`` durability, concurrency 64,
checkpoint every 1 s, a new state dir per key count.

Then the checkpoint cost with that many idle keys in the state dir: 2,000 more
inputs on 64 keys, run again with a checkpoint every 20 ms; each
``StateDir.save_checkpoint`` is timed, and the keys it wrote counted.

One round per key count (the full run takes several minutes); the 64-key run
is the baseline.

Usage: .venv/bin/python benchmarks/runner_keys.py [--quick]
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

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
from actionstate.checkpoint import Checkpoint
from actionstate.runners.statedir import StateDir

MEMORY = "m" * 1024
TARGET = 0.9


def noop(n: int) -> int:
    return n


class Remember(Agent):
    @action(InputEvent)
    def work(self, event: InputEvent, ctx: RunnerContext) -> None:
        n = ctx.durable_execute(noop, event.input["n"])
        ctx.short_term_memory.set("note", MEMORY)
        ctx.send_event(OutputEvent(output=n))


class TimedStateDir(StateDir):
    """A state dir that times each checkpoint and counts the keys it writes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.seconds: list[float] = []
        self.keys_written: list[int] = []

    def save_checkpoint(self, checkpoint: Checkpoint, changed: Any = None, *,
                        fresh: bool = False) -> int:
        started = time.perf_counter()
        written = super().save_checkpoint(checkpoint, changed, fresh=fresh)
        self.seconds.append(time.perf_counter() - started)
        self.keys_written.append(len(changed or {}))
        return written


def write_inputs(path: Path, start: int, n: int, keys: int, mode: str = "w") -> None:
    with open(path, mode) as f:
        for i in range(start, start + n):
            f.write(json.dumps({"n": i, "k": f"key{i % keys}"}) + "\n")


def run(work: Path, inputs: Path, interval: float) -> tuple[float, int, TimedStateDir]:
    state = TimedStateDir(work / "state")
    elapsed, stats = run_local(Remember(), inputs, work, durability="group", state=state,
                               checkpoint_interval=interval)
    return elapsed, stats.inputs, state


def main() -> None:
    cap = [a for a in sys.argv if a.startswith("--inputs=")]
    only = [a for a in sys.argv if a.startswith("--keys=")]
    sys.argv = [a for a in sys.argv if not a.startswith(("--inputs=", "--keys="))]
    args = parse_args(__doc__.splitlines()[0])
    n, counts = (20_000, [64, 1_000, 20_000]) if args.quick else (
        1_000_000, [64, 10_000, 100_000, 1_000_000])
    if cap:
        n = int(cap[0].split("=", 1)[1])
        counts = sorted({min(c, n) for c in counts})
    if only:
        counts = [int(c) for c in only[0].split("=", 1)[1].split(",")]
    more = 2_000
    rows = []
    base_rate = 0.0
    with scratch_dir() as tmp:
        started = time.monotonic()
        for keys in counts:
            work = tmp / f"keys-{keys}"
            inputs = work / "in.jsonl"
            work.mkdir()
            write_inputs(inputs, 0, n, keys)
            elapsed, done, _ = run(work, inputs, 1.0)
            assert done == n, done
            rate = n / elapsed
            base_rate = base_rate or rate
            db = work / "state" / "checkpoint.db"
            db_mb = db.stat().st_size / 1e6
            write_inputs(inputs, n, more, 64, "a")
            _, done, timed = run(work, inputs, 0.02)
            assert done == more, done
            ms = median(timed.seconds) * 1000
            rows.append([f"{keys:,}", fmt_rate(rate), fmt_ratio(rate / base_rate),
                         f"{elapsed:.1f}", f"{db_mb:.1f}", f"{ms:.2f}",
                         f"{median(timed.keys_written):.0f}", str(len(timed.seconds))])
            shutil.rmtree(work)
        total = time.monotonic() - started
        print("## runner_keys: inputs/s and checkpoint cost vs distinct keys\n")
        print("\n".join(machine_lines(tmp)))
    print(f"- {n:,} inputs per key count, 1 durable call + 1 KB short-term memory write + 1 "
          "output each; LocalRunner, sqlite group, concurrency 64, checkpoint every 1 s; then "
          f"{more:,} inputs on 64 keys with a checkpoint every 20 ms over those idle keys; one "
          f"round; {total:.1f} s\n")
    print(table(["distinct keys", "inputs/s", "vs 64 keys", "s per run", "checkpoint.db MB",
                 "checkpoint ms (p50, later run)", "keys written per checkpoint (p50)",
                 "checkpoints"], rows))
    last = rows[-1]
    ratio = float(last[2].rstrip("x"))
    verdict = "meets" if ratio >= TARGET else "MISSES"
    print(f"\n{last[0]} keys: {last[2]} the inputs/s on 64 keys vs target >= {TARGET}x: "
          f"{verdict} the target.")


if __name__ == "__main__":
    main()
