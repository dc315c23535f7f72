"""`actionstate run` end to end: what a durable call costs against a raw fsync.

The command users run (`python -m actionstate run ...`, a new process per run,
new state dir) over inputs with 3 durable calls each (tests/agents/counter.py's
shape: a ``def`` action, ``ctx.durable_execute`` of a function that doubles a
number, a short-term memory write, one output), on 64 keys, concurrency 64:

- sqlite:// ``sync`` (every call's record durable before the call returns),
- sqlite:// ``group`` (a commit every 5 ms; outputs held until it),
- memory:// (no I/O; what the Python costs alone).

Baseline, measured in the same rounds: append 1 KB to a plain file and
``os.fsync`` it, as many times as the run has durable calls; the ratio is
(run wall time / durable calls) / (baseline per append). The run's wall time
includes the process start (~0.3 s), so inputs are many.

fsyncs per input: one more sync run per round under ``strace -f -c`` counting
fsync + fdatasync (strace slows it; that run is not timed).

Usage: .venv/bin/python benchmarks/runner_fsync.py [--quick]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from core_common import REPO, fmt_ratio, machine_lines, median, parse_args, scratch_dir, table

CALLS, KEYS, TARGET = 3, 64, 1.3
AGENT = '''
from actionstate import Agent, InputEvent, OutputEvent, RunnerContext, action


def double(n: int) -> int:
    return 2 * n


class Three(Agent):
    @action(InputEvent)
    def work(self, event: InputEvent, ctx: RunnerContext) -> None:
        n = event.input["n"]
        total = sum(ctx.durable_execute(double, n + i) for i in range(3))
        ctx.short_term_memory.set("last", total)
        ctx.send_event(OutputEvent(output={"n": n, "total": total}))
'''


def raw_fsync(path: Path, count: int) -> float:
    """Seconds per 1 KB append + fsync."""
    block = b"x" * 1023 + b"\n"
    with open(path, "ab") as f:
        started = time.perf_counter()
        for _ in range(count):
            f.write(block)
            f.flush()
            os.fsync(f.fileno())
        elapsed = time.perf_counter() - started
    path.unlink()
    return elapsed / count


def run_cli(tmp: Path, kind: str, n: int, strace: bool = False) -> tuple[float, int]:
    """(wall seconds, fsync + fdatasync calls) of one `actionstate run`."""
    work = tmp / f"run-{kind}"
    work.mkdir()
    cmd = [sys.executable, "-m", "actionstate", "run", f"{tmp / 'three.py'}:Three",
           "--input", str(tmp / "in.jsonl"), "--key", "k", "--state", str(work / "state"),
           "--output", str(work / "out.jsonl"), "--quiet", "--concurrency", "64",
           "--durability", "group" if kind == "sqlite-group" else "sync"]
    if kind == "memory":
        cmd += ["--store", "memory://"]
    if strace:
        cmd = ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o",
               str(work / "strace.txt"), *cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    lines = (work / "out.jsonl").read_text().count("\n")
    assert lines == n, (lines, n)
    syncs = 0
    if strace:
        for line in (work / "strace.txt").read_text().splitlines():
            match = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)$",
                             line)
            if match:
                syncs += int(match.group(1))
    shutil.rmtree(work)
    return elapsed, syncs


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rounds, n = (2, 300) if args.quick else (5, 4000)
    kinds = ["sqlite-sync", "sqlite-group", "memory"]
    per_call: dict[str, list[float]] = {k: [] for k in kinds}
    ratio: dict[str, list[float]] = {k: [] for k in kinds}
    raw: list[float] = []
    syncs: list[float] = []
    with scratch_dir() as tmp:
        (tmp / "three.py").write_text(AGENT)
        (tmp / "in.jsonl").write_text("".join(
            json.dumps({"n": i, "k": f"key{i % KEYS}"}) + "\n" for i in range(n)))
        started = time.monotonic()
        for r in range(rounds):
            raw.append(raw_fsync(tmp / "raw.bin", n * CALLS))
            for kind in kinds[r % 3:] + kinds[:r % 3]:
                elapsed, _ = run_cli(tmp, kind, n)
                per_call[kind].append(elapsed / (n * CALLS))
                ratio[kind].append(per_call[kind][-1] / raw[-1])
            if shutil.which("strace"):
                syncs.append(run_cli(tmp, "sqlite-sync", n, strace=True)[1] / n)
        total = time.monotonic() - started
        print("## runner_fsync: `actionstate run` per durable call vs a raw fsync\n")
        print("\n".join(machine_lines(tmp)))
    print(f"- `python -m actionstate run` (new process each), {n:,} inputs on {KEYS} keys, "
          f"a `def` action with {CALLS} durable calls + 1 memory write + 1 output per input, "
          f"concurrency 64; baseline: 1 KB append + os.fsync, {n * CALLS:,} times; "
          f"{rounds} rounds, stores interleaved; medians; {total:.1f} s\n")
    names = {"sqlite-sync": "sqlite:// sync", "sqlite-group": "sqlite:// group",
             "memory": "memory:// (no I/O)"}
    rows = [["raw 1 KB append + fsync (baseline)", f"{median(raw) * 1e6:.1f}", "1.00x"]]
    rows += [[names[k], f"{median(per_call[k]) * 1e6:.1f}", fmt_ratio(median(ratio[k]))]
             for k in kinds]
    print(table(["subject", "µs per durable call (wall, end to end)", "vs raw fsync"], rows))
    if syncs:
        print(f"\nfsync + fdatasync per input, sqlite sync, whole process (strace -f -c): "
              f"{median(syncs):.2f} ({CALLS} durable calls per input)")
    got = median(ratio["sqlite-sync"])
    verdict = "meets" if got <= TARGET else "MISSES"
    print(f"\nsqlite sync: {got:.2f}x a raw fsync per durable call vs target <= {TARGET}x: "
          f"{verdict} the target.")


if __name__ == "__main__":
    main()
