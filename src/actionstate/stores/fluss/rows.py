"""The action state table's rows: its columns and each record's ``state_key``."""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable
from itertools import accumulate
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

from actionstate.errors import StoreError
from actionstate.records.state import (
    CallRecord,
    CompleteRecord,
    DropRecord,
    FenceRecord,
    Record,
    TruncateRecord,
)

__all__ = ["AGENT_KEY", "SCHEMA", "STATE_KEY", "STATE_PAYLOAD", "arrow_batch", "key_head",
           "namespace_prefix", "state_key"]

STATE_KEY = "state_key"
STATE_PAYLOAD = "state_payload"
AGENT_KEY = "agent_key"
SCHEMA = pa.schema([(STATE_KEY, pa.string()), (STATE_PAYLOAD, pa.binary()),
                    (AGENT_KEY, pa.string())])

_json_str: Callable[[str], str] = json.encoder.encode_basestring


def namespace_prefix(namespace: str) -> str:
    """How every ``state_key`` of ``namespace`` starts."""
    return f'{{"ns":{_json_str(namespace)},'


def key_head(namespace: str, writer_id: str) -> str:
    """The part of ``state_key`` before a writer's sequence number."""
    return f'{namespace_prefix(namespace)}"w":"{writer_id}","n":'


def state_key(head: str, sequence: int, record: Record) -> str:
    """The record's ``state_key``: a JSON object, ``ns`` first (built by hand: hot path)."""
    head = f"{head}{sequence},"
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


def arrow_batch(keys: list[str], payloads: list[bytes], agent_keys: list[str]) -> Any:
    """The rows as one Arrow record batch of the table's schema.

    Built from buffers, not with ``pa.array``: its first call imports pandas (installed
    with pyfluss), ~0.2 s that a store's first write, its claim, paid.
    """
    try:
        return pa.RecordBatch.from_arrays(
            [_column(pa.string(), [k.encode() for k in keys]),
             _column(pa.binary(), payloads),
             _column(pa.string(), [k.encode() for k in agent_keys])], schema=SCHEMA)
    except OverflowError:  # an offset past int32: over 2 GiB in one column
        raise StoreError(
            f"a batch of {len(keys)} records holds {sum(map(len, payloads)):,} bytes, over "
            "the 2 GiB an Arrow column holds: commit more often (a shorter group interval)"
        ) from None


def _column(kind: Any, values: list[bytes]) -> Any:
    """A string or binary Arrow array of ``values`` (UTF-8 for strings)."""
    offsets = array("i", (0,))
    offsets.extend(accumulate(map(len, values)))
    return pa.Array.from_buffers(kind, len(values),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(values))])
