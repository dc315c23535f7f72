"""What encryption at rest costs per recorded call, in ``sync`` and ``group`` durability.

Subjects, each against the same store without keys in the same run (rounds
interleaved, order alternated):

* ``sync``: ``ctx.durable_execute`` of a no-op returning a 1 KB string on the
  SQLite store in ``sync`` durability (``core_sync_call.py``'s loop): µs per
  call, p50 of every call in a round, median across rounds;
* ``group``: 64 keys in flight, 10 calls per action plus its completion record,
  group commits every 5 ms on a worker thread (``core_group_calls.py``'s
  loop, 256 B results): flushed calls/s.

The cost column is the ratio of the two medians the table shows; the per-round
ratios (each round's pair, run back to back) are given as min / median / max,
their spread.

With keys, each call's result is sealed with AES-256-GCM (a fresh nonce, the
record's kind, key and position as associated data) and base64-encoded; each
completion record's events and memory writes likewise.

Usage: .venv/bin/python benchmarks/encryption.py [--quick]
"""

from __future__ import annotations

import asyncio
import time

from core_common import fmt_rate, fmt_ratio, machine_lines, median, parse_args, scratch_dir, table
from core_group_calls import drive
from core_sync_call import store_sampler

from actionstate.records.crypto import Keyring, new_key_entry
from actionstate.stores.sqlite import SqliteActionStateStore

KEYRING = Keyring.parse(new_key_entry("bench"), "benchmark")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rounds, per_round, actions = (3, 300, 5) if args.quick else (7, 2000, 40)
    sync_us: dict[bool, list[float]] = {False: [], True: []}
    group_rate: dict[bool, list[float]] = {False: [], True: []}
    sync_ratio: list[float] = []
    group_ratio: list[float] = []
    with scratch_dir() as tmp:
        started = time.monotonic()
        index = 0
        for r in range(rounds):
            order = [False, True] if r % 2 == 0 else [True, False]
            for sealed in order:
                index += 1
                store = SqliteActionStateStore(tmp / f"sync-{index}.db", "sync")
                store.keyring = KEYRING if sealed else None
                sample, close = store_sampler(store)
                sample(20)  # warm up
                took = sorted(sample(per_round))
                close()
                sync_us[sealed].append(took[len(took) // 2] / 1000)
                group = SqliteActionStateStore(tmp / f"group-{index}.db", "group")
                group.keyring = KEYRING if sealed else None
                try:
                    out = asyncio.run(drive(group, "sync", actions))
                finally:
                    group.close()
                group_rate[sealed].append(out.calls / out.elapsed)
            sync_ratio.append(sync_us[True][-1] / sync_us[False][-1])
            group_ratio.append(group_rate[False][-1] / group_rate[True][-1])
        elapsed = time.monotonic() - started
        print("## encryption: the cost of sealing recorded payloads (AES-256-GCM)\n")
        print("\n".join(machine_lines(tmp)))
        print(f"- sync: {per_round} calls per round, 1 KB result, SQLite sync; group: 64 "
              f"keys x {actions} actions x 10 calls, 256 B results, SQLite group; "
              f"{rounds} rounds, with and without keys interleaved; medians; "
              f"{elapsed:.1f} s\n")
    sync_cost = median(sync_us[True]) / median(sync_us[False])
    group_cost = median(group_rate[False]) / median(group_rate[True])
    rows = [
        ["sync, µs per call (p50)", f"{median(sync_us[False]):.1f}",
         f"{median(sync_us[True]):.1f}", fmt_ratio(sync_cost), _spread(sync_ratio)],
        ["group, flushed calls/s", fmt_rate(median(group_rate[False])),
         fmt_rate(median(group_rate[True])), fmt_ratio(group_cost), _spread(group_ratio)],
    ]
    print(table(["subject", "no keys (baseline)", "with keys", "cost (ratio of medians)",
                 "per-round ratios (min / median / max)"], rows))
    print("\ncost: the median with keys / the median without (for group: calls/s without "
          "/ with), the two medians shown; per round: the same ratio within each round "
          "(the pair run back to back).")


def _spread(ratios: list[float]) -> str:
    return " / ".join(fmt_ratio(x) for x in (min(ratios), median(ratios), max(ratios)))

if __name__ == "__main__":
    main()
