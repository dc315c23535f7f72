"""What the store benchmarks (kafka_store.py, fluss_store.py) share: the record stream."""

from __future__ import annotations

from core_common import pct as sorted_pct

from actionstate.records.codec import encode_record
from actionstate.records.state import CallRecord, CallResult, CallStatus, StateKey

RESULT = "x" * 1024
KEYS = 64


def call(i: int) -> CallRecord:
    """Record ``i`` of a stream over 64 keys, 10 calls per state (``put`` stamps the epoch)."""
    key = StateKey(f"agent-{i % KEYS}", i // (KEYS * 10), "act", "e" * 64)
    return CallRecord(key, (i // KEYS) % 10,
                      CallResult("llm", "d" * 64, CallStatus.SUCCEEDED, RESULT))


RECORD_BYTES = len(encode_record(call(0)))


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of unsorted ``values``."""
    return sorted_pct(sorted(values), q)
