"""Writes tests/golden/records-v1.jsonl and records-v1-sealed.jsonl (the latter sealed
with the fixed test key ``GOLDEN_KEY``: its bytes differ at each run, by the random
nonces). Run it only for a deliberate new format version."""

from __future__ import annotations

import base64
from pathlib import Path

from actionstate.events import InputEvent, OutputEvent
from actionstate.records.codec import encode_record
from actionstate.records.crypto import Keyring
from actionstate.records.exceptions import encode_exception
from actionstate.records.state import (
    CallRecord,
    CallResult,
    CallStatus,
    CompleteRecord,
    DropRecord,
    FenceRecord,
    MemoryScope,
    MemoryUpdate,
    Record,
    StateKey,
    TruncateRecord,
)
from actionstate.testing.contract import ContractEvent

KEY = StateKey("customer_ü_1", 3, "classify", "a" * 64)
RECORDS: list[Record] = [
    FenceRecord(1),
    CallRecord(KEY, 0, CallResult("triage.call_model", "b" * 64, CallStatus.SUCCEEDED,
                                  {"label": "refund", "raw": b"\x00\x01"}), 1),
    CallRecord(KEY, 1, CallResult("triage.charge", "c" * 64, CallStatus.PENDING), 1),
    CallRecord(KEY, 1, CallResult("triage.charge", "c" * 64, CallStatus.FAILED,
                                  exception=encode_exception(ValueError("declined"))), 1),
    CallRecord(KEY, 2, CallResult("triage.extra", "d" * 64, CallStatus.SUCCEEDED, 1), 1),
    TruncateRecord(KEY, 2, 1),
    CompleteRecord(KEY, InputEvent(input={"id": "T1"}),
                   (ContractEvent(name="labelled", n=1), OutputEvent(output={"id": "T1"})),
                   (MemoryUpdate(MemoryScope.SHORT_TERM, "last.label", "refund"),), 1),
    DropRecord("customer_ü_1", 3, 1),
]

GOLDEN_KEY = "golden-1:" + base64.b64encode(bytes(range(32))).decode("ascii")
"""A test key, public on purpose: it seals records-v1-sealed.jsonl."""
SEALED_RECORDS: list[Record] = [RECORDS[1], RECORDS[3], RECORDS[6]]
"""A call, a failed call and a completion, each with a payload to seal."""

if __name__ == "__main__":
    path = Path(__file__).with_name("records-v1.jsonl")
    path.write_bytes(b"".join(encode_record(r) + b"\n" for r in RECORDS))
    ring = Keyring.parse(GOLDEN_KEY, "GOLDEN_KEY")
    path.with_name("records-v1-sealed.jsonl").write_bytes(
        b"".join(encode_record(r, keyring=ring) + b"\n" for r in SEALED_RECORDS))
