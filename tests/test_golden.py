"""Records written by format version 1 must stay readable, and read the same."""

from __future__ import annotations

from pathlib import Path

from actionstate import ReplayedCallError
from actionstate.events import OutputEvent
from actionstate.records.codec import decode_record, encode_record
from actionstate.records.exceptions import decode_exception
from actionstate.records.index import StateIndex
from actionstate.records.state import CallStatus, StateKey
from actionstate.testing.contract import ContractEvent
from tests.golden.make_golden import RECORDS

GOLDEN = Path(__file__).parent / "golden" / "records-v1.jsonl"


def test_golden_records_decode_to_the_records_that_wrote_them() -> None:
    lines = GOLDEN.read_bytes().splitlines()
    decoded = [decode_record(line, f"golden line {i + 1}") for i, line in enumerate(lines)]
    assert decoded == RECORDS


def test_the_encoder_still_writes_the_golden_bytes() -> None:
    assert b"".join(encode_record(r) + b"\n" for r in RECORDS) == GOLDEN.read_bytes()


def test_golden_log_replays_to_the_expected_state() -> None:
    index = StateIndex()
    for offset, line in enumerate(GOLDEN.read_bytes().splitlines()[:-1]):
        record = decode_record(line, "golden")
        index.apply(record, (0, offset), record.epoch)
    state = index.get(StateKey("customer_ü_1", 3, "classify", "a" * 64))
    assert state is not None and state.completed
    assert sorted(state.calls) == [0, 1]
    assert state.calls[0].result == {"label": "refund", "raw": b"\x00\x01"}
    assert state.calls[1].status is CallStatus.FAILED
    assert state.calls[1].exception is not None
    replayed = decode_exception(state.calls[1].exception)
    assert type(replayed) is ValueError and str(replayed) == "declined"
    assert not isinstance(replayed, ReplayedCallError)
    assert state.output_events == [ContractEvent(name="labelled", n=1),
                                   OutputEvent(output={"id": "T1"})]


def test_the_call_fast_path_writes_the_generic_envelope() -> None:
    import json

    from actionstate.records.state import CallRecord, CallResult
    from actionstate.records.values import STORED

    for result in ["ключ \"q\" \n", 1.5, float("inf"), None, {"b": [1, b"\x00"]}, True]:
        record = CallRecord(StateKey("k_ü", 2, "a", "e" * 64), 3,
                            CallResult("m.f", "d" * 64, CallStatus.SUCCEEDED, result), 4)
        generic = {"v": 1, "t": "call", "k": ["k_ü", 2, "a", "e" * 64], "e": 4, "p": 3,
                   "f": "m.f", "d": "d" * 64, "s": "S", "r": result}
        assert encode_record(record) == STORED.encode(generic).encode()
        assert decode_record(encode_record(record), "x") == record
    pending = CallRecord(StateKey("k", 0, "a", "e"), 0, CallResult("f", "d", CallStatus.PENDING))
    assert json.loads(encode_record(pending))["s"] == "P"
