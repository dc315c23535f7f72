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
``state_payload``  BYTES    the record, encoded by :mod:`actionstate.records.codec`
``agent_key``      STRING   the input key: the bucket key, so every record of one
                            input key lands in one bucket, in put order
=================  =======  ===================================================

``ns`` is always the first member of ``state_key``, so a rebuild skips the
records of other runs by a prefix comparison without parsing the JSON. How
positions and claims work is in :mod:`.store`.

Options (keyword arguments or URL query parameters, under the rules of
:mod:`actionstate.stores.options`: a setting given twice must agree, or it is a
:class:`~actionstate.errors.ConfigError`): ``flussBootstrapServers``
(``localhost:9123``; also the URL's host), ``flussActionStateDatabase``
(``flink_agents``) and ``flussActionStateTable`` (``action_states``; also the URL
path ``database.table``, or ``table``), ``flussActionStateTableBuckets`` or
``buckets`` (64, used when the table is created), ``flussSecurityProtocol``,
``flussSaslMechanism``, ``flussSaslJaasConfig``, ``flussSaslUsername``,
``flussSaslPassword``, and ``flussTimeoutMs`` (milliseconds to wait for the
cluster, default 60000; it replaces the ``timeout`` option, which was in seconds).

Records are never deleted by this store: Fluss's log retention (``table.log.ttl``)
removes old segments, and a rebuild whose marker points below the retained log
fails with a :class:`~actionstate.errors.StoreError`.

Modules: :mod:`.store` (the store: the medium's calls and the position bookkeeping),
:mod:`.config` (options), :mod:`.client` (the client driven from sync code),
:mod:`.loop` (the client's event loop thread), :mod:`.sockets` (TCP_NODELAY),
:mod:`.table` (table setup), :mod:`.rows` (columns and ``state_key``),
:mod:`.scan` (reading back), :mod:`.bucketing` (Fluss's bucketing function).
"""

from __future__ import annotations

from actionstate.stores.fluss.bucketing import bucket_of
from actionstate.stores.fluss.rows import AGENT_KEY, STATE_KEY, STATE_PAYLOAD
from actionstate.stores.fluss.store import FlussActionStateStore

__all__ = ["AGENT_KEY", "STATE_KEY", "STATE_PAYLOAD", "FlussActionStateStore", "bucket_of"]
