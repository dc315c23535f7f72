"""What the Fluss store costs over the Fluss client, and how fast it writes and rebuilds.

Against the local cluster (``scripts/services/fluss start``; started if needed), a
table per measurement in database ``actionstate_bench`` (64 buckets, the default),
dropped at the end. The record is a ``CallRecord`` whose result is a 1 KB string
(about 1.2 KB encoded), as in ``kafka_store.py``.

1. ``sync`` put latency: ``store.put`` (returns when the tablet server acknowledged
   the record) against a raw pyfluss ``append`` + ``await handle.wait()`` of the same
   bytes to the same table and bucket, by a connection with the store's settings
   (batch timeout 0, idempotent), in its own asyncio loop; interleaved in blocks of
   100. Attribution row: the same raw append awaited from another thread through
   ``asyncio.run_coroutine_threadsafe`` (the sync-to-async bridge the store uses).
   Target: p50 ratio <= 1.2x.
2. ``group`` throughput. (a) 64 keys round robin, ``flush`` every 1,000 puts and at
   the end (the time includes it). (b) The engine: ``core_group_calls.drive`` (64
   asyncio tasks, one per key, 10 ``ctx.durable_execute`` calls per action, a
   ticker that flushes every 5 ms as ``LocalRunner`` does), against memory:// in the
   same run. Target: >= 20,000 calls/s.
3. Rebuild: ``rebuild`` of N records (64 keys, 10 calls per state) in a fresh
   process; peak RSS (VmHWM) minus the RSS before the rebuild (it includes the
   rebuilt index: every state and its 1 KB results, all unpruned with the default
   ``--held all``). ``--held last``:
   each key's inputs but its last completed before the checkpoint, as a runner's
   restore holds them (see ``kafka_store.py``).

Usage: .venv/bin/python benchmarks/fluss_store.py [--quick] [--big] [--rebuild-only] [--sizes N,M]
    [--rounds R] [--held all|last] [--baseline OTHER/src]
(``--big`` adds the 10^6-record rebuild: about 1.2 GB through Fluss.)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import threading
import time
from typing import Any

import fluss
import store_common
from core_common import table
from store_common import KEYS, RECORD_BYTES, call, pct

from actionstate.checkpoint import Marker
from actionstate.records.codec import encode_record
from actionstate.stores import open_store
from actionstate.stores.fluss import AGENT_KEY, STATE_KEY, STATE_PAYLOAD
from actionstate.stores.fluss.config import client_properties
from actionstate.stores.memory import MemoryActionStateStore
from actionstate.testing.services import Tables, start_service

DATABASE = "actionstate_bench"


class RawClient:
    """A pyfluss connection with the store's sync settings, on its own event loop."""

    def __init__(self, address: str, table: str) -> None:
        self.loop = asyncio.new_event_loop()

        async def connect() -> Any:
            self.conn = await fluss.FlussConnection.create(fluss.Config(
                client_properties(address, 60.0, None)))
            return await self.conn.get_table(fluss.TablePath(DATABASE, table))

        self.writer = self.loop.run_until_complete(connect()).new_append().create_writer()
        self.thread_loop = asyncio.new_event_loop()
        threading.Thread(target=self.thread_loop.run_forever, daemon=True).start()

    def block(self, row: dict[str, Any], n: int) -> list[float]:
        """``n`` appends, each awaited in this loop; their latencies (ns)."""
        async def run() -> list[float]:
            out: list[float] = []
            for _ in range(n):
                begin = time.perf_counter_ns()
                await self.writer.append(row).wait()
                out.append(time.perf_counter_ns() - begin)
            return out

        return self.loop.run_until_complete(run())

    def block_from_thread(self, row: dict[str, Any], n: int) -> list[float]:
        """``n`` appends awaited on another thread's loop, as the store bridges."""
        async def one() -> None:
            await self.writer.append(row).wait()

        out: list[float] = []
        for _ in range(n):
            begin = time.perf_counter_ns()
            asyncio.run_coroutine_threadsafe(one(), self.thread_loop).result()
            out.append(time.perf_counter_ns() - begin)
        return out

    def close(self) -> None:
        async def close() -> None:
            await self.conn.close()

        self.loop.run_until_complete(close())
        self.loop.close()
        self.thread_loop.call_soon_threadsafe(self.thread_loop.stop)


def sync_latency(tables: Tables, samples: int) -> list[list[str]]:
    url = tables.url("")
    store = open_store(url)
    store.rebuild(None)
    record = call(0)
    row = {STATE_KEY: json.dumps({"ns": store.namespace, "w": "raw", "n": 0, "t": "call",
                                  "key": record.key.key, "seq": 0, "action": "act",
                                  "event": "e" * 64, "pos": 0}, separators=(",", ":")),
           STATE_PAYLOAD: encode_record(record, store.epoch), AGENT_KEY: record.key.key}
    raw = RawClient(tables.address, tables.names[-1])
    clock = time.perf_counter_ns
    store_ns: list[float] = []
    raw_ns: list[float] = []
    hop_ns: list[float] = []
    for block in range(-2, samples // 100):  # two warm-up blocks
        times = []
        for _ in range(100):
            begin = clock()
            store.put(record)
            times.append(clock() - begin)
        raw_times = raw.block(row, 100)
        hop_times = raw.block_from_thread(row, 100)
        if block >= 0:
            store_ns += times
            raw_ns += raw_times
            hop_ns += hop_times
    store.close()
    raw.close()
    rows = []
    for name, values in (("store.put (sync)", store_ns),
                         ("raw append + await wait(), in the loop", raw_ns),
                         ("raw append + wait() via run_coroutine_threadsafe", hop_ns)):
        rows.append([name, f"{len(values)}", f"{pct(values, 0.5) / 1000:.0f}",
                     f"{pct(values, 0.99) / 1000:.0f}"])
    ratio = statistics.median(store_ns) / statistics.median(raw_ns)
    rows.append(["ratio store / raw in the loop (target: p50 <= 1.2x)", "", f"{ratio:.2f}x",
                 f"{pct(store_ns, 0.99) / pct(raw_ns, 0.99):.2f}x"])
    return rows


def write(url: str, count: int, warm_up: int = 0,
          flush_every: int = 1000) -> tuple[float, float, Marker]:
    """``warm_up`` then ``count`` group-mode puts.

    Returns the wall and this thread's CPU seconds of the ``count`` puts, and a
    marker from which a rebuild reads them all.
    """
    store = open_store(url, durability="group")
    store.rebuild(None)
    marker = store.recovery_marker()
    put, flush = store.put, store.flush
    for i in range(-warm_up, count):
        if i == 0:
            flush()
            begin, cpu_begin = time.perf_counter(), time.thread_time()
        put(call(i))
        if i % flush_every == flush_every - 1:
            flush()
    flush()
    seconds, cpu_seconds = time.perf_counter() - begin, time.thread_time() - cpu_begin
    store.close()
    return seconds, cpu_seconds, marker


def group_throughput(tables: Tables, count: int, actions: int) -> list[list[str]]:
    from core_group_calls import CALLS_PER_ACTION, drive

    seconds, cpu_seconds, _ = write(tables.url(""), count, warm_up=5_000)
    rows = [["group put, 64 keys round robin, flush every 1,000", f"{count:,}",
             f"{seconds:.2f}", f"{count / seconds:,.0f}",
             f"{count * RECORD_BYTES / seconds / 1e6:.1f}",
             f"{cpu_seconds / count * 1e6:.1f}"]]
    rates: dict[str, list[float]] = {"fluss": [], "memory": []}
    cpus: dict[str, list[float]] = {"fluss": [], "memory": []}
    for _ in range(3):
        for kind in ("fluss", "memory"):
            store = (open_store(tables.url(""), durability="group") if kind == "fluss"
                     else MemoryActionStateStore(durability="group"))
            cpu_begin = time.thread_time()
            out = asyncio.run(drive(store, "sync", actions))
            cpus[kind].append((time.thread_time() - cpu_begin) / out.calls * 1e6)
            store.close()
            rates[kind].append(out.calls / out.elapsed)
    calls = KEYS * actions * CALLS_PER_ACTION
    for kind, name in (("fluss", "engine: 64 tasks x ctx.durable_execute, flush every 5 ms"),
                       ("memory", "same on memory:// (engine bound)")):
        rows.append([name, f"{calls:,} x 3", "", f"{statistics.median(rates[kind]):,.0f}", "",
                     f"{statistics.median(cpus[kind]):.1f}"])
    return rows



def rebuild(tables: Tables, sizes: list[int], rounds: int = 1,
            baseline: str | None = None, held: str = "all") -> list[list[str]]:
    """Per size: write once, then ``rounds`` rebuilds in fresh processes (with
    ``baseline``, a source tree's, interleaved with this code's); medians."""
    rows = []
    for size in sizes:
        url = tables.url("")
        write_seconds, _, marker = write(url, size, flush_every=5000)
        args = [url, json.dumps(marker.to_json()),
                str(store_common.done_through(size, held))]
        rows += store_common.rebuild_rows(
            size, write_seconds, rounds, baseline,
            functools.partial(store_common.rebuild_child_run, __file__, args))
    return rows



def machine(address: str) -> list[str]:
    return store_common.machine_lines(
        f"Fluss 0.9.1-incubating at {address} (one TabletServer, replication 1), pyfluss "
        f"{fluss.__version__}; record: CallRecord with a 1 KB result, {RECORD_BYTES} B "
        "encoded; tables of 64 buckets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--big", action="store_true", help="add the 10^6-record rebuild")
    store_common.add_rebuild_arguments(parser)
    parser.add_argument("--rebuild-child", nargs=3, metavar=("URL", "MARKER", "DONE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rebuild_child:
        store_common.rebuild_child(*args.rebuild_child)
        return
    address = start_service("fluss")
    samples, count, actions = (200, 10_000, 5) if args.quick else (2_000, 200_000, 40)
    tables = Tables(address, DATABASE)
    started = time.monotonic()
    try:
        print("## fluss_store: the Fluss store against the pyfluss client\n")
        print("\n".join(machine(address)) + "\n")
        if not args.rebuild_only:
            print(f"### sync put latency (µs), {samples} samples each, blocks of 100 "
                  "interleaved\n")
            print(table(["subject", "n", "p50", "p99"], sync_latency(tables, samples)))
            print("\n### group throughput\n")
            print(table(["subject", "calls", "s", "calls/s", "MB/s", "CPU µs/call"],
                        group_throughput(tables, count, actions)))
        print(f"\n### rebuild (fresh process, {args.rounds} round(s), medians)\n")
        print(table(store_common.REBUILD_HEADERS,
                    rebuild(tables, store_common.sizes(args), args.rounds, args.baseline,
                            args.held)))
        print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        tables.drop()
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
