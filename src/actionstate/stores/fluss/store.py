"""The Fluss store's medium: appending rows, flushing, the end offsets, reading back.

Positions are (bucket, offset). Fluss assigns the offset on the server, so
:meth:`FlussActionStateStore.append` returns a lower bound of it: the bucket's end
offset read when the store last resynchronised its positions (at open, at every claim
and after every recovery marker), plus the records this store sent to the bucket since
then and saw acknowledged, plus those buffered ahead of it (the idempotent writer keeps
one bucket's records in send order; other writers only push offsets up). With one
writer the bound is the exact offset. The bucket is computed here with Fluss's own
bucketing function (see :func:`~.bucketing.bucket_of`), so the recovery marker of a
bucket is never above any live state's first record.

Claims (see :class:`~actionstate.records.state.FenceRecord`): the client does not
say at which offset an acknowledged record landed, so the store's claim positions
are lower bounds (``exact_positions = False``): a rebuild finds its claim by
reading on from the end offsets it read before (its :class:`~.scan.Tail`) until
the claim's batch is in. The claim is written in one batch with a *pre-fence* in
every other bucket: ``FenceRecord(b + 1)`` where ``b`` is bucket 0's end offset
read just before, a lower bound of the claim's offset. Every writer that claimed
before ``b`` has an epoch of at most ``b``, so once the claim is acknowledged its
records in any bucket are ignored, as in bucket 0, and the claimant's own epoch
(its claim's offset + 1) is at least ``b + 1``. When no other claim landed in
between (the claim is at ``b``), the pre-fences already carry the claimant's epoch
and the fence copies the base class then appends are not written again.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Self

from actionstate.errors import StoreError
from actionstate.records.codec import encode_record
from actionstate.records.index import Position
from actionstate.records.state import DropRecord, FenceRecord, Record
from actionstate.stores.base import ActionStateStore, Durability, Marker
from actionstate.stores.fluss.bucketing import bucket_of, fence_agent_keys
from actionstate.stores.fluss.client import FlussClient
from actionstate.stores.fluss.config import check_settings, client_properties, parse_url
from actionstate.stores.fluss.rows import (
    AGENT_KEY,
    STATE_KEY,
    STATE_PAYLOAD,
    arrow_batch,
    key_head,
    state_key,
)
from actionstate.stores.fluss.scan import ScanStart, Tail, past_end, scan
from actionstate.stores.fluss.table import open_table

__all__ = ["FlussActionStateStore"]

_BUCKET_CACHE_SIZE = 1 << 16

log = logging.getLogger("actionstate.stores.fluss")


class FlussActionStateStore(ActionStateStore):
    """Action states appended to a Fluss log table, one bucket per input key's records.

    Contract (beyond :class:`~actionstate.stores.base.ActionStateStore`):

    * ``sync`` durability: each put is one append acknowledged before ``put``
      returns; the writer's batch timeout is 0, so no batching delay is paid
      (in either durability: a ``sync=True`` put in ``group`` mode is as quick).
    * ``group`` durability: puts are buffered; :meth:`flush` writes them as one
      Arrow batch (the client routes rows to their buckets, in order) and waits
      for every bucket's acknowledgement, raising :class:`StoreError` on any
      failure. A failed group commit leaves the store unusable: restart from the
      last checkpoint.
    * A claim (:class:`FenceRecord` of epoch 0) goes to bucket 0, with a pre-fence
      in every other bucket (see the module doc); a :class:`FenceRecord` with an
      epoch goes to every bucket but 0; a :class:`DropRecord` to its input key's
      bucket.
    * :meth:`rebuild` reads each bucket from the marker's offset up to its claim's
      row there (or, if fence copies follow the claim, the end offset read after them).

    Args:
        timeout: seconds to wait for the cluster (the option ``flussTimeoutMs``).
    """

    exact_positions = False  # the client does not return an appended record's offset
    claim_prefences = True  # a claim is written with a pre-fence in every other bucket

    def __init__(
        self,
        bootstrap_servers: str = "localhost:9123",
        database: str = "flink_agents",
        table: str = "action_states",
        *,
        buckets: int = 64,
        durability: Durability = "sync",
        security: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        url: str | None = None,
    ) -> None:
        super().__init__(durability, f"fluss://{bootstrap_servers}/{database}.{table}"
                         if url is None else url)
        check_settings(database, table, buckets, timeout)
        self.bootstrap_servers = bootstrap_servers
        self.table_name = f"{database}.{table}"
        self._writer_id = uuid.uuid4().hex[:12]
        self._key_head = key_head(self.namespace, self._writer_id)  # state_key up to "n"
        self._sequence = 0  # this writer's records, numbered in state_key
        self._prefence = 0  # the epoch of the pre-fences written with the last claim
        self._ahead: ScanStart | None = None  # a rebuild's read, begun before its claim
        self._rebuild_ends: dict[int, int] | None = None  # a rebuild's, before its claim
        self._tail: Tail | None = None  # a rebuild's read from there on, during its claim
        self._claim_rows: dict[int, str] | None = None  # per bucket, the claim's row's key
        self._lock = threading.RLock()
        self._closed = False
        self._failure: str | None = None  # why the store is unusable (a failed group commit)
        # Rows not yet sent, flushed as one Arrow batch.
        self._keys: list[str] = []
        self._payloads: list[bytes] = []
        self._agent_keys: list[str] = []
        self._bucket_cache: dict[str, int] = {}
        self._client = FlussClient(bootstrap_servers,
                                   client_properties(bootstrap_servers, timeout, security),
                                   timeout, self.table_name)
        try:
            self._table = open_table(self._client, database, table, buckets)
            self._client.disable_nagle()
            ends = self._table.end_offsets()
        except BaseException:
            self._client.close()
            raise
        self.num_buckets = self._table.num_buckets
        self._fence_keys = fence_agent_keys(self.num_buckets)  # one agent key per bucket
        # Positions: per bucket, the end offset last read, this store's records
        # acknowledged since, and its records buffered (see the module doc).
        self._base = [ends[b] for b in range(self.num_buckets)]
        self._acked = [0] * self.num_buckets
        self._buffered = [0] * self.num_buckets
        log.info("Fluss action state store %s at %s: %d buckets, %s durability",
                 self.table_name, bootstrap_servers, self.num_buckets, durability)

    @classmethod
    def from_url(cls, url: str, durability: Durability = "sync", **options: Any) -> Self:
        """Open ``fluss://host:port/database.table?option=value`` (see the package doc)."""
        settings = parse_url(url, options)
        return cls(settings.servers, settings.database, settings.table,
                   buckets=settings.buckets, durability=durability,
                   security=settings.security, timeout=settings.timeout, url=url)

    def use_namespace(self, namespace: str) -> None:
        super().use_namespace(namespace)
        self._key_head = key_head(namespace, self._writer_id)

    @property
    def partition_count(self) -> int:
        return self.num_buckets

    def key_bound(self, key: str) -> Position:
        """The key's bucket, and the offset this store's next record there gets at the
        least (the bound :meth:`append` gives, with no round trip)."""
        with self._lock:
            bucket = self._bucket(key)
            return (bucket, self._base[bucket] + self._acked[bucket] + self._buffered[bucket])

    def append(self, record: Record, data: bytes, sync: bool) -> Position:
        with self._lock:
            if self._closed or self._failure is not None:
                self._check_usable()
            if isinstance(record, FenceRecord):
                return self._append_fence(record, data, sync)
            agent_key = record.key if isinstance(record, DropRecord) else record.key.key
            bucket = self._bucket_cache.get(agent_key)
            if bucket is None:
                bucket = self._bucket(agent_key)
            buffered = self._buffered
            position = (bucket, self._base[bucket] + self._acked[bucket] + buffered[bucket])
            self._sequence += 1
            self._keys.append(state_key(self._key_head, self._sequence, record))
            self._payloads.append(data)
            self._agent_keys.append(agent_key)
            buffered[bucket] += 1
            if sync:
                self._write_buffer(single=len(self._keys) == 1)
            return position

    def _append_fence(self, record: FenceRecord, data: bytes, sync: bool) -> Position:
        """A claim to bucket 0 with a pre-fence in every other bucket, or a fence with
        an epoch to every other bucket (:meth:`_fence_others` skips one that the
        pre-fences already carry)."""
        keys = self._fence_keys
        rows: list[tuple[Record, bytes, str]] = []
        own: dict[int, str] = {}
        if record.claim:
            # Bucket 0's end just before: a tight bound of the claim's offset.
            self._resync_positions(self._rebuild_ends)
            lower = self._base[0] + self._acked[0] + self._buffered[0]
            self._prefence = lower + 1
            prefence = FenceRecord(self._prefence)
            prefence_data = encode_record(prefence)
            rows.append((record, data, keys[0]))
            rows += [(prefence, prefence_data, key) for key in keys[1:]]
            position = (0, lower)
        else:
            rows += [(record, data, key) for key in keys[1:]]
            self._prefence = 0
            bucket = 1 if rows else 0
            position = (bucket, self._base[bucket] + self._acked[bucket] + self._buffered[bucket])
        for fence, fence_data, agent_key in rows:
            self._sequence += 1
            bucket = self._bucket(agent_key)
            key = own[bucket] = state_key(self._key_head, self._sequence, fence)
            self._keys.append(key)
            self._payloads.append(fence_data)
            self._agent_keys.append(agent_key)
            self._buffered[bucket] += 1
        self._claim_rows = own if record.claim else None
        if sync and self._keys:
            self._write_buffer(single=len(self._keys) == 1)
        return position

    def flush(self) -> None:
        with self._lock:
            self._check_usable()
            if self._keys:
                self._write_buffer(single=False)

    def end_offsets(self) -> dict[int, int]:
        return self._table.end_offsets()

    def release(self, marker: Marker) -> None:
        """Fluss keeps the records (a log table's TTL expires them). What a saved
        checkpoint lets go of here is the old bound of positions: records put from now
        on are placed from the buckets' ends of now."""
        self._resync_positions()

    def rebuild(self, marker: Marker | None, *, read_only: bool = False,
                done: Callable[[str], int] | None = None) -> int:
        try:
            return super().rebuild(marker, read_only=read_only, done=done)
        finally:
            if self._ahead is not None:  # not taken (the claim failed before the read)
                self._ahead.close()
            if self._tail is not None:
                self._tail.close()
            self._ahead = self._rebuild_ends = self._tail = self._claim_rows = None

    def _read_ahead(self, start: dict[int, int], ends: dict[int, int]) -> None:
        # The range check, the scanner and its first poll before the claim: the records
        # come in while the claim is written. What the rebuild reads from ``ends`` on
        # (its claim, and the claim's fences) was written during the rebuild: still there.
        self._rebuild_ends = ends
        self._ahead = ScanStart(self._table, self.namespace, start, ends)
        if not self._read_only:  # and what comes after, up to the claim (_find_claim)
            self._tail = Tail(self._table, self.namespace, ends)

    def read(
        self, namespace: str, start: dict[int, int], stop: dict[int, int]
    ) -> Iterator[tuple[Position, bytes, str]]:
        ahead = self._ahead
        if ahead is not None and ahead.serves(namespace, start, stop):
            self._ahead = None
            return scan(self._table, namespace, start, stop, begun=ahead)
        tail = self._tail
        if tail is not None and tail.serves(namespace, start, stop):
            self._tail = None
            return tail.records()
        return scan(self._table, namespace, start, stop, present=self._rebuild_ends)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._keys and self._failure is None:
                    self._write_buffer(single=False)
            finally:
                self._client.close()

    # -- bookkeeping ---------------------------------------------------------

    def _past_end(self, part: int, first: int, end: int) -> str:
        return past_end(self._table.name, part, first, end)

    def _find_claim(self, token: str, lower_bound: Position) -> Position:
        # The rebuild's tail, read on to the claim's batch: the claim's row in bucket 0,
        # and the rebuild's stop (each bucket's row of the batch is its cut-off).
        tail, own = self._tail, self._claim_rows
        if tail is None or own is None:
            return super()._find_claim(token, lower_bound)
        stop = self._after_claim_ends = tail.until(own)
        return (0, stop[0] - 1)

    def _fence_others(self, epoch: int) -> None:
        if epoch == self._prefence:  # every other bucket has it, from the claim's batch
            self._prefence = 0
            return
        super()._fence_others(epoch)

    def _resync_positions(self, ends: dict[int, int] | None = None) -> None:
        """Bound the positions of the records sent from now on by the buckets' end
        offsets read now, or ``ends`` if just read (other writers may have pushed them
        up since the last read)."""
        with self._lock:
            if ends is None:
                ends = self._table.end_offsets()
            self._base = [ends[b] for b in range(self.num_buckets)]
            self._acked = [0] * self.num_buckets

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreError(f"Fluss store {self.table_name} is closed")
        if self._failure is not None:
            raise StoreError(self._failure)

    def _write_buffer(self, *, single: bool) -> None:
        """Send the buffered rows and wait for their acknowledgement."""
        keys, payloads, agent_keys, sent = (self._keys, self._payloads, self._agent_keys,
                                            self._buffered)
        self._keys, self._payloads, self._agent_keys = [], [], []
        self._buffered = [0] * self.num_buckets
        writer = self._table.writer
        self._client.keep_nodelay()
        if single:
            row = {STATE_KEY: keys[0], STATE_PAYLOAD: payloads[0], AGENT_KEY: agent_keys[0]}
            self._client.acknowledge(lambda: writer.append(row).wait(), "append a record",
                                     self._table.probe)
            self._acked = [a + c for a, c in zip(self._acked, sent, strict=True)]
            return
        batch = arrow_batch(keys, payloads, agent_keys)

        async def commit() -> None:
            handle = writer.write_arrow_batch(batch)
            await writer.flush()
            await handle.wait()

        try:
            self._client.acknowledge(commit, f"append {len(keys)} records", self._table.probe,
                                     self._meanwhile)
        except StoreError as exc:
            if self.durability == "group":
                self._failure = (f"{exc}; a group commit failed, so records put since the "
                                 "last flush may be lost: restart from the last checkpoint")
            raise
        self._acked = [a + c for a, c in zip(self._acked, sent, strict=True)]

    def _bucket(self, agent_key: str) -> int:
        bucket = self._bucket_cache.get(agent_key)
        if bucket is None:
            if len(self._bucket_cache) >= _BUCKET_CACHE_SIZE:
                self._bucket_cache.clear()
            bucket = self._bucket_cache[agent_key] = bucket_of(agent_key, self.num_buckets)
        return bucket
