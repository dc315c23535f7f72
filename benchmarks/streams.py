"""Streams: inputs/s Kafka -> agent -> Kafka, vs JSONL -> JSONL and vs a bare
consume-transform-produce loop with the same client, in the same run.

The agent: one ``def`` action making 3 no-op ``ctx.durable_execute`` calls and
sending one small dict as its output, per input. Inputs: N records (20,000;
``--quick`` 2,000) of ~200 bytes of JSON over 64 keys, the same for every
variant. Variants, interleaved in each round (R rounds, 3; ``--quick`` 1), each
with a fresh state dir (default SQLite store in it), ``--durability`` (group),
checkpoint every 1 s, concurrency 64:

1. ``jsonl->jsonl``: a JSONL file in, a JSONL file out (``actionstate.run``).
2. ``kafka->kafka``: a topic of 8 partitions (records keyed by the agent key,
   produced once before the rounds) in, ``until_end=True``; a fresh topic of 8
   partitions out (exactly once: a transaction per checkpoint).
3. ``kafka->jsonl``: the same topic in, a JSONL file out (input cost alone).
4. ``bare loop``: no actionstate. A confluent-kafka ``Consumer``
   (read_committed, every partition assigned from the beginning, up to the end
   offsets it had at the start) -> ``json.loads`` -> the same output dict ->
   ``json.dumps`` -> a transactional ``Producer`` committing a transaction
   (with the consumer's positions, as an exactly-once loop does) every 1 s, the
   checkpoint cadence, until all N are produced and the last one committed.

Timed: the whole ``actionstate.run`` call (opening the source and sink, restore,
checkpoints, the last one, closing); for the bare loop, from creating the
consumer to the last commit. Checked in every round: the run's counters, and
(outside the timing) the lines of each JSONL output and the records a
read_committed consumer sees in each output topic. The broker is the local one
of ``scripts/services/kafka`` (on this host: it shares the CPUs); the topics
made are deleted at the end. CPU columns: this process's CPU time (all its
threads) and the broker's, during the timed part.

``--profile``: afterwards, one more kafka->kafka run under cProfile (event loop
thread only: the ``def`` action runs on pool threads, librdkafka on its own).

Usage: .venv/bin/python benchmarks/streams.py [--quick] [--inputs=N] [--rounds=R]
       [--durability=group|sync] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import random
import resource
import shutil
import string
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from core_common import fmt_rate, fmt_ratio, machine_lines, median, scratch_dir, table

import actionstate
from actionstate import Agent, InputEvent, OutputEvent, RunnerContext, action
from actionstate.durable.stats import RunStats
from actionstate.stores.base import DURABILITIES, Durability
from actionstate.testing.services import start_service
from actionstate.testing.topics import Message, Topics, produce, read_committed

KEYS, PARTITIONS, CONCURRENCY, INTERVAL = 64, 8, 64, 1.0
CACHE = Path(os.environ.get("ACTIONSTATE_CACHE", Path.home() / ".cache" / "actionstate"))
BROKER_PIDFILE = CACHE / "kafka" / "kafka.pid"


def noop(n: int) -> int:
    return n


class ThreeCalls(Agent):
    @action(InputEvent)
    def work(self, event: InputEvent, ctx: RunnerContext) -> None:
        total = 0
        for i in range(3):
            total += ctx.durable_execute(noop, i)
        ctx.send_event(OutputEvent(output=transform(event.input, total)))


def transform(record: dict[str, Any], total: int) -> dict[str, Any]:
    """The output of one input: the same in the agent and in the bare loop."""
    return {"id": record["id"], "k": record["k"], "calls": total, "ok": True}


def make_records(n: int) -> list[dict[str, Any]]:
    rng = random.Random(11)
    records = []
    for i in range(n):
        record = {"id": i, "k": f"key{i % KEYS}", "text": ""}
        pad = 200 - len(json.dumps(record))
        record["text"] = "".join(rng.choices(string.ascii_letters, k=max(0, pad)))
        records.append(record)
    return records


# -- CPU accounting -----------------------------------------------------------------

def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def broker_cpu() -> float:
    """The broker process's CPU seconds (nan if it cannot be read)."""
    try:
        pid = BROKER_PIDFILE.read_text().strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


class Timed:
    def __init__(self) -> None:
        self.seconds = self.cpu = self.broker = 0.0

    def __enter__(self) -> Timed:
        self._wall, self._cpu, self._broker = time.perf_counter(), process_cpu(), broker_cpu()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu = process_cpu() - self._cpu
        self.broker = broker_cpu() - self._broker


# -- the variants ------------------------------------------------------------------

def run_actionstate(source: str, sink: str, state: Path,
                    durability: Durability) -> tuple[Timed, RunStats]:
    with Timed() as timed:
        stats = actionstate.run(ThreeCalls, source=source, key="k", sink=sink,
                                state=state, durability=durability, until_end=True,
                                checkpoint_interval=INTERVAL, concurrency=CONCURRENCY)
    return timed, stats


def bare_loop(servers: str, source: str, sink: str, group: str) -> tuple[Timed, int]:
    """Consume-transform-produce, exactly once, as an application without actionstate
    writes it (its offsets committed to consumer group ``group``); returns the timing
    and the records produced."""
    produced = 0
    with Timed() as timed:
        consumer = Consumer({"bootstrap.servers": servers, "group.id": group,
                             "enable.auto.commit": False, "isolation.level": "read_committed",
                             "enable.partition.eof": True})
        producer = Producer({"bootstrap.servers": servers, "enable.idempotence": True,
                             "acks": "all", "transactional.id": f"bench-{uuid.uuid4().hex}"})
        partitions = sorted(consumer.list_topics(source, timeout=10).topics[source].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(source, p), timeout=10,
                                                  cached=False)[1] for p in partitions}
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(source, p, OFFSET_BEGINNING) for p in todo])
        positions: dict[int, int] = {}
        producer.init_transactions(30)
        producer.begin_transaction()
        last_commit = time.monotonic()

        def commit() -> None:
            offsets = [TopicPartition(source, p, o) for p, o in positions.items()]
            if offsets:
                producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(),
                                                     30)
            producer.commit_transaction(30)

        while todo:
            for message in consumer.consume(500, 0.2):
                p, offset, error = message.partition(), message.offset(), message.error()
                assert p is not None and offset is not None
                if error is None:
                    if offset < ends[p]:
                        value = message.value()
                        assert value is not None
                        record = json.loads(value)
                        output = transform(record, 0 + 1 + 2)
                        while True:
                            try:
                                producer.produce(sink, json.dumps(output).encode(),
                                                 record["k"].encode())
                                break
                            except BufferError:
                                producer.poll(0.1)
                        produced += 1
                    offset += 1
                    positions[p] = offset
                elif error.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(error.str())
                if offset >= ends[p]:
                    todo.discard(p)
            producer.poll(0)
            if time.monotonic() - last_commit >= INTERVAL:
                commit()
                producer.begin_transaction()
                last_commit = time.monotonic()
        commit()
        consumer.close()
    return timed, produced


# -- the benchmark -----------------------------------------------------------------

VARIANTS = ["jsonl->jsonl", "kafka->kafka", "kafka->jsonl", "bare loop"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2,000 inputs, 1 round (a smoke test)")
    parser.add_argument("--inputs", type=int, help="inputs per run (20,000)")
    parser.add_argument("--rounds", type=int, help="rounds (3)")
    parser.add_argument("--durability", choices=DURABILITIES, default="group")
    parser.add_argument("--profile", action="store_true",
                        help="then one kafka->kafka run under cProfile")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    n = args.inputs or (2_000 if args.quick else 20_000)
    rounds = args.rounds or (1 if args.quick else 3)
    servers = start_service("kafka")
    url = f"kafka://{servers}/"
    records = make_records(n)
    topics = Topics(servers)
    results: dict[str, list[Timed]] = {v: [] for v in VARIANTS}
    out_topics: list[tuple[str, str]] = []  # (variant, topic) to check
    groups: list[str] = []  # the bare loop's consumer groups, deleted at the end
    started = time.monotonic()
    try:
        with scratch_dir() as tmp:
            inputs = tmp / "in.jsonl"
            inputs.write_text("".join(json.dumps(r) + "\n" for r in records))
            source = topics.create(PARTITIONS)
            messages: list[Message] = [(int(r["k"][3:]) % PARTITIONS, r["k"].encode(),
                                        json.dumps(r).encode()) for r in records]
            produce(servers, source, messages)
            mean_bytes = sum(len(m[2] or b"") for m in messages) / n

            def fresh_topic() -> str:
                return topics.create(PARTITIONS)

            def jsonl_jsonl(work: Path) -> Timed:
                timed, stats = run_actionstate(str(inputs), str(work / "out.jsonl"),
                                               work / "state", args.durability)
                check(stats, n)
                lines = (work / "out.jsonl").read_text().count("\n")
                assert lines == n, lines
                return timed

            def kafka_kafka(work: Path) -> Timed:
                out = fresh_topic()
                timed, stats = run_actionstate(url + source, url + out, work / "state",
                                               args.durability)
                check(stats, n)
                out_topics.append(("kafka->kafka", out))
                return timed

            def kafka_jsonl(work: Path) -> Timed:
                timed, stats = run_actionstate(url + source, str(work / "out.jsonl"),
                                               work / "state", args.durability)
                check(stats, n)
                lines = (work / "out.jsonl").read_text().count("\n")
                assert lines == n, lines
                return timed

            def bare(work: Path) -> Timed:
                out = fresh_topic()
                groups.append(f"actionstate-bench-{uuid.uuid4().hex}")
                timed, produced = bare_loop(servers, source, out, groups[-1])
                assert produced == n, produced
                out_topics.append(("bare loop", out))
                return timed

            runs: dict[str, Callable[[Path], Timed]] = {
                "jsonl->jsonl": jsonl_jsonl, "kafka->kafka": kafka_kafka,
                "kafka->jsonl": kafka_jsonl, "bare loop": bare}
            for r in range(rounds):
                for variant in VARIANTS:
                    work = tmp / f"r{r}-{variant.replace('->', '-').replace(' ', '-')}"
                    work.mkdir()
                    timed = runs[variant](work)
                    results[variant].append(timed)
                    print(f"round {r + 1}/{rounds} {variant}: {timed.seconds:.2f} s, "
                          f"{n / timed.seconds:,.0f} inputs/s", flush=True)
                    shutil.rmtree(work)
            checked = 0
            for variant, out in out_topics:  # outside the timing
                found = read_committed(servers, out)
                assert len(found) == n, (variant, out, len(found))
                assert len({json.loads(v or b"")["id"] for _, v in found}) == n
                checked += 1
            total = time.monotonic() - started
            profile = profile_run(servers, source, tmp, args.durability, n) if args.profile else ""
            print("\n## streams: Kafka -> agent -> Kafka vs JSONL -> JSONL vs a bare loop\n")
            print("\n".join(machine_lines(tmp)))
    finally:
        topics.delete()
        delete_groups(servers, groups)
    print(f"- broker: scripts/services/kafka on {servers} (same host); confluent-kafka "
          f"{confluent_version()}")
    print(f"- {n:,} inputs of {mean_bytes:.0f} bytes (JSON) over {KEYS} keys; agent: 1 `def` "
          "action, 3 no-op ctx.durable_execute + 1 output per input; actionstate.run, "
          f"sqlite {args.durability} in a fresh state dir, concurrency {CONCURRENCY}, "
          f"checkpoint every {INTERVAL:g} s; topics of {PARTITIONS} partitions; {rounds} "
          f"round(s), variants interleaved; medians; every output checked ({checked} topics "
          f"read back read_committed: {n:,} records each); {total:.1f} s\n")
    base = {v: median([n / t.seconds for t in results[v]]) for v in VARIANTS}
    rows = []
    for v in VARIANTS:
        rates = [n / t.seconds for t in results[v]]
        rows.append([
            v, fmt_rate(base[v]), " / ".join(fmt_rate(x) for x in rates),
            f"{median([t.seconds for t in results[v]]):.2f}",
            fmt_ratio(base[v] / base["jsonl->jsonl"]), fmt_ratio(base[v] / base["bare loop"]),
            f"{median([t.cpu for t in results[v]]) * 1e6 / n:.0f}",
            f"{median([t.broker for t in results[v]]) * 1e6 / n:.0f}"])
    print(table(["variant", "inputs/s (median)", "inputs/s per round", "s per run",
                 "vs jsonl->jsonl", "vs bare loop", "process CPU µs/input",
                 "broker CPU µs/input"], rows))
    kk = base["kafka->kafka"]
    print(f"\nkafka->kafka / jsonl->jsonl: {fmt_ratio(kk / base['jsonl->jsonl'])}; "
          f"kafka->kafka / bare loop: {fmt_ratio(kk / base['bare loop'])}")
    if profile:
        print(profile)


def delete_groups(servers: str, groups: list[str]) -> None:
    if not groups:
        return
    admin = AdminClient({"bootstrap.servers": servers})
    for deleted in admin.delete_consumer_groups(groups, request_timeout=30).values():
        with contextlib.suppress(KafkaException):
            deleted.result()


def check(stats: RunStats, n: int) -> None:
    assert stats.inputs == n and stats.outputs == n, stats
    assert stats.calls_executed == 3 * n and stats.calls_replayed == 0, stats


def confluent_version() -> str:
    import confluent_kafka
    version: Any = confluent_kafka.version()
    version = version[0] if isinstance(version, tuple) else version
    return f"{version} (librdkafka {confluent_kafka.libversion()[0]})"


def profile_run(servers: str, source: str, tmp: Path, durability: Durability,
                n: int) -> str:
    out = Topics(servers)
    try:
        work = tmp / "profile"
        work.mkdir()
        url = f"kafka://{servers}/"
        profiler = cProfile.Profile()
        profiler.enable()
        timed, stats = run_actionstate(url + source, url + out.create(PARTITIONS),
                                       work / "state", durability)
        profiler.disable()
        check(stats, n)
    finally:
        out.delete()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(20)
    return (f"\n### cProfile of one kafka->kafka run ({timed.seconds:.2f} s under the profiler; "
            f"event loop thread only)\n\n```\n{text.getvalue().strip()}\n```")


if __name__ == "__main__":
    main()
