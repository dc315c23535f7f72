"""``fluss://host:9123/database.table``: action states in an Apache Fluss log table.

The table has no primary key and three columns:

=================  =======  ===================================================
column             type     content
=================  =======  ===================================================
``state_key``      STRING   JSON object naming the record, unique per record:
                            ``{"ns", "w", "n", "t", ...}`` = run namespace,
                            writer id, writer sequence number, record kind
                            (``call``/``done``/``trunc``/``drop``/``fence``),
                            then the kind's key fields (``key``, ``seq``,
                            ``action``, ``event``, ``pos``; ``after``; ``epoch``
                            and, for a claim, ``claim``)
``state_payload``  BYTES    the record, encoded by :mod:`actionstate.durable.codec`
``agent_key``      STRING   the input key: the bucket key, so every record of one
                            input key lands in one bucket, in put order
=================  =======  ===================================================

``ns`` is always the first member of ``state_key``, so a rebuild skips the
records of other runs by a prefix comparison without parsing the JSON.

Positions are (bucket, offset). Fluss assigns the offset on the server, so
:meth:`FlussActionStateStore.append` returns a lower bound of it: the bucket's
end offset read at the last :meth:`~FlussActionStateStore.end_offsets`, plus
the records this store sent to the bucket since then and saw acknowledged,
plus those buffered ahead of it (the idempotent writer keeps one bucket's
records in send order; other writers only push offsets up). With one writer
the bound is the exact offset. The bucket is computed here with Fluss's own
bucketing function (see :func:`bucket_of`), so the recovery marker of a
bucket is never above any live state's first record.

Claims (see :class:`~actionstate.durable.state.FenceRecord`): the client does not
say at which offset an acknowledged record landed, so the store's claim positions
are lower bounds (``exact_positions = False``) and the base class reads bucket 0
back to find its claim. The claim is written in one batch with a *pre-fence* in
every other bucket: ``FenceRecord(b + 1)`` where ``b`` is bucket 0's end offset
read just before, a lower bound of the claim's offset. Every writer that claimed
before ``b`` has an epoch of at most ``b``, so once the claim is acknowledged its
records in any bucket are ignored, as in bucket 0, and the claimant's own epoch
(its claim's offset + 1) is at least ``b + 1``. When no other claim landed in
between (the claim is at ``b``), the pre-fences already carry the claimant's epoch
and the fence copies the base class then appends are not written again.

Options (keyword arguments or URL query parameters; the URL wins):
``flussBootstrapServers`` (``localhost:9123``; the URL's host:port wins),
``flussActionStateDatabase`` (``flink_agents``) and ``flussActionStateTable``
(``action_states``; the URL path ``database.table`` wins),
``flussActionStateTableBuckets`` or ``buckets`` (64, used when the table is
created), ``flussSecurityProtocol``, ``flussSaslMechanism``,
``flussSaslJaasConfig``, ``flussSaslUsername``, ``flussSaslPassword``, and
``timeout`` (seconds to wait for the cluster, default 60).

Records are never deleted by this store: Fluss's log retention (``table.log.ttl``)
removes old segments, and a rebuild whose marker points below the retained log
fails with a :class:`~actionstate.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qsl

import fluss
import pyarrow as pa  # type: ignore[import-untyped]

from actionstate.durable.codec import encode_record
from actionstate.durable.index import Position
from actionstate.durable.state import (
    CallRecord,
    CompleteRecord,
    DropRecord,
    FenceRecord,
    Record,
    TruncateRecord,
)
from actionstate.errors import ActionStateError, ConfigError, StoreError
from actionstate.stores.base import ActionStateStore, Durability

__all__ = [
    "AGENT_KEY",
    "DEFAULT_OPTIONS",
    "STATE_KEY",
    "STATE_PAYLOAD",
    "FlussActionStateStore",
    "bucket_of",
]

STATE_KEY = "state_key"
STATE_PAYLOAD = "state_payload"
AGENT_KEY = "agent_key"
SCHEMA = pa.schema([(STATE_KEY, pa.string()), (STATE_PAYLOAD, pa.binary()),
                    (AGENT_KEY, pa.string())])

DEFAULT_OPTIONS: dict[str, str | None] = {
    "flussBootstrapServers": "localhost:9123",
    "flussActionStateDatabase": "flink_agents",
    "flussActionStateTable": "action_states",
    "flussActionStateTableBuckets": "64",
    "flussSecurityProtocol": None,
    "flussSaslMechanism": None,
    "flussSaslJaasConfig": None,
    "flussSaslUsername": None,
    "flussSaslPassword": None,
    "timeout": "60",
}
_ALIASES = {"buckets": "flussActionStateTableBuckets"}
_IGNORED = {"actionStateStoreBackend"}
_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")
_JAAS = re.compile(r"""\b(username|password)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|(\S+?))\s*(?=;|\s|$)""")
_POLL_MS = 500
_json_str: Callable[[str], str] = json.encoder.encode_basestring
_NODELAY_EVERY_S = 5.0
_NEW_TABLE_S = 15.0  # a table this store created has bucket leaders within this
_STALL_S = 2.0  # an unacknowledged write this old makes the store refresh the client's metadata
_CLOSE_S = 10.0
_EXIT_GRACE_S = 0.05
_HINT = "start it (scripts/services/fluss start) or fix flussBootstrapServers"

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    * :meth:`rebuild` reads each bucket from the marker's offset up to the end
      offset read after its claim.
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
    ) -> None:
        super().__init__(durability)
        for what, name in (("database", database), ("table", table)):
            if not _NAME.fullmatch(name):
                raise ConfigError(f"Fluss {what} name {name!r} is invalid: use letters, "
                                  "digits, '_' or '-' (at most 200)")
        if buckets < 1:
            raise ConfigError(f"flussActionStateTableBuckets must be at least 1, got {buckets}")
        if timeout <= 0:
            raise ConfigError(f"Fluss timeout must be positive, got {timeout}")
        self.bootstrap_servers = bootstrap_servers
        self.table_name = f"{database}.{table}"
        self._timeout = timeout
        self._writer_id = uuid.uuid4().hex[:12]
        self.use_namespace(self.namespace)  # derive the state_key head
        self._sequence = 0
        self._prefence = 0  # the epoch of the pre-fences written with the last claim
        self._lock = threading.RLock()
        self._loop = _background_loop()
        self._closed = False
        self._failure: str | None = None
        # Group buffer: one entry per row, flushed as one Arrow batch.
        self._keys: list[str] = []
        self._payloads: list[bytes] = []
        self._agent_keys: list[str] = []
        self._bucket_cache: dict[str, int] = {}
        # Batch timeout 0: a sync put pays no batching delay, and group commits are
        # batched here (one Arrow batch per flush), not by the client. A full write
        # buffer fails after the timeout instead of blocking forever.
        props = {"bootstrap.servers": bootstrap_servers,
                 "connect-timeout": str(int(min(timeout, 10.0) * 1000)),
                 "writer.batch-timeout-ms": "0", "writer.enable-idempotence": "true",
                 "writer.buffer.wait-timeout-ms": str(int(timeout * 1000))}
        props.update(security or {})
        try:
            config = fluss.Config(props)
        except fluss.FlussError as exc:
            raise ConfigError(f"invalid Fluss client option: {exc}") from None
        self._connection = self._call(lambda: fluss.FlussConnection.create(config),
                                      "connect", retry=False)
        try:
            self._open_table(database, table, buckets)
        except BaseException:
            self._call(self._close_connection, "close the connection", retry=False)
            raise
        log.info("Fluss action state store %s at %s: %d buckets, %s durability",
                 self.table_name, bootstrap_servers, self.num_buckets, durability)

    @classmethod
    def from_url(cls, url: SplitResult, durability: Durability = "sync",
                 **options: Any) -> FlussActionStateStore:
        """Open ``fluss://host:port/database.table?option=value`` (see the module doc)."""
        opts = _options(url, options)
        if url.username or url.password:
            raise ConfigError("put Fluss credentials in flussSaslUsername/flussSaslPassword "
                              "options, not in the store URL's user info")
        bootstrap = url.netloc or str(opts["flussBootstrapServers"])
        database = str(opts["flussActionStateDatabase"])
        table = str(opts["flussActionStateTable"])
        path = url.path.strip("/")
        if "." in path:
            database, _, table = path.partition(".")
        elif path:
            table = path
        try:
            buckets = int(str(opts["flussActionStateTableBuckets"]))
            timeout = float(str(opts["timeout"]))
        except ValueError as exc:
            raise ConfigError(f"Fluss store option is not a number: {exc}") from None
        return cls(bootstrap, database, table, buckets=buckets, durability=durability,
                   security=_security(opts), timeout=timeout)

    # -- the medium ----------------------------------------------------------

    def use_namespace(self, namespace: str) -> None:
        super().use_namespace(namespace)
        self._key_head = f'{{"ns":{_json_str(namespace)},"w":"{self._writer_id}","n":'

    @property
    def partition_count(self) -> int:
        return self.num_buckets

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
            self._keys.append(self._state_key(record))
            self._payloads.append(data)
            self._agent_keys.append(agent_key)
            buffered[bucket] += 1
            if sync:
                self._write_buffer(single=len(self._keys) == 1)
            return position

    def _append_fence(self, record: FenceRecord, data: bytes, sync: bool) -> Position:
        """A claim to bucket 0 with a pre-fence in every other bucket, or a fence with
        an epoch to every other bucket (unless the pre-fences already carry it)."""
        keys = self._fence_keys()
        rows: list[tuple[Record, bytes, str]] = []
        if record.claim:
            self._refresh_end_offset(0)
            lower = self._base[0] + self._acked[0] + self._buffered[0]
            self._prefence = lower + 1
            prefence = FenceRecord(self._prefence)
            prefence_data = encode_record(prefence)
            rows.append((record, data, keys[0]))
            rows += [(prefence, prefence_data, key) for key in keys[1:]]
            position = (0, lower)
        else:
            if record.epoch != self._prefence:
                rows += [(record, data, key) for key in keys[1:]]
            # else every other bucket already has this epoch's fence, from the claim's batch
            self._prefence = 0
            bucket = 1 if rows else 0
            position = (bucket, self._base[bucket] + self._acked[bucket] + self._buffered[bucket])
        for fence, fence_data, agent_key in rows:
            self._sequence += 1
            self._keys.append(self._state_key(fence))
            self._payloads.append(fence_data)
            self._agent_keys.append(agent_key)
            self._buffered[self._bucket(agent_key)] += 1
        if sync and self._keys:
            self._write_buffer(single=len(self._keys) == 1)
        return position

    def flush(self) -> None:
        with self._lock:
            self._check_usable()
            if self._keys:
                self._write_buffer(single=False)

    def end_offsets(self) -> dict[int, int]:
        return self._read_end_offsets(self._timeout)

    def _read_end_offsets(self, timeout: float) -> dict[int, int]:
        with self._lock:
            latest = self._list_offsets(fluss.OffsetSpec.latest(), "read the end offsets",
                                        timeout)
            # Records sent from now on land at or after these offsets.
            self._base = [latest[b] for b in range(self.num_buckets)]
            self._acked = [0] * self.num_buckets
            return latest

    def _refresh_end_offset(self, bucket: int) -> None:
        """Read one bucket's end offset again (a tighter lower bound of its next record)."""
        latest = self._list_offsets(fluss.OffsetSpec.latest(), "read the end offset",
                                    buckets=[bucket])
        self._base[bucket] = latest[bucket]
        self._acked[bucket] = 0

    def read(
        self, namespace: str, start: dict[int, int], stop: dict[int, int]
    ) -> Iterator[tuple[Position, bytes, str]]:
        pending = self._read_ranges(start, stop)
        if not pending:
            return
        prefix = f'{{"ns":{_json_str(namespace)},'
        scanner = self._call(lambda: self._open_scanner(pending), "open a log scanner")
        where = f"Fluss table {self.table_name}"
        finished: list[int] = []
        idle_polls = 0
        while pending:
            batches = self._call(functools.partial(_poll, scanner, finished), "read the log")
            idle_polls = 0 if batches else idle_polls + 1
            if idle_polls * _POLL_MS / 1000 > self._timeout:
                raise StoreError(
                    f"{where}: buckets {sorted(pending)} returned nothing for "
                    f"{self._timeout:.0f} s while reading up to offsets "
                    f"{ {b: hi for b, (_, hi) in pending.items()} }: is the Fluss cluster at "
                    f"{self.bootstrap_servers} healthy?")
            for bucket, base, keys, payloads, first_agent_key in batches:
                if bucket not in pending:
                    continue
                self._check_bucketing(bucket, first_agent_key)
                lo, hi = pending[bucket]
                for i in range(max(0, lo - base), min(len(keys), hi - base)):
                    if keys[i].startswith(prefix):
                        offset = base + i
                        yield ((bucket, offset), payloads[i],
                               f"{where} bucket {bucket} offset {offset}")
                pending[bucket] = (max(lo, base + len(keys)), hi)
            finished = [b for b, (lo, hi) in pending.items() if lo >= hi]
            for bucket in finished:
                del pending[bucket]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._keys and self._failure is None:
                    self._write_buffer(single=False)
            finally:
                self._call(self._close_connection, "close the connection", retry=False)

    # -- helpers ---------------------------------------------------------------

    def _open_table(self, database: str, table: str, buckets: int) -> None:
        admin = self._connection.get_admin()
        self._admin = admin
        self._path = fluss.TablePath(database, table)
        self._call(lambda: admin.create_database(database, ignore_if_exists=True),
                   f"create database {database}")
        exists = self._call(lambda: admin.table_exists(self._path),
                            f"look table {self.table_name} up")
        if not exists:
            self._create_table(buckets)
        self._use_table()
        nodes = self._call(admin.get_server_nodes, "list the servers")
        self._peers = _addresses([(node.host, node.port) for node in nodes])
        self._nodelay_at = 0.0
        try:  # also connects to the tablet servers
            self._read_end_offsets(_NEW_TABLE_S if not exists else self._timeout)
        except StoreError as exc:
            if exists or "no leader" not in str(exc):
                raise
            # Fluss 0.9's coordinator can miss a table's creation (apache/fluss#1018):
            # its buckets never get a leader. It is new and empty: create it again.
            log.warning("Fluss table %s got no bucket leaders in %.0f s; creating it again",
                        self.table_name, _NEW_TABLE_S)
            self._call(lambda: admin.drop_table(self._path, ignore_if_not_exists=True),
                       f"drop table {self.table_name}")
            self._create_table(buckets)
            self._use_table()
            self._read_end_offsets(self._timeout)
        self._disable_nagle()

    def _create_table(self, buckets: int) -> None:
        descriptor = fluss.TableDescriptor(fluss.Schema(SCHEMA), bucket_count=buckets,
                                           bucket_keys=[AGENT_KEY])
        self._call(lambda: self._admin.create_table(self._path, descriptor,
                                                    ignore_if_exists=True),
                   f"create table {self.table_name}")

    def _use_table(self) -> None:
        self._table = self._call(lambda: self._connection.get_table(self._path),
                                 f"open table {self.table_name}")
        info = self._table.get_table_info()
        columns = [(name, kind.lower()) for name, kind in info.get_schema().get_columns()]
        lake = info.get_properties().get("table.datalake.format", "")
        if (columns != [(STATE_KEY, "string"), (STATE_PAYLOAD, "bytes"), (AGENT_KEY, "string")]
                or info.get_primary_keys() or info.get_bucket_keys() != [AGENT_KEY]
                or info.is_partitioned() or lake.lower() not in ("", "lance")):
            raise ConfigError(
                f"Fluss table {self.table_name} exists but is not an action state table "
                f"(columns {columns}, primary keys {info.get_primary_keys()}, bucket keys "
                f"{info.get_bucket_keys()}, datalake format {lake or 'none'}): expected a log "
                f"table ({STATE_KEY} STRING, {STATE_PAYLOAD} BYTES, {AGENT_KEY} STRING) "
                f"bucketed by {AGENT_KEY}, not partitioned, without a datalake format; "
                "use another table name")
        self.num_buckets = info.num_buckets
        self._writer = self._table.new_append().create_writer()
        self._fence_agent_keys: list[str] = []
        self._buffered = [0] * self.num_buckets

    def _call(self, fn: Callable[[], Awaitable[T]], what: str, *, retry: bool = True,
              timeout: float | None = None) -> T:
        """Run ``fn()`` on the client's event loop thread; Fluss errors become StoreError.

        With ``retry``, retriable errors (leader moves, a restarting tablet server) are
        retried until the timeout (the store's, unless given).
        """
        timeout = self._timeout if timeout is None else timeout

        async def run() -> T:
            if not retry:
                return await fn()
            delay = 0.05
            deadline = self._loop.time() + timeout
            while True:
                try:
                    return await fn()
                except fluss.FlussError as exc:
                    if not (_retriable(exc) and self._loop.time() + delay < deadline):
                        raise
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            return future.result(timeout + 1)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise StoreError(
                f"Fluss at {self.bootstrap_servers} did not answer in {timeout:.0f} s "
                f"({what}): {_HINT}") from None
        except ActionStateError:
            raise
        except Exception as exc:  # the client raises FlussError and plain RuntimeErrors
            raise StoreError(self._explain(exc, what)) from None

    def _acknowledge(self, start: Callable[[], Awaitable[None]], what: str) -> None:
        """Run ``start()`` (a write, or a write's acknowledgement) on the client's loop and
        block until it is acknowledged; Fluss errors become StoreError.

        The caller waits on a plain lock released by a done-callback: cheaper than
        ``run_coroutine_threadsafe`` (no Task for a bare future, no Condition), which
        matters for sync puts. While the acknowledgement stalls, the client's metadata
        is refreshed: pyfluss 1.0.0's writer can otherwise wait forever for a bucket
        whose leader came back (a restarted tablet server).
        """
        done = threading.Lock()
        done.acquire()
        outcome: list[Any] = []
        futures: list[asyncio.Future[None]] = []

        def begin() -> None:
            try:
                future = asyncio.ensure_future(start())
            except Exception as exc:  # handed to the caller
                outcome.append(exc)
                done.release()
                return
            futures.append(future)
            timers: list[asyncio.TimerHandle] = []

            def poke() -> None:
                refresh = asyncio.ensure_future(self._refresh_metadata())
                _BACKGROUND.add(refresh)
                refresh.add_done_callback(_BACKGROUND.discard)
                timers.append(self._loop.call_later(_STALL_S, poke))

            timers.append(self._loop.call_later(_STALL_S, poke))

            def finish(f: asyncio.Future[None]) -> None:
                timers[-1].cancel()
                outcome.append(f.exception() if not f.cancelled() else
                               asyncio.CancelledError())
                done.release()

            future.add_done_callback(finish)

        self._loop.call_soon_threadsafe(begin)
        if not done.acquire(timeout=self._timeout):
            self._loop.call_soon_threadsafe(lambda: [f.cancel() for f in futures])
            raise StoreError(
                f"Fluss at {self.bootstrap_servers} did not acknowledge in "
                f"{self._timeout:.0f} s ({what}): {_HINT}")
        error = outcome[0]
        if error is None:
            return
        if isinstance(error, ActionStateError):
            raise error
        raise StoreError(self._explain(error, what)) from None

    def _disable_nagle(self) -> None:
        """Set TCP_NODELAY on this process's connections to the Fluss servers.

        pyfluss 1.0.0 leaves Nagle's algorithm on. A write that spans many buckets
        then goes out in several segments, and the last one waits for the server's
        delayed ACK: about 45 ms per group commit over 64 buckets, 5 ms without
        Nagle. Runs at open and then at most every few seconds before a write
        (the client opens connections lazily and again after a server restart).
        """
        self._nodelay_at = time.monotonic()
        try:
            fds = [int(name) for name in os.listdir("/dev/fd")]
        except OSError:
            return
        for fd in fds:
            try:
                sock = socket.socket(fileno=fd)
            except OSError:  # not a socket (or closed meanwhile)
                continue
            try:
                if (sock.type == socket.SOCK_STREAM and sock.getpeername()[:2] in self._peers
                        and not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, TypeError):
                pass
            finally:
                sock.detach()

    async def _refresh_metadata(self) -> None:
        self._nodelay_at = 0.0  # the client may have reconnected
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._admin.list_offsets(
                self._path, list(range(self.num_buckets)), fluss.OffsetSpec.latest()), _STALL_S)

    async def _close_connection(self) -> None:
        try:
            await asyncio.wait_for(self._connection.close(), _CLOSE_S)
        except TimeoutError:
            log.warning("Fluss connection to %s did not close in %.0f s; abandoned it",
                        self.bootstrap_servers, _CLOSE_S)

    def _explain(self, exc: Exception, what: str) -> str:
        code = getattr(exc, "error_code", None)
        place = f"Fluss at {self.bootstrap_servers}: cannot {what}"
        if code == fluss.ErrorCode.AUTHENTICATE_EXCEPTION:
            return (f"{place}: authentication failed ({exc}); check flussSecurityProtocol, "
                    "flussSaslMechanism and flussSaslUsername/flussSaslPassword (or "
                    "flussSaslJaasConfig)")
        if code == fluss.ErrorCode.AUTHORIZATION_EXCEPTION:
            return f"{place}: not authorized ({exc}); grant the SASL user access to the table"
        if code == fluss.ErrorCode.NETWORK_EXCEPTION:
            return f"{place}: cannot reach the cluster ({exc}); {_HINT}"
        if "no leader" in str(exc).lower():
            return (f"{place}: buckets of {self.table_name} have no leader ({exc}); check that "
                    "the tablet servers are up; a table just created that never gets leaders "
                    "was missed by the coordinator: drop it (or restart the coordinator)")
        return f"{place}: {exc}"

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
        writer = self._writer
        if time.monotonic() - self._nodelay_at > _NODELAY_EVERY_S:
            self._disable_nagle()
        if single:
            row = {STATE_KEY: keys[0], STATE_PAYLOAD: payloads[0], AGENT_KEY: agent_keys[0]}
            self._acknowledge(lambda: writer.append(row).wait(), "append a record")
            self._acked = [a + c for a, c in zip(self._acked, sent, strict=True)]
            return
        batch = pa.RecordBatch.from_arrays(
            [pa.array(keys, pa.string()), pa.array(payloads, pa.binary()),
             pa.array(agent_keys, pa.string())], schema=SCHEMA)

        async def commit() -> None:
            handle = writer.write_arrow_batch(batch)
            await writer.flush()
            await handle.wait()

        try:
            self._acknowledge(commit, f"append {len(keys)} records")
        except StoreError as exc:
            if self.durability == "group":
                self._failure = (f"{exc}; a group commit failed, so records put since the "
                                 "last flush may be lost: restart from the last checkpoint")
            raise
        self._acked = [a + c for a, c in zip(self._acked, sent, strict=True)]

    def _state_key(self, record: Record) -> str:
        """The record's ``state_key``: a JSON object, ``ns`` first (built by hand: hot path)."""
        head = f"{self._key_head}{self._sequence},"
        match record:
            case CallRecord(key=sk, position=pos) | TruncateRecord(key=sk, position=pos):
                kind = "call" if isinstance(record, CallRecord) else "trunc"
                return (f'{head}"t":"{kind}","key":{_json_str(sk.key)},"seq":{sk.seq},'
                        f'"action":{_json_str(sk.action)},"event":{_json_str(sk.event_id)},'
                        f'"pos":{pos}}}')
            case CompleteRecord(key=sk):
                return (f'{head}"t":"done","key":{_json_str(sk.key)},"seq":{sk.seq},'
                        f'"action":{_json_str(sk.action)},"event":{_json_str(sk.event_id)}}}')
            case DropRecord(key=key, after_seq=after):
                return f'{head}"t":"drop","key":{_json_str(key)},"after":{after}}}'
            case FenceRecord(epoch=epoch, claim=claim):
                if claim:
                    return f'{head}"t":"fence","epoch":{epoch},"claim":{_json_str(claim)}}}'
                return f'{head}"t":"fence","epoch":{epoch}}}'
        raise TypeError(f"not a record: {record!r}")

    def _bucket(self, agent_key: str) -> int:
        bucket = self._bucket_cache.get(agent_key)
        if bucket is None:
            if len(self._bucket_cache) >= 1 << 16:
                self._bucket_cache.clear()
            bucket = self._bucket_cache[agent_key] = bucket_of(agent_key, self.num_buckets)
        return bucket

    def _fence_keys(self) -> list[str]:
        """One agent key per bucket that Fluss puts in that bucket."""
        if not self._fence_agent_keys:
            found: dict[int, str] = {}
            i = 0
            while len(found) < self.num_buckets:
                candidate = f"actionstate-fence-{i}"
                found.setdefault(bucket_of(candidate, self.num_buckets), candidate)
                i += 1
            self._fence_agent_keys = [found[b] for b in range(self.num_buckets)]
        return self._fence_agent_keys

    def _check_bucketing(self, bucket: int, agent_key: str | None) -> None:
        if agent_key is not None and bucket_of(agent_key, self.num_buckets) != bucket:
            raise StoreError(
                f"Fluss table {self.table_name} bucket {bucket} holds agent_key "
                f"{agent_key!r}, which Fluss's default bucketing puts in bucket "
                f"{bucket_of(agent_key, self.num_buckets)}: the table was written with "
                "another bucketing, so recovery markers would be wrong; use a table only "
                "this store writes")

    def _list_offsets(self, spec: Any, what: str, timeout: float | None = None, *,
                      buckets: list[int] | None = None) -> dict[int, int]:
        wanted = list(range(self.num_buckets)) if buckets is None else buckets
        return self._call(lambda: self._admin.list_offsets(self._path, wanted, spec), what,
                          timeout=timeout)

    def _read_ranges(self, start: dict[int, int],
                     stop: dict[int, int]) -> dict[int, tuple[int, int]]:
        """Per bucket with records to read, (start, stop); StoreError if records are gone."""
        where = f"Fluss table {self.table_name}"
        unknown = sorted(b for b in start if not 0 <= b < self.num_buckets)
        if unknown:
            raise StoreError(
                f"{where} has {self.num_buckets} buckets, but the recovery marker names "
                f"buckets {unknown}: the table was recreated since the checkpoint, so its "
                "records are lost; start fresh (no marker) or restore the table")
        ranges = {b: (start.get(b, 0), hi) for b, hi in stop.items()}
        ahead = {b: lo for b, (lo, hi) in ranges.items() if lo > hi}
        if ahead:
            raise StoreError(
                f"{where} ends at offsets {stop} but the recovery marker starts at {ahead}: the "
                "table was dropped or truncated since the checkpoint, so its records are "
                "lost; start fresh (no marker) or restore the table")
        ranges = {b: r for b, r in ranges.items() if r[0] < r[1]}
        if ranges:
            earliest = self._list_offsets(fluss.OffsetSpec.earliest(),
                                          "read the earliest offsets", buckets=sorted(ranges))
            lost = {b: (lo, earliest[b]) for b, (lo, _) in ranges.items() if lo < earliest[b]}
            if lost:
                raise StoreError(
                    f"{where}: records needed by the recovery marker were deleted by log "
                    f"retention (bucket: (marker offset, earliest kept offset) {lost}); the "
                    "states they held are lost: raise table.log.ttl above the checkpoint "
                    "retention, and start fresh (no marker)")
        return ranges

    async def _open_scanner(self, ranges: dict[int, tuple[int, int]]) -> Any:
        scanner = await self._table.new_scan().create_record_batch_log_scanner()
        scanner.subscribe_buckets({b: lo for b, (lo, _) in ranges.items()})
        return scanner


_TRANSIENT = {
    fluss.ErrorCode.NETWORK_EXCEPTION, fluss.ErrorCode.TABLE_NOT_EXIST,
    fluss.ErrorCode.INVALID_TABLE_EXCEPTION, fluss.ErrorCode.UNKNOWN_TABLE_OR_BUCKET_EXCEPTION,
    fluss.ErrorCode.NOT_LEADER_OR_FOLLOWER, fluss.ErrorCode.LEADER_NOT_AVAILABLE_EXCEPTION,
    fluss.ErrorCode.REQUEST_TIME_OUT,
}


def _addresses(hosts: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """The (IP, port) pairs that ``hosts`` resolve to."""
    out = set()
    for host, port in hosts:
        with contextlib.suppress(OSError):
            for *_, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
                out.add((str(address[0]), int(address[1])))
    return out


def _retriable(exc: fluss.FlussError) -> bool:
    # While a new table's buckets get leaders or a tablet server restarts, the client
    # reports "no leader" as a plain client error and a missing table as not found.
    return (exc.is_retriable or exc.error_code in _TRANSIENT
            or "no leader" in str(exc).lower())


async def _poll(scanner: Any, finished: list[int]) -> list[tuple[int, int, list[str],
                                                              list[bytes], str | None]]:
    """One poll: per Arrow batch (bucket, base offset, state keys, payloads, first agent key)."""
    for bucket in finished:
        scanner.unsubscribe(bucket)
    out = []
    for rb in await scanner.poll_record_batch(_POLL_MS):
        batch = rb.batch
        agent_keys = batch.column(2)
        out.append((rb.bucket.bucket_id, rb.base_offset, batch.column(0).to_pylist(),
                    batch.column(1).to_pylist(),
                    agent_keys[0].as_py() if len(agent_keys) else None))
    return out


# -- options -------------------------------------------------------------------


def _options(url: SplitResult, options: Mapping[str, Any]) -> dict[str, str | None]:
    given: dict[str, Any] = dict(options)
    given.update(parse_qsl(url.query, keep_blank_values=True))
    opts = dict(DEFAULT_OPTIONS)
    for name, value in given.items():
        name = _ALIASES.get(name, name)
        if name in _IGNORED:
            continue
        if name not in DEFAULT_OPTIONS:
            raise ConfigError(
                f"unknown Fluss store option {name!r}: use one of "
                f"{', '.join(sorted([*DEFAULT_OPTIONS, *_ALIASES]))}")
        opts[name] = None if value is None else str(value)
    return opts


def _security(opts: Mapping[str, str | None]) -> dict[str, str]:
    """Flink Agents' security options as the client's ``security.*`` properties."""
    username, password = opts["flussSaslUsername"], opts["flussSaslPassword"]
    jaas = opts["flussSaslJaasConfig"]
    if jaas:
        found = {m[1]: m[2] if m[2] is not None else m[3] for m in _JAAS.finditer(jaas)}
        username = username or found.get("username")
        password = password or found.get("password")
        if username is None or password is None:
            raise ConfigError("flussSaslJaasConfig has no username=\"...\" password=\"...\" "
                              "(a PlainLoginModule entry): give them, or use "
                              "flussSaslUsername/flussSaslPassword")
    protocol = opts["flussSecurityProtocol"] or ("SASL" if username or password else None)
    props: dict[str, str] = {}
    if protocol:
        props["security.protocol"] = protocol
    if opts["flussSaslMechanism"]:
        props["security.sasl.mechanism"] = str(opts["flussSaslMechanism"])
    if username is not None:
        props["security.sasl.username"] = username.replace('\\"', '"')
    if password is not None:
        props["security.sasl.password"] = password.replace('\\"', '"')
    return props


# -- the client's event loop ---------------------------------------------------

_LOOP: asyncio.AbstractEventLoop | None = None
_BACKGROUND: set[asyncio.Future[None]] = set()  # tasks nothing awaits, kept referenced
_LOOP_PID = 0
_LOOP_LOCK = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    """The event loop (in a daemon thread) that every Fluss store of this process uses.

    The client is async and the store API is sync: a put may come from a
    coroutine of a running loop, so the client runs on its own loop.
    """
    global _LOOP, _LOOP_PID
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP_PID != os.getpid():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="actionstate-fluss",
                                      daemon=True)
            thread.start()
            atexit.register(_stop_loop, loop, thread)
            _LOOP, _LOOP_PID = loop, os.getpid()
        return _LOOP


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """At exit: stop the loop, then give the client's threads a moment to leave Python.

    pyfluss completes a future from one of its own threads, which calls back into
    Python; if the interpreter is already finalizing when that thread wants the GIL
    back, CPython ends the thread with ``pthread_exit`` and the process aborts.
    """
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(loop.stop)
    thread.join(1.0)
    time.sleep(_EXIT_GRACE_S)


# -- Fluss's bucketing function --------------------------------------------------

_M32 = 0xFFFFFFFF


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _mix_k1(k: int) -> int:
    return (_rotl((k * 0xCC9E2D51) & _M32, 15) * 0x1B873593) & _M32


def _mix_h1(h: int, k: int) -> int:
    return (_rotl(h ^ k, 13) * 5 + 0xE6546B64) & _M32


def _fmix(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def bucket_of(agent_key: str, num_buckets: int) -> int:
    """The bucket Fluss puts ``agent_key`` in (tables without a datalake format).

    Fluss encodes the bucket key with its compacted key encoder (a STRING is a
    varint length then UTF-8 bytes), hashes the bytes with its murmur3 variant
    (seed 42, tail bytes mixed one by one), mixes that hash once more as Flink's
    ``MathUtils.murmurHash`` does and takes it modulo the bucket count.
    """
    raw = agent_key.encode()
    n = len(raw)
    prefix = bytearray()
    while n >= 0x80:
        prefix.append((n & 0x7F) | 0x80)
        n >>= 7
    prefix.append(n)
    data = bytes(prefix) + raw
    h = 42
    aligned = len(data) - len(data) % 4
    for i in range(0, aligned, 4):
        h = _mix_h1(h, _mix_k1(int.from_bytes(data[i:i + 4], "little")))
    for byte in data[aligned:]:
        h = _mix_h1(h, _mix_k1(byte))
    h = _fmix(h ^ len(data))
    # Flink's MathUtils.murmurHash(int): one more round over the 4-byte hash, then abs.
    code = _mix_h1(0, _mix_k1(h))
    code = _fmix(code ^ 4)
    signed = code - (1 << 32) if code & 0x80000000 else code
    return (abs(signed) if signed != -(1 << 31) else 0) % num_buckets
