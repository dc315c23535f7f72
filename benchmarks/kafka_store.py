"""What the Kafka store costs over the Kafka client, and how fast it writes and rebuilds.

Against the local broker (``scripts/services/kafka start``; started if needed), topic
per measurement, deleted at the end. The record is a ``CallRecord`` whose result is a
1 KB string (about 1.2 KB encoded).

1. ``sync`` put latency: ``store.put`` (returns when the broker acknowledged the
   record) against a raw ``produce`` + ``flush`` of the same bytes to the same topic
   and partition, by a producer with the store's settings (idempotent, acks=all,
   linger.ms=0), interleaved in blocks of 100. Target: p50 ratio <= 1.2x.
2. ``group`` throughput: 64 keys round robin, ``flush`` every 1,000 puts and at the
   end (the time includes it). Target: >= 20,000 calls/s.
3. Rebuild: ``rebuild`` of N records (64 keys, 10 calls per state) in a fresh
   process; peak RSS (VmHWM) minus the RSS before the rebuild, which includes
   the rebuilt index (every state and its 1 KB results, all unpruned with the default
   ``--held all``) and the
   consumer's prefetch buffer. ``--held last``: each key's inputs but its last
   completed before the checkpoint, as a runner's restore holds them (skipped while
   reading by code whose ``rebuild`` takes ``done``, else pruned after it).

Usage: .venv/bin/python benchmarks/kafka_store.py [--quick] [--big] [--rebuild-only] [--sizes N,M]
    [--rounds R] [--held all|last] [--baseline OTHER/src]
(``--big`` adds the 10^6-record rebuild: about 1.2 GB through the broker, minutes.)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import subprocess
import time
import uuid
from pathlib import Path

import store_common
from confluent_kafka import Producer
from core_common import table
from store_common import RECORD_BYTES, call, pct

from actionstate.checkpoint import Marker
from actionstate.records.codec import encode_record
from actionstate.stores import open_store
from actionstate.stores.kafka import partition_of
from actionstate.testing.services import delete_topics

REPO = Path(__file__).resolve().parent.parent


def sync_latency(servers: str, samples: int) -> list[list[str]]:
    topic = f"bench-sync-{uuid.uuid4().hex[:8]}"
    store = open_store(f"kafka://{servers}/{topic}")
    store.rebuild(None)
    record = call(0)
    data = encode_record(record, store.epoch)
    partition = partition_of(record.key.key, len(store.end_offsets()))
    raw = Producer({"bootstrap.servers": servers, "enable.idempotence": True, "acks": "all",
                    "linger.ms": 0, "socket.nagle.disable": True, "batch.num.messages": 10000,
                    "batch.size": 4 << 20, "message.max.bytes": (16 << 20) + 65536,
                    "delivery.timeout.ms": 120000})
    clock, cpu = time.perf_counter_ns, time.thread_time_ns
    store_ns: list[float] = []
    raw_ns: list[float] = []
    store_cpu: list[float] = []
    raw_cpu: list[float] = []
    for block in range(-2, samples // 100):  # two warm-up blocks
        for _ in range(100):
            begin, cpu_begin = clock(), cpu()
            store.put(record)
            if block >= 0:
                store_ns.append(clock() - begin)
                store_cpu.append(cpu() - cpu_begin)
        for i in range(100):
            begin, cpu_begin = clock(), cpu()
            raw.produce(topic, data, b"raw/%d/%d" % (block, i), partition=partition)
            left = raw.flush(10)
            if block >= 0:
                raw_ns.append(clock() - begin)
                raw_cpu.append(cpu() - cpu_begin)
            assert left == 0, "raw send not acknowledged"
    store.close()
    delete_topics(servers, [topic])
    rows = []
    for name, values, used in (("store.put (sync)", store_ns, store_cpu),
                               ("raw produce + flush", raw_ns, raw_cpu)):
        rows.append([name, f"{len(values)}", f"{pct(values, 0.5) / 1000:.0f}",
                     f"{pct(values, 0.99) / 1000:.0f}", f"{pct(used, 0.5) / 1000:.0f}"])
    ratio = statistics.median(store_ns) / statistics.median(raw_ns)
    rows.append(["ratio (target: p50 <= 1.2x)", "", f"{ratio:.2f}x",
                 f"{pct(store_ns, 0.99) / pct(raw_ns, 0.99):.2f}x", ""])
    return rows


def write(servers: str, topic: str, count: int, warm_up: int = 0,
          flush_every: int = 1000) -> tuple[float, float, Marker]:
    """``warm_up`` then ``count`` group-mode puts.

    Returns the wall and this thread's CPU seconds of the ``count`` puts, and a
    marker from which a rebuild reads them all.

    A new topic is slow for its first thousands of records (the broker sets up its
    partitions): the warm-up keeps that out of the measurement.
    """
    store = open_store(f"kafka://{servers}/{topic}", durability="group")
    store.rebuild(None)
    marker = dataclasses.replace(store.recovery_marker(), offsets={}, fences={})
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


def group_throughput(servers: str, count: int) -> list[list[str]]:
    topic = f"bench-group-{uuid.uuid4().hex[:8]}"
    seconds, cpu_seconds, _ = write(servers, topic, count, warm_up=20_000)
    delete_topics(servers, [topic])
    return [["group put, 64 keys, flush every 1,000", f"{count:,}", f"{seconds:.2f}",
             f"{count / seconds:,.0f}", f"{count * RECORD_BYTES / seconds / 1e6:.1f}",
             f"{cpu_seconds / count * 1e6:.1f}"]]



def rebuild(servers: str, sizes: list[int], rounds: int = 1,
            baseline: str | None = None, held: str = "all") -> list[list[str]]:
    """Per size: write once, then ``rounds`` rebuilds in fresh processes (with
    ``baseline``, a source tree's, interleaved with this code's); medians."""
    rows = []
    for size in sizes:
        topic = f"bench-rebuild-{uuid.uuid4().hex[:8]}"
        write_seconds, _, marker = write(servers, topic, size)
        args = [f"kafka://{servers}/{topic}", json.dumps(marker.to_json()),
                str(store_common.done_through(size, held))]
        rows += store_common.rebuild_rows(
            size, write_seconds, rounds, baseline,
            functools.partial(store_common.rebuild_child_run, __file__, args))
        delete_topics(servers, [topic])
    return rows




def machine() -> list[str]:
    import confluent_kafka

    return store_common.machine_lines(
        f"confluent-kafka {confluent_kafka.__version__} (librdkafka "
        f"{confluent_kafka.libversion()[0]}), single-node Kafka broker on 127.0.0.1 "
        "(scripts/services/kafka), same machine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--big", action="store_true", help="add the 10^6-record rebuild")
    store_common.add_rebuild_arguments(parser)
    parser.add_argument("--rebuild-child", nargs=3, metavar=("URL", "MARKER", "DONE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rebuild_child:
        store_common.rebuild_child(*args.rebuild_child)
        return
    servers = subprocess.run([str(REPO / "scripts/services/kafka"), "start"], check=True,
                             capture_output=True, text=True).stdout.split()[-1]
    print("\n".join(machine()))
    if not args.rebuild_only:
        print("\n### sync put latency (us)\n")
        print(table(["", "samples", "p50", "p99", "CPU p50 (caller thread)"],
                    sync_latency(servers, 200 if args.quick else 2000)))
        print("\n### group mode throughput\n")
        print(table(["", "calls", "seconds", "calls/s", "MB/s", "CPU us/call (caller thread)"],
                    group_throughput(servers, 20_000 if args.quick else 200_000)))
    print(f"\n### rebuild ({args.rounds} round(s), medians)\n")
    print(table(store_common.REBUILD_HEADERS,
                rebuild(servers, store_common.sizes(args), args.rounds, args.baseline,
                            args.held)))
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

if __name__ == "__main__":
    main()
