"""What a rebuild from Kafka with every state held is made of, one step at a time.

One topic of N records (64 keys, 10 calls per state, 1 KB results: the records of
``kafka_store.py``), then per round one fresh process per step, the steps interleaved,
each timed from its first call to the broker to its last record:

1. ``client``: a bare consumer with the store's settings reads the messages and takes
   each one's key and value: what any rebuild in Python pays for Kafka.
2. ``read``: the store's ``read`` (end offsets, the range check, its consumer, the
   namespace filter, the records' tracking for deletion).
3. ``decode``: and each record decoded (``decode_call``, ``decode_record`` for others).
4. ``index``: and each applied to a ``StateIndex``, held (a read-only rebuild's work).
5. ``rebuild``: ``store.rebuild(marker)``, the claim included: what ``kafka_store.py
   --held all`` measures.

Usage: .venv/bin/python benchmarks/kafka_rebuild_parts.py [--size N] [--rounds R]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import kafka_store
from core_common import table

from actionstate.checkpoint import Marker
from actionstate.records.codec import decode_call, decode_record
from actionstate.records.index import StateIndex
from actionstate.stores import open_store
from actionstate.stores.kafka.config import split_config
from actionstate.testing.services import delete_topics

REPO = Path(__file__).resolve().parent.parent
STEPS = ["client", "read", "decode", "index", "rebuild"]


def child(step: str, servers: str, topic: str, marker_json: str) -> None:
    """Run ``step`` once in this fresh process; print seconds and records."""
    marker = Marker.from_json(json.loads(marker_json))
    store = open_store(f"kafka://{servers}/{topic}")
    gc.disable()  # as the rebuild does while it reads
    begin = time.perf_counter()
    if step == "client":
        count = _client(servers, topic, store.end_offsets())
    elif step == "rebuild":
        count = store.rebuild(marker)
    else:
        store.use_namespace(marker.namespace)
        index, count = StateIndex(), 0
        for position, data, where in store.read(marker.namespace, marker.offsets,
                                                store.end_offsets()):
            count += 1
            if step == "read":
                continue
            found = decode_call(data)
            record = decode_record(data, where) if found is None else None
            if step == "index":
                if found is not None:
                    index.apply_call(*found, position)
                elif record is not None:
                    index.apply(record, position, record.epoch)
    seconds = time.perf_counter() - begin
    print(seconds, count)
    store.close()


def _client(servers: str, topic: str, ends: dict[int, int]) -> int:
    from confluent_kafka import Consumer, TopicPartition

    configs = split_config(servers, {})
    consumer = Consumer({**configs.common, **configs.consumer})
    todo = {p for p, end in ends.items() if end > 0}
    consumer.assign([TopicPartition(topic, p, 0) for p in todo])
    count = 0
    while todo:
        first = consumer.poll(1.0)  # as the store's scan: one, then what is queued
        for message in [first, *consumer.consume(256, 0)] if first is not None else []:
            p, offset = message.partition(), message.offset()
            if message.error() is None and p is not None and offset is not None:
                message.key(), message.value()
                count += 1
                if offset + 1 >= ends[p]:
                    todo.discard(p)
    consumer.close()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=10_000, help="records (default 10^4)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds (medians)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    servers = subprocess.run([str(REPO / "scripts/services/kafka"), "start"], check=True,
                             capture_output=True, text=True).stdout.split()[-1]
    print("\n".join(kafka_store.machine()))
    topic = f"bench-parts-{uuid.uuid4().hex[:8]}"
    _, _, marker = kafka_store.write(servers, topic, args.size)
    marker_json = json.dumps(marker.to_json())
    runs: dict[str, list[tuple[float, int]]] = {step: [] for step in STEPS}
    try:
        for i in range(args.rounds):
            for step in STEPS[i % len(STEPS):] + STEPS[:i % len(STEPS)]:
                out = subprocess.run([sys.executable, __file__, "--child", step, servers,
                                      topic, marker_json], check=True, capture_output=True,
                                     text=True).stdout.split()
                runs[step].append((float(out[0]), int(out[1])))
    finally:
        delete_topics(servers, [topic])
    # Each rebuild adds its claim's fences (one per partition): rates are per run.
    rows, before = [], 0.0
    for step in STEPS:
        per_record = statistics.median(s / n * 1e6 for s, n in runs[step])
        rows.append([step, f"{runs[step][-1][1]:,}",
                     f"{statistics.median(s for s, _ in runs[step]) * 1e3:.0f}",
                     f"{statistics.median(n / s for s, n in runs[step]):,.0f}",
                     f"{per_record:.1f}", f"{per_record - before:+.1f}" if before else ""])
        before = per_record
    print(f"\n### a rebuild of {args.size:,} records, every state held, in steps "
          f"({args.rounds} rounds, medians)\n")
    print(table(["step", "records (last run)", "ms", "records/s", "us/record",
                 "over the step before"], rows))
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
