"""What the store benchmarks (kafka_store.py, fluss_store.py) share: the record stream,
the rebuild in a fresh process and its table, the machine lines."""

from __future__ import annotations

import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core_common import code_version, cpu_model
from core_common import pct as sorted_pct

from actionstate.checkpoint import Marker
from actionstate.records.codec import encode_record
from actionstate.records.state import CallRecord, CallResult, CallStatus, StateKey
from actionstate.stores import open_store

RESULT = "x" * 1024
KEYS = 64


def call(i: int) -> CallRecord:
    """Record ``i`` of a stream over 64 keys, 10 calls per state (``put`` stamps the epoch)."""
    key = StateKey(f"agent-{i % KEYS}", i // (KEYS * 10), "act", "e" * 64)
    return CallRecord(key, (i // KEYS) % 10,
                      CallResult("llm", "d" * 64, CallStatus.SUCCEEDED, RESULT))


RECORD_BYTES = len(encode_record(call(0)))


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of unsorted ``values``."""
    return sorted_pct(sorted(values), q)


REBUILD_HEADERS = ["code", "records written", "records read", "states", "write s",
                   "rebuild s", "records/s", "vs baseline", "peak RSS growth MB",
                   "bytes/record"]


def rebuild_rows(size: int, write_seconds: float, rounds: int, baseline: str | None,
                 run: Callable[[str | None], tuple[float, int, int, int]]
                 ) -> list[list[str]]:
    """The rebuild table's rows for one size: ``rounds`` runs of ``run(None)`` (this
    code), interleaved with ``run(baseline)`` if given; medians across rounds."""
    subjects: list[str | None] = [None] if baseline is None else [baseline, None]
    results: dict[str | None, list[tuple[float, int, int, int]]] = {s: [] for s in subjects}
    for i in range(rounds):
        for subject in subjects[i % 2:] + subjects[:i % 2]:  # alternate who goes first
            results[subject].append(run(subject))
    rates = {s: statistics.median(count / seconds for seconds, count, _, _ in r)
             for s, r in results.items()}
    rows = []
    for subject, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        count = runs[0][1]
        rss_kib = statistics.median(r[2] for r in runs)
        ratio = f"{rates[subject] / rates[baseline]:.2f}x" if baseline else ""
        rows.append(["baseline" if subject else "this code", f"{size:,}", f"{count:,}",
                     f"{runs[0][3]:,}", f"{write_seconds:.1f}", f"{seconds:.2f}",
                     f"{rates[subject]:,.0f}", ratio, f"{rss_kib / 1024:,.0f}",
                     f"{rss_kib * 1024 / count:,.0f}"])
    return rows


def sizes(args: Any) -> list[int]:
    """The rebuild sizes the command line asks for (``--sizes``, ``--quick``, ``--big``)."""
    if args.sizes:
        return [int(float(s)) for s in args.sizes.split(",")]
    return [10_000] if args.quick else [10_000, 100_000] + ([1_000_000] if args.big else [])


def rebuild_child_run(script: str, args: list[str], src: str | None
                      ) -> tuple[float, int, int, int]:
    """One ``script --rebuild-child args`` process (with ``src`` first on its path, if
    given): seconds, records, peak RSS growth (KiB), states."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    out = subprocess.run([sys.executable, script, "--rebuild-child", *args], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2]), int(out[3])


def add_rebuild_arguments(parser: Any) -> None:
    """The rebuild options both store benchmarks take."""
    parser.add_argument("--rebuild-only", action="store_true", help="only the rebuild part")
    parser.add_argument("--sizes", help="rebuild sizes, comma-separated (default 10^4,10^5)")
    parser.add_argument("--rounds", type=int, default=1, help="rebuilds per size (medians)")
    parser.add_argument("--held", choices=("all", "last"), default="all",
                        help="states still held after the rebuild: all (nothing completed) "
                        "or last (each key's inputs but its last completed before the "
                        "checkpoint, as a runner restores them: skipped while reading by "
                        "code whose rebuild takes done=, else pruned after it)")
    parser.add_argument("--baseline", metavar="SRC",
                        help="also rebuild with the actionstate under SRC (e.g. another "
                        "worktree's src), interleaved, and give the ratio")


def done_through(size: int, held: str) -> int:
    """The seq up to which every key's inputs completed before the checkpoint: -1 (none)
    for ``held`` "all", else each key's last seq of the ``size`` records, less one."""
    return -1 if held == "all" else (size - 1) // (KEYS * 10) - 1


def rebuild_child(url: str, marker: str, done: str) -> None:
    """Run in a fresh process: rebuild ``url``'s store from ``marker`` (its JSON), the
    states of seq <= ``done`` completed (a runner's restore: skipped while reading if
    the code's rebuild takes ``done``, else pruned after, as its runner did), and print
    seconds, records, RSS growth (KiB) and states held."""
    store = open_store(url)
    through = int(done)
    skips = "done" in inspect.signature(store.rebuild).parameters
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    before = int(Path("/proc/self/statm").read_text().split()[1]) * page_kib  # RSS now
    begin = time.perf_counter()
    if through < 0 or not skips:
        count = store.rebuild(Marker.from_json(json.loads(marker)))
        for name in {sk.key for sk, _ in store.states()} if through >= 0 else ():
            store.prune(name, through)
    else:
        count = store.rebuild(Marker.from_json(json.loads(marker)),
                              done=lambda name: through)
    seconds = time.perf_counter() - begin
    # Peak RSS of this process's own memory, KiB: VmHWM, not ru_maxrss, which on Linux
    # also counts the parent's RSS at the fork (the writer's, growing with the records).
    after = int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                     if line.startswith("VmHWM:")).split()[1])
    print(seconds, count, after - before, len(store.index))
    store.close()


def machine_lines(service: str) -> list[str]:
    """The machine, the load at the start, the service measured and the code."""
    return [f"- machine: nproc {len(os.sched_getaffinity(0))}, CPU {cpu_model()}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
            f"- load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            f"- {service}",
            f"- code: actionstate {code_version()}"]
