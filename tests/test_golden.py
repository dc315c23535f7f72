"""Records written by format version 1 must stay readable, and read the same: the
records of tests/golden/records-v1.jsonl, and values-v1.jsonl, a value of each type
the codec tags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actionstate import ReplayedCallError
from actionstate.errors import EncryptionKeyError
from actionstate.events import OutputEvent
from actionstate.records.codec import decode_record, encode_record
from actionstate.records.crypto import KEYS_ENV, Keyring, new_key_entry
from actionstate.records.exceptions import decode_exception
from actionstate.records.index import StateIndex
from actionstate.records.state import CallRecord, CallStatus, CompleteRecord, StateKey
from actionstate.testing.contract import ContractEvent
from tests.agents.values import render
from tests.golden.make_golden import GOLDEN_KEY, RECORDS, SEALED_RECORDS
from tests.golden.value_types import records, values

GOLDEN = Path(__file__).parent / "golden" / "records-v1.jsonl"
SEALED = Path(__file__).parent / "golden" / "records-v1-sealed.jsonl"


def test_golden_records_decode_to_the_records_that_wrote_them() -> None:
    lines = GOLDEN.read_bytes().splitlines()
    decoded = [decode_record(line, f"golden line {i + 1}") for i, line in enumerate(lines)]
    assert decoded == RECORDS


def test_sealed_golden_records_decode_with_their_key_only() -> None:
    """A call, a failed call and a completion sealed with the fixed test key: they
    open to the records that wrote them; without the key, or with another key under
    its id, each is an error naming the key id; their payloads are not in clear."""
    ring = Keyring.parse(GOLDEN_KEY, KEYS_ENV)
    lines = SEALED.read_bytes().splitlines()
    decoded = [decode_record(line, f"sealed golden line {i + 1}", ring)
               for i, line in enumerate(lines)]
    assert decoded == SEALED_RECORDS
    assert [json.loads(line)["z"][0] for line in lines] == ["golden-1"] * 3
    for clear in (b"refund", b"declined", b"labelled", b"T1", b"AAE="):
        assert clear not in SEALED.read_bytes()
    other = Keyring.parse(new_key_entry("golden-1"), KEYS_ENV)
    for i, line in enumerate(lines):
        with pytest.raises(EncryptionKeyError, match="is encrypted with key 'golden-1'"):
            decode_record(line, f"line {i + 1}")
        with pytest.raises(EncryptionKeyError, match="does not decrypt with the configured "
                                                     "key 'golden-1'"):
            decode_record(line, f"line {i + 1}", other)
        inspected = decode_record(line, f"line {i + 1}", sealed_ok=True)
        assert getattr(inspected, "key", None) == getattr(SEALED_RECORDS[i], "key", 0)


def test_plain_golden_records_decode_the_same_with_a_keyring_configured() -> None:
    ring = Keyring.parse(GOLDEN_KEY, KEYS_ENV)
    lines = GOLDEN.read_bytes().splitlines()
    assert [decode_record(line, "golden", ring) for line in lines] == RECORDS


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


# -- the tagged value types (issue 9, part 3) --------------------------------------------

VALUES_GOLDEN = Path(__file__).parent / "golden" / "values-v1.jsonl"


TAGS = {"bytes", "event", "tuple", "dict", "set", "frozenset", "datetime", "date", "time",
        "timedelta", "decimal", "uuid", "enum", "dataclass", "model"}
"""Every tag the codec writes (records/values.py)."""


def test_golden_tagged_values_read_back_type_for_type() -> None:
    lines = VALUES_GOLDEN.read_bytes().splitlines()
    decoded = [decode_record(line, f"values golden line {i + 1}")
               for i, line in enumerate(lines)]
    assert decoded == records()
    *calls, done = decoded
    for record, (name, value) in zip(calls, values().items(), strict=True):
        assert isinstance(record, CallRecord) and record.call.function_id == name
        assert render(record.call.result) == render(value), name
    assert isinstance(done, CompleteRecord)
    assert [(u.path, render(u.value)) for u in done.memory_updates] == [
        (f"v.{name}", render(value)) for name, value in values().items()]
    written = VALUES_GOLDEN.read_text()
    assert {tag for tag in TAGS if f'"__as__":"{tag}"' in written} == TAGS, "each tag is there"


def test_the_encoder_still_writes_the_golden_value_bytes() -> None:
    assert b"".join(encode_record(r) + b"\n" for r in records()) == VALUES_GOLDEN.read_bytes()
