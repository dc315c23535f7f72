"""Reading a run's records back from the table, bucket by bucket, between two offsets."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from typing import Any

import fluss
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from actionstate.errors import StoreError
from actionstate.records.index import Position
from actionstate.stores.fluss.bucketing import bucket_of
from actionstate.stores.fluss.rows import namespace_prefix
from actionstate.stores.fluss.table import FlussTable

__all__ = ["past_end", "scan"]

_POLL_MS = 500

_ROWS_SHIFT = 8
"""Payloads become bytes 256 rows at a time, as they are read: a whole poll's (about
1.2 MB) at once are out of the CPU cache by the time they are decoded (12% slower)."""
_ROWS_MASK = (1 << _ROWS_SHIFT) - 1


def past_end(table: str, bucket: int, first: int, end: int) -> str:
    """Why a marker past a bucket's end is refused (see ``ActionStateStore._past_end``)."""
    return (f"Fluss table {table} bucket {bucket} ends at offset {end}, but the recovery "
            f"marker starts at offset {first}: the table was dropped or truncated since "
            "the checkpoint, so its records are lost; start fresh (no marker) or restore "
            "the table")


def scan(table: FlussTable, namespace: str, start: dict[int, int],
         stop: dict[int, int]) -> Iterator[tuple[Position, bytes, str]]:
    """The records of ``namespace`` from ``start`` up to (excluding) ``stop``, per bucket in
    log order: (position, payload, where), ``where`` naming the record in errors.

    Raises:
        StoreError: the records are gone (the table was recreated with other buckets,
            or log retention deleted them), the table was written with another
            bucketing, or a bucket returned nothing for the client's timeout.
    """
    pending = _read_ranges(table, start, stop)
    if not pending:
        return
    client = table.client
    prefix = namespace_prefix(namespace)
    starts = {b: lo for b, (lo, _) in pending.items()}
    scanner = client.call(lambda: table.scanner(starts), "open a log scanner")
    where = f"Fluss table {table.name}"
    idle_polls = 0
    # The next poll runs on the client's loop while this one's records are decoded.
    poll = client.start(functools.partial(_poll, scanner, [], prefix), "read the log")
    try:
        while pending:
            spans, ours, payloads = poll()
            piece_at, piece = -1, []
            idle_polls = 0 if spans else idle_polls + 1
            if idle_polls * _POLL_MS / 1000 > client.timeout:
                raise StoreError(
                    f"{where}: buckets {sorted(pending)} returned nothing for "
                    f"{client.timeout:.0f} s while reading up to offsets "
                    f"{ {b: hi for b, (_, hi) in pending.items()} }: is the Fluss cluster at "
                    f"{client.servers} healthy?")
            ready = []
            for bucket, base, count, at, first_agent_key in spans:
                if bucket not in pending:
                    continue
                _check_bucketing(table, bucket, first_agent_key)
                lo, hi = pending[bucket]
                ready.append((bucket, base, at, max(0, lo - base), min(count, hi - base)))
                pending[bucket] = (max(lo, base + count), hi)
            finished = [b for b, (lo, hi) in pending.items() if lo >= hi]
            for bucket in finished:
                del pending[bucket]
            if pending:
                poll = client.start(functools.partial(_poll, scanner, finished, prefix),
                                    "read the log")
            for bucket, base, at, first, last in ready:
                where_at = f"{where} bucket {bucket} offset "
                for i in range(first, last):
                    if ours is None or ours[at + i]:
                        offset = base + i
                        row = at + i
                        if row >> _ROWS_SHIFT != piece_at:  # the next piece of payloads
                            piece_at = row >> _ROWS_SHIFT
                            piece = payloads.slice(piece_at << _ROWS_SHIFT,
                                                   1 << _ROWS_SHIFT).to_pylist()
                        yield (bucket, offset), piece[row & _ROWS_MASK], f"{where_at}{offset}"
    finally:  # left early (the caller found what it looked for): stop fetching for it
        if pending:
            client.start(functools.partial(_stop, scanner, list(pending)), "stop a log scan")


def _read_ranges(table: FlussTable, start: dict[int, int],
                 stop: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Per bucket with records to read, (start, stop); StoreError if records are gone."""
    where = f"Fluss table {table.name}"
    unknown = sorted(b for b in start if not 0 <= b < table.num_buckets)
    if unknown:
        raise StoreError(
            f"{where} has {table.num_buckets} buckets, but the recovery marker names "
            f"buckets {unknown}: the table was recreated since the checkpoint, so its "
            "records are lost; start fresh (no marker) or restore the table")
    ranges = {b: (lo, hi) for b, hi in stop.items() if (lo := start.get(b, 0)) < hi}
    if ranges:
        earliest = table.list_offsets(fluss.OffsetSpec.earliest(),
                                      "read the earliest offsets", buckets=sorted(ranges))
        lost = {b: (lo, earliest[b]) for b, (lo, _) in ranges.items() if lo < earliest[b]}
        if lost:
            raise StoreError(
                f"{where}: records needed by the recovery marker were deleted by log "
                f"retention (bucket: (marker offset, earliest kept offset) {lost}); the "
                "states they held are lost: raise table.log.ttl above the checkpoint "
                "retention, and start fresh (no marker)")
    return ranges


def _check_bucketing(table: FlussTable, bucket: int, agent_key: str | None) -> None:
    if agent_key is not None and bucket_of(agent_key, table.num_buckets) != bucket:
        raise StoreError(
            f"Fluss table {table.name} bucket {bucket} holds agent_key "
            f"{agent_key!r}, which Fluss's default bucketing puts in bucket "
            f"{bucket_of(agent_key, table.num_buckets)}: the table was written with "
            "another bucketing, so recovery markers would be wrong; use a table only "
            "this store writes")


async def _stop(scanner: Any, buckets: list[int]) -> None:
    for bucket in buckets:
        scanner.unsubscribe(bucket)


async def _poll(scanner: Any, finished: list[int], prefix: str
                ) -> tuple[list[tuple[int, int, int, int, str | None]], list[bool] | None,
                           Any]:
    """One poll: per Arrow batch (bucket, base offset, rows, index of its first row in
    the poll's, first agent key); which of the poll's rows are of the namespace (None:
    all); the poll's payloads (an Arrow column). The poll's batches (a few rows each,
    when a group commit spreads over many buckets) are read as one table: per batch,
    these calls cost ~20 us."""
    for bucket in finished:
        scanner.unsubscribe(bucket)
    polled = await scanner.poll_record_batch(_POLL_MS)
    if not polled:
        return [], None, []
    batches = [rb.batch for rb in polled]
    rows = pa.Table.from_batches(batches)
    counts = [batch.num_rows for batch in batches]
    firsts = list(itertools.accumulate(counts, initial=0))
    agent_keys = rows.column(2).to_pylist()
    spans = [(rb.bucket.bucket_id, rb.base_offset, n, at, agent_keys[at] if n else None)
             for rb, n, at in zip(polled, counts, firsts, strict=False)]
    mask = pc.starts_with(rows.column(0), pattern=prefix)
    ours = None if pc.all(mask, skip_nulls=False).as_py() else mask.to_pylist()
    return spans, ours, rows.column(1)
