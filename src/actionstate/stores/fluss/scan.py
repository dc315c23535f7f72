"""Reading a run's records back from the table, bucket by bucket, between two offsets."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import fluss
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from actionstate.errors import StoreError
from actionstate.records.index import Position
from actionstate.stores.fluss.bucketing import bucket_of
from actionstate.stores.fluss.rows import namespace_prefix
from actionstate.stores.fluss.table import FlussTable

__all__ = ["ScanStart", "Tail", "past_end", "scan"]

_POLL_MS = 500

_ROWS = 256
"""Payloads become bytes 256 rows at a time, as they are read: a whole poll's (about
1.2 MB) at once are out of the CPU cache by the time they are decoded (12% slower)."""


def past_end(table: str, bucket: int, first: int, end: int) -> str:
    """Why a marker past a bucket's end is refused (see ``ActionStateStore._past_end``)."""
    return (f"Fluss table {table} bucket {bucket} ends at offset {end}, but the recovery "
            f"marker starts at offset {first}: the table was dropped or truncated since "
            "the checkpoint, so its records are lost; start fresh (no marker) or restore "
            "the table")


class ScanStart:
    """A scan's first steps: the range check asked, a scanner subscribed from ``start``
    and its first poll under way on the client's loop (the check is awaited before the
    poll's records are taken). A rebuild takes them before its claim
    (see ``_read_ahead``), so that records come in while the claim is written; a read
    of the same range then goes on from here (:meth:`serves`).

    ``present``: per bucket, an offset from which the records are known to be there
    (end offsets read by this rebuild: what came after was written moments ago): the
    range check asks for the earliest offsets only of buckets that start below it.
    """

    def __init__(self, table: FlussTable, namespace: str, start: dict[int, int],
                 stop: dict[int, int], present: Mapping[int, int] | None = None) -> None:
        self.table, self.namespace = table, namespace
        self.start, self.stop = dict(start), dict(stop)
        self.pending, self.check = _read_ranges(table, start, stop, present or {})
        self.prefix = namespace_prefix(namespace)
        self.scanner: Any = None
        self.poll: Callable[[], Any] | None = None
        self.taken = False
        if self.pending:
            starts = {b: lo for b, (lo, _) in self.pending.items()}
            client = table.client
            self.scanner = client.call(lambda: table.scanner(starts), "open a log scanner")
            self.poll = client.start(functools.partial(_poll, self.scanner, [], self.prefix),
                                     "read the log")

    def serves(self, namespace: str, start: Mapping[int, int], stop: Mapping[int, int]
               ) -> bool:
        """Whether a read of ``namespace`` from ``start`` up to ``stop`` is this one's."""
        return not self.taken and (namespace, start, stop) == (
            self.namespace, self.start, self.stop)

    def close(self) -> None:
        """Stop fetching the buckets not read through (once; a poll under way is left)."""
        if self.pending:
            buckets, self.pending = list(self.pending), {}
            self.table.client.start(functools.partial(_stop, self.scanner, buckets),
                                    "stop a log scan")


class Tail:
    """What is appended to a table from ``ends`` on, read while a claim is written, up
    to the claim's own rows (:meth:`until`): the rebuild's cut-off in each bucket (see
    the store's module doc), so that neither the claim's search nor the rebuild's stop
    needs end offsets read after the claim (with 64 buckets those reads and their
    scanners cost 15 - 25 ms).

    Subscribed before the claim is written, its fetches wait at the log's end on the
    server for at most ``scanner.log.fetch.wait-max-time-ms`` (5 ms: Fluss 0.9 does not
    answer a waiting fetch when records arrive, so with the client's 500 ms the claim's
    rows came 0.5 s after it was acknowledged). Rows of the namespace are kept until
    :meth:`serves` gives them to the rebuild (a few: the claim's batch, and whatever a
    writer of the old epoch put meanwhile).
    """

    def __init__(self, table: FlussTable, namespace: str, ends: dict[int, int]) -> None:
        self.table, self.namespace, self.ends = table, namespace, dict(ends)
        self.prefix = namespace_prefix(namespace)
        self.rows: list[tuple[int, int, bytes]] = []  # (bucket, offset, payload)
        self.stop: dict[int, int] | None = None
        self.subscribed = set(self.ends)
        self.scanner: Any = None
        self.closed = False
        # The scanner is opened on the client's loop: the claim need not wait for it.
        self.poll: Callable[[], Any] | None = table.client.start(self._begin,
                                                                 "open a log scanner")

    async def _begin(self) -> list[tuple[int, int, list[str], list[bytes], str | None]]:
        scanner = self.scanner = await self.table.scanner(self.ends)
        if self.closed:  # before it was opened (the claim failed)
            await _stop(scanner, list(self.ends))
            return []
        return await _poll_rows(scanner, [])

    def until(self, own: Mapping[int, str]) -> dict[int, int]:
        """Read on until the row keyed ``own[bucket]`` is in, in each of those buckets;
        per bucket, the offset after it.

        Raises:
            StoreError: a bucket returned nothing for the client's timeout (an
                acknowledged row that never comes: the store lost it).
        """
        client, table = self.table.client, self.table
        found: dict[int, int] = {}
        idle_polls = 0
        try:
            while len(found) < len(own):
                assert self.poll is not None
                polled, self.poll = self.poll(), None
                idle_polls = 0 if polled else idle_polls + 1
                if idle_polls * _POLL_MS / 1000 > client.timeout:
                    missing = sorted(set(own) - set(found))
                    raise StoreError(
                        f"Fluss table {table.name}: the claim just written (a row to "
                        f"each bucket) did not come back from buckets {missing} in "
                        f"{client.timeout:.0f} s; the store lost acknowledged records")
                for bucket, base, keys, payloads, first_agent_key in polled:
                    _check_bucketing(table, bucket, first_agent_key)
                    if bucket in found or bucket not in own:
                        continue
                    mine = own[bucket]
                    for i, key in enumerate(keys):
                        if key.startswith(self.prefix):
                            self.rows.append((bucket, base + i, payloads[i]))
                        if key == mine:
                            found[bucket] = base + i + 1
                            break
                if len(found) < len(own):
                    done = [b for b in found if b in self.subscribed]
                    self.subscribed.difference_update(done)
                    self.poll = client.start(
                        functools.partial(_poll_rows, self.scanner, done), "read the log")
        finally:
            self.close()
        self.stop = found
        return found

    def serves(self, namespace: str, start: Mapping[int, int], stop: Mapping[int, int]
               ) -> bool:
        """Whether a read of ``namespace`` from ``start`` up to ``stop`` is what
        :meth:`until` read."""
        return self.stop is not None and (namespace, start, stop) == (
            self.namespace, self.ends, self.stop)

    def records(self) -> Iterator[tuple[Position, bytes, str]]:
        """The rows read, as :func:`scan` yields them (each bucket's in log order)."""
        where = f"Fluss table {self.table.name} bucket "
        for bucket, offset, payload in self.rows:
            yield (bucket, offset), payload, f"{where}{bucket} offset {offset}"

    def close(self) -> None:
        """Stop fetching (once; a poll under way is left)."""
        if not self.closed:
            self.closed = True
            buckets, self.subscribed = sorted(self.subscribed), set()

            async def stop() -> None:  # on the loop: after the scanner opened, or before
                if self.scanner is not None:
                    await _stop(self.scanner, buckets)

            self.table.client.start(stop, "stop a log scan")


def scan(table: FlussTable, namespace: str, start: dict[int, int], stop: dict[int, int],
         begun: ScanStart | None = None, present: Mapping[int, int] | None = None,
         ) -> Iterator[tuple[Position, bytes, str]]:
    """The records of ``namespace`` from ``start`` up to (excluding) ``stop``, per bucket in
    log order: (position, payload, where), ``where`` naming the record in errors.
    ``begun``: the scan's first steps, taken ahead (of this range); ``present``: as
    :class:`ScanStart` takes it.

    Raises:
        StoreError: the records are gone (the table was recreated with other buckets,
            or log retention deleted them), the table was written with another
            bucketing, or a bucket returned nothing for the client's timeout.
    """
    if begun is None:
        begun = ScanStart(table, namespace, start, stop, present)
    begun.taken = True
    pending, poll, scanner, prefix = begun.pending, begun.poll, begun.scanner, begun.prefix
    if not pending or poll is None:
        return
    begun.check()
    client = table.client
    where = f"Fluss table {table.name}"
    idle_polls = 0
    # The next poll runs on the client's loop while this one's records are decoded.
    try:
        while pending:
            spans, ours, payloads = poll()
            idle_polls = 0 if spans else idle_polls + 1
            if idle_polls * _POLL_MS / 1000 > client.timeout:
                raise StoreError(
                    f"{where}: buckets {sorted(pending)} returned nothing for "
                    f"{client.timeout:.0f} s while reading up to offsets "
                    f"{ {b: hi for b, (_, hi) in pending.items()} }: is the Fluss cluster at "
                    f"{client.servers} healthy?")
            ready = []
            for chunk, (bucket, base, count, at, first_agent_key) in enumerate(spans):
                if bucket not in pending:
                    continue
                _check_bucketing(table, bucket, first_agent_key)
                lo, hi = pending[bucket]
                ready.append((bucket, base, at, max(0, lo - base), min(count, hi - base),
                              chunk))
                pending[bucket] = (max(lo, base + count), hi)
            finished = [b for b, (lo, hi) in pending.items() if lo >= hi]
            for bucket in finished:
                del pending[bucket]
            if pending:
                poll = client.start(functools.partial(_poll, scanner, finished, prefix),
                                    "read the log")
            for bucket, base, at, first, last, chunk in ready:
                where_at = f"{where} bucket {bucket} offset "
                batch = payloads.chunk(chunk)  # the batch's own array: no slice across
                for lo in range(first, last, _ROWS):  # a piece of payloads at a time
                    hi = min(lo + _ROWS, last)
                    piece = batch.slice(lo, hi - lo).to_pylist()
                    if ours is None:  # all of the namespace (a table of one run)
                        for offset, payload in enumerate(piece, base + lo):
                            yield (bucket, offset), payload, f"{where_at}{offset}"
                    else:
                        for i, payload in enumerate(piece, lo):
                            if ours[at + i]:
                                yield (bucket, base + i), payload, f"{where_at}{base + i}"
    finally:  # left early (the caller found what it looked for): stop fetching for it
        begun.close()


def _read_ranges(table: FlussTable, start: dict[int, int], stop: dict[int, int],
                 present: Mapping[int, int]
                 ) -> tuple[dict[int, tuple[int, int]], Callable[[], None]]:
    """Per bucket with records to read, (start, stop), and the check that they are
    still there: asked now (of the buckets that start below their ``present`` offset),
    it raises StoreError, when called, if records are gone."""
    where = f"Fluss table {table.name}"
    unknown = sorted(b for b in start if not 0 <= b < table.num_buckets)
    if unknown:
        raise StoreError(
            f"{where} has {table.num_buckets} buckets, but the recovery marker names "
            f"buckets {unknown}: the table was recreated since the checkpoint, so its "
            "records are lost; start fresh (no marker) or restore the table")
    ranges = {b: (lo, hi) for b, hi in stop.items() if (lo := start.get(b, 0)) < hi}
    asked = sorted(b for b, (lo, _) in ranges.items() if lo < present.get(b, lo + 1))
    if not asked:
        return ranges, _nothing
    earliest = table.start_list_offsets(fluss.OffsetSpec.earliest(),
                                        "read the earliest offsets", buckets=asked)

    def check() -> None:
        first = earliest()
        lost = {b: (ranges[b][0], first[b]) for b in asked if ranges[b][0] < first[b]}
        if lost:
            raise StoreError(
                f"{where}: records needed by the recovery marker were deleted by log "
                f"retention (bucket: (marker offset, earliest kept offset) {lost}); the "
                "states they held are lost: raise table.log.ttl above the checkpoint "
                "retention, and start fresh (no marker)")

    return ranges, check


def _nothing() -> None:
    pass


_bucket_of = functools.lru_cache(maxsize=1 << 16)(bucket_of)
"""Fluss's bucket of an agent key, remembered: a read checks one key per Arrow batch,
and a group commit over many buckets leaves a few rows per batch (the hash, in Python,
took 13% of a rebuild)."""


def _check_bucketing(table: FlussTable, bucket: int, agent_key: str | None) -> None:
    if agent_key is not None and _bucket_of(agent_key, table.num_buckets) != bucket:
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
    all); the poll's payloads (an Arrow column, a chunk per batch). The poll's batches
    (a few rows each, when a group commit spreads over many buckets) are read as one
    table: per batch, these calls cost ~20 us."""
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


async def _poll_rows(scanner: Any, finished: list[int]
                     ) -> list[tuple[int, int, list[str], list[bytes], str | None]]:
    """One poll of a :class:`Tail`: per Arrow batch (bucket, base offset, state keys,
    payloads, first agent key). A tail reads few rows: plain lists."""
    for bucket in finished:
        scanner.unsubscribe(bucket)
    polled = await scanner.poll_record_batch(_POLL_MS)
    out = []
    for rb in polled:
        batch = rb.batch
        first = batch.column(2)[0].as_py() if batch.num_rows else None
        out.append((rb.bucket.bucket_id, rb.base_offset, batch.column(0).to_pylist(),
                    batch.column(1).to_pylist(), first))
    return out
