"""Shared helpers of the core_* benchmarks (not a benchmark itself).

Machine description, a scratch directory on the same disk as the repo
(``.bench-tmp/``, removed at the end), percentiles and markdown tables.
Running it prints the machine description.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import actionstate
from actionstate.stores import Durability

REPO = Path(__file__).resolve().parent.parent
BENCH_TMP = REPO / ".bench-tmp"


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few rounds (a smoke test, ~15 s)")
    return parser.parse_args()


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A fresh directory under ``<repo>/.bench-tmp`` (same disk as the repo), removed after."""
    BENCH_TMP.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="bench-", dir=BENCH_TMP))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty: another benchmark is running
            BENCH_TMP.rmdir()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def disk_of(path: Path) -> str:
    try:
        out = subprocess.run(["df", "-hT", str(path)], capture_output=True, text=True,
                             check=True).stdout.splitlines()
        fields = out[-1].split()
        return f"{fields[0]} ({fields[1]}, {fields[2]}, mounted on {fields[-1]})"
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def code_version() -> str:
    """The commit of the code measured, and whether src/ has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}{' + uncommitted changes in src/' if dirty else ''}"


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine_lines(tmp: Path) -> list[str]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return [
        f"- machine: nproc {usable}, CPU {cpu_model()}, {platform.system()} "
        f"{platform.release()}",
        f"- temp dir disk: {disk_of(tmp)}",
        f"- Python {platform.python_version()} ({sys.executable}), "
        f"SQLite {sqlite3.sqlite_version}",
        f"- load average (1/5/15 min) at the end of the run: {load_average()} "
        "(other work on the machine makes absolute numbers noisy; ratios are within-round)",
        f"- code: actionstate {code_version()} (imported from "
        f"{Path(actionstate.__file__).parent})",
    ]


def pct(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of an already sorted sequence (nearest rank)."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_us(ns: float) -> str:
    return f"{ns / 1000:.1f}"


def fmt_rate(per_s: float) -> str:
    return f"{per_s:,.0f}"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"


if __name__ == "__main__":
    with scratch_dir() as tmp:
        print("\n".join(machine_lines(tmp)))


def run_local(agent: Any, inputs: Path, work: Path, *, durability: Durability = "sync",
              store_url: str | None = None, concurrency: int = 64,
              checkpoint_interval: float = 1.0, state: Any = None) -> tuple[float, Any]:
    """One LocalRunner run of ``agent`` over ``inputs`` (key field ``k``) in ``work``,
    as ``actionstate run`` does; returns (wall seconds, RunStats)."""
    from actionstate.connectors.files import JsonlSink, JsonlSource
    from actionstate.durable.chain import ChainSettings
    from actionstate.runners.local import LocalRunner
    from actionstate.runners.statedir import StateDir
    from actionstate.stores import open_store

    state = state if state is not None else StateDir(work / "state")
    store = open_store(store_url or state.default_store_url, durability=durability)
    sink = JsonlSink(work / "out.jsonl")
    runner = LocalRunner(agent, source=JsonlSource(inputs, "k"), sink=sink, store=store,
                         state_dir=state, settings=ChainSettings(job="bench"),
                         concurrency=concurrency, checkpoint_interval=checkpoint_interval)
    started = time.perf_counter()
    try:
        stats = asyncio.run(runner.run())
    finally:
        sink.close()
        store.close()
        state.close()
    return time.perf_counter() - started, stats
