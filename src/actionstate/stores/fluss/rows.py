"""The action state table's rows: its columns and each record's ``state_key``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

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
    """The rows as one Arrow record batch of the table's schema."""
    return pa.RecordBatch.from_arrays(
        [pa.array(keys, pa.string()), pa.array(payloads, pa.binary()),
         pa.array(agent_keys, pa.string())], schema=SCHEMA)
