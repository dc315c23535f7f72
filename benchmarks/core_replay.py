"""Replay speed after a crash: rebuild the index, then serve every call from the record.

Setup (once): record N calls (default 200,000 = 20,000 actions x 10 calls over
1,000 keys) through ActionContext.durable_execute in a SQLite store (``group``
durability, flushed), with no CompleteRecord: every action was cut off by the
crash, so a restart replays each of its calls. The recovery marker is taken
the way a checkpoint does (``recovery_marker()``).

Measured, in interleaved rounds:

* rebuild: a new SqliteActionStateStore, ``rebuild(marker)`` (read + decode +
  index every record), records/s. Baseline: the same rows read with one
  ``SELECT`` and ``json.loads`` of each payload (the floor of any rebuild).
* replay: for every action ``store.get`` + a new ActionContext + its 10
  ``ctx.durable_execute`` calls, all served from the record (verified: 0
  executed). Baselines: a plain dict lookup per call (the floor), and a
  "minimal matcher" per call: SHA-256 of the canonical args + dict lookup +
  compare (what any replay that checks arguments must do).

Usage: .venv/bin/python benchmarks/core_replay.py [--quick]
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from core_common import (
    fmt_rate,
    fmt_ratio,
    machine_lines,
    median,
    parse_args,
    scratch_dir,
    table,
)

from actionstate.durable.execution import ActionContext
from actionstate.durable.stats import RunStats
from actionstate.records.state import StateKey
from actionstate.stores.base import Marker
from actionstate.stores.sqlite import SqliteActionStateStore

CALLS_PER_ACTION = 10
KEYS = 1000
RESULT = {"text": "t" * 200, "tokens": 42}
TARGET = 200_000
CPU: dict[str, float] = {}  # process CPU seconds of the last rebuild / replay


def noop(key: int, seq: int, call: int) -> dict[str, Any]:
    return RESULT


def state_keys(actions: int) -> list[tuple[StateKey, int, int]]:
    out = []
    for a in range(actions):
        k, seq = a % KEYS, a // KEYS
        eid = hashlib.sha256(f"event-{k}-{seq}".encode()).hexdigest()
        out.append((StateKey(f"key{k}", seq, "work", eid), k, seq))
    return out


def record(path: Path, keys: list[tuple[StateKey, int, int]]) -> tuple[Marker, float]:
    store = SqliteActionStateStore(path, "group")
    store.rebuild(None)
    marker = store.recovery_marker()
    started = time.perf_counter()
    for i, (key, k, seq) in enumerate(keys):
        ctx = ActionContext(key, None, store, {}, {}, job="bench")
        for c in range(CALLS_PER_ACTION):
            ctx.durable_execute(noop, k, seq, c)
        if i % 500 == 499:
            store.flush()
    store.flush()
    elapsed = time.perf_counter() - started
    assert store.recovery_marker().offsets == marker.offsets  # no state pruned
    store.close()
    return marker, elapsed


def rebuild(path: Path, marker: Marker) -> tuple[SqliteActionStateStore, int, float]:
    store = SqliteActionStateStore(path, "group")
    started, cpu = time.perf_counter(), time.process_time()
    # read_only: every round reads the same records (a claim would add one per round;
    # it is one fsync'd row, a constant next to reading the log)
    count = store.rebuild(marker, read_only=True)
    CPU["rebuild"] = time.process_time() - cpu
    return store, count, time.perf_counter() - started


def raw_read(path: Path, marker: Marker) -> tuple[int, float]:
    db = sqlite3.connect(path)
    started = time.perf_counter()
    count = 0
    loads = json.loads
    for (payload,) in db.execute(
            "SELECT payload FROM records WHERE namespace=? AND id>=? ORDER BY id",
            (marker.namespace, marker.offsets[0])):
        loads(payload)
        count += 1
    elapsed = time.perf_counter() - started
    db.close()
    return count, elapsed


def replay(store: SqliteActionStateStore, keys: list[tuple[StateKey, int, int]]
           ) -> tuple[int, float]:
    stats = RunStats()
    started, cpu = time.perf_counter(), time.process_time()
    for key, k, seq in keys:
        state = store.get(key)
        ctx = ActionContext(key, state, store, {}, {}, job="bench", stats=stats)
        for c in range(CALLS_PER_ACTION):
            ctx.durable_execute(noop, k, seq, c)
    elapsed = time.perf_counter() - started
    CPU["replay"] = time.process_time() - cpu
    assert stats.calls_executed == 0, stats
    return stats.calls_replayed, elapsed


def dict_lookup(table_: dict[StateKey, dict[int, Any]],
                keys: list[tuple[StateKey, int, int]]) -> tuple[int, float]:
    count = 0
    started = time.perf_counter()
    for key, _k, _seq in keys:
        calls = table_[key]
        for c in range(CALLS_PER_ACTION):
            if calls.get(c) is not None:
                count += 1
    return count, time.perf_counter() - started


def minimal_matcher(table_: dict[StateKey, dict[int, Any]],
                    keys: list[tuple[StateKey, int, int]]) -> tuple[int, float]:
    count = 0
    sha, dumps = hashlib.sha256, json.dumps
    started = time.perf_counter()
    for key, k, seq in keys:
        calls = table_[key]
        for c in range(CALLS_PER_ACTION):
            d = sha(dumps([[k, seq, c], {}], sort_keys=True, separators=(",", ":"))
                    .encode()).hexdigest()
            recorded = calls.get(c)
            if recorded is not None and recorded.args_digest == d:
                count += 1
    return count, time.perf_counter() - started


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rounds, actions = (3, 2_000) if args.quick else (5, 20_000)
    n_calls = actions * CALLS_PER_ACTION
    keys = state_keys(actions)
    with scratch_dir() as tmp:
        path = tmp / "state.db"
        marker, record_s = record(path, keys)
        db_mb = sum(p.stat().st_size for p in tmp.iterdir()) / 1e6
        res: dict[str, list[float]] = {n: [] for n in (
            "rebuild", "raw", "replay", "dict", "matcher", "rebuild_cpu", "replay_cpu")}
        started = time.monotonic()
        for r in range(rounds):
            # rebuild vs its baseline, order alternated per round
            steps = ["raw", "rebuild"] if r % 2 == 0 else ["rebuild", "raw"]
            store = None
            for step in steps:
                if step == "raw":
                    count, elapsed = raw_read(path, marker)
                else:
                    store, count, elapsed = rebuild(path, marker)
                assert count == n_calls, (step, count, n_calls)
                res[step].append(count / elapsed)
            res["rebuild_cpu"].append(n_calls / CPU["rebuild"])
            assert store is not None
            index = {key: state.calls for key, state in store.states()}
            steps = ["dict", "matcher", "replay"]
            for step in steps[r % 3:] + steps[:r % 3]:
                if step == "replay":
                    count, elapsed = replay(store, keys)
                elif step == "dict":
                    count, elapsed = dict_lookup(index, keys)
                else:
                    count, elapsed = minimal_matcher(index, keys)
                assert count == n_calls, (step, count, n_calls)
                res[step].append(count / elapsed)
            res["replay_cpu"].append(n_calls / CPU["replay"])
            store.close()
            del index, store
        elapsed_all = time.monotonic() - started

        print("## core_replay: rebuild and replay after a crash (sqlite store)\n")
        print("\n".join(machine_lines(tmp)))
    print(f"- {n_calls:,} recorded calls = {actions:,} actions x {CALLS_PER_ACTION} calls over "
          f"{KEYS:,} keys, result a {len(json.dumps(RESULT))} B JSON object; store "
          f"{db_mb:.0f} MB; recorded in {record_s:.1f} s ({n_calls / record_s:,.0f} calls/s, "
          "group durability)")
    print(f"- {rounds} rounds, subjects interleaved; medians across rounds; "
          f"{elapsed_all:.1f} s\n")

    def ratio(a: str, b: str) -> str:
        return fmt_ratio(median([x / y for x, y in zip(res[a], res[b], strict=True)]))

    rows = [
        ["rebuild(marker): read + decode + index", "records/s", fmt_rate(median(res["rebuild"])),
         ratio("rebuild", "raw"), fmt_rate(median(res["rebuild_cpu"]))],
        ["baseline: SELECT payload + json.loads", "records/s", fmt_rate(median(res["raw"])),
         "1.00x", ""],
        ["replay via ActionContext.durable_execute", "served calls/s",
         fmt_rate(median(res["replay"])), ratio("replay", "matcher"),
         fmt_rate(median(res["replay_cpu"]))],
        ["baseline: sha256(canonical args) + dict lookup", "calls/s",
         fmt_rate(median(res["matcher"])), "1.00x", ""],
        ["floor: dict lookup only", "calls/s", fmt_rate(median(res["dict"])),
         ratio("dict", "matcher"), ""],
    ]
    print(table(["subject", "unit", "median rate", "vs its baseline", "per CPU-s"], rows))
    got = median(res["replay"])
    verdict = "meets" if got >= TARGET else "MISSES"
    print(f"\nreplay: {got:,.0f} served calls/s ({1e6 / got:.2f} µs per call) vs target ≥ "
          f"{TARGET:,}/s: {verdict} the target. Rebuild + replay of {n_calls:,} calls: "
          f"{n_calls / median(res['rebuild']) + n_calls / got:.1f} s.")


if __name__ == "__main__":
    main()
