#!/usr/bin/env python3
"""Round trip against a running Fluss cluster with the pyfluss client.

    python scripts/services/fluss_smoke.py 127.0.0.1:9123            # append 20, read back
    python scripts/services/fluss_smoke.py 127.0.0.1:9123 --append 0 --expect 20
    python scripts/services/fluss_smoke.py 127.0.0.1:9223 --sasl admin:admin-secret

Creates database flink_agents and the log table action_states (no primary
key, bucket key agent_key, 4 buckets) if missing, appends --append rows
tagged with a fresh run id and waits for their acknowledgement, then reads
the latest offset of every bucket and scans each bucket from offset 0 up to
that offset (an explicit stop, not "until a poll comes back empty"). Exits
non-zero unless every appended row came back (and, with --expect, unless the
table holds exactly that many rows). Prints one JSON summary line.
"""

import argparse
import asyncio
import json
import sys
import time
import uuid

import fluss
import pyarrow as pa

DATABASE, TABLE, BUCKETS = "flink_agents", "action_states", 4
SCHEMA = pa.schema(
    [("state_key", pa.string()), ("state_payload", pa.binary()), ("agent_key", pa.string())]
)


async def ensure_table(admin, path):
    await admin.create_database(DATABASE, ignore_if_exists=True)
    descriptor = fluss.TableDescriptor(
        fluss.Schema(SCHEMA), bucket_count=BUCKETS, bucket_keys=["agent_key"]
    )
    await admin.create_table(path, descriptor, ignore_if_exists=True)


async def append_rows(table, run_id, count):
    writer = table.new_append().create_writer()
    handles = [
        writer.append(
            {
                "state_key": f"{run_id}-{i}",
                "state_payload": json.dumps({"i": i}).encode(),
                "agent_key": f"agent-{i % 5}",
            }
        )
        for i in range(count)
    ]
    await writer.flush()
    for handle in handles:  # per-append acknowledgement
        await handle.wait()


async def read_all(admin, table, path, timeout_s):
    """Scan every bucket from offset 0 to the latest offset read up front."""
    latest = await admin.list_offsets(path, list(range(BUCKETS)), fluss.OffsetSpec.latest())
    scanner = await table.new_scan().create_log_scanner()
    pending = {b: end for b, end in latest.items() if end > 0}
    for bucket in pending:
        scanner.subscribe(bucket, 0)
    rows, deadline = [], time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"buckets {sorted(pending)} not read up to {latest}")
        records = await scanner.poll(500)
        for bucket, recs in records.items():
            if bucket.bucket_id not in pending:  # already read up to its end
                continue
            end = latest[bucket.bucket_id]
            for rec in recs:
                if rec.offset < end:
                    rows.append((bucket.bucket_id, rec.offset, rec.row))
            if recs and recs[-1].offset >= end - 1:
                pending.pop(bucket.bucket_id, None)
                scanner.unsubscribe(bucket.bucket_id)
    return latest, rows


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bootstrap", nargs="?", default="127.0.0.1:9123")
    ap.add_argument("--append", type=int, default=20, help="rows to append (default 20)")
    ap.add_argument("--expect", type=int, help="exact row count the table must hold")
    ap.add_argument("--sasl", metavar="USER:PASSWORD", help="authenticate with SASL/PLAIN")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()

    props = {"bootstrap.servers": args.bootstrap}
    if args.sasl:
        user, _, password = args.sasl.partition(":")
        props.update(
            {
                "security.protocol": "sasl",
                "security.sasl.mechanism": "PLAIN",
                "security.sasl.username": user,
                "security.sasl.password": password,
            }
        )
    started = time.monotonic()
    conn = await fluss.FlussConnection.create(fluss.Config(props))
    try:
        admin = conn.get_admin()
        path = fluss.TablePath(DATABASE, TABLE)
        await ensure_table(admin, path)
        table = await conn.get_table(path)
        run_id = uuid.uuid4().hex[:8]
        if args.append:
            await append_rows(table, run_id, args.append)
        latest, rows = await read_all(admin, table, path, args.timeout)
    finally:
        await conn.close()

    mine = {r["state_key"] for _, _, r in rows if r["state_key"].startswith(run_id + "-")}
    summary = {
        "bootstrap": args.bootstrap,
        "run_id": run_id,
        "appended": args.append,
        "appended_read_back": len(mine),
        "total_rows": len(rows),
        "latest_offsets": {str(b): o for b, o in sorted(latest.items())},
        "seconds": round(time.monotonic() - started, 2),
    }
    print(json.dumps(summary))
    ok = len(mine) == args.append and sum(latest.values()) == len(rows)
    if args.expect is not None:
        ok = ok and len(rows) == args.expect
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
