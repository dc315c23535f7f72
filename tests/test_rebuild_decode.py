"""Issue 10 part 4, rebuild: the call records a rebuild reads through ``decode_call``
decode to what the general JSON path makes of them, and whatever it does not take (or
gets wrong) is left to that path, which refuses damaged records as before."""

from __future__ import annotations

import json
from typing import Any

import pytest

from actionstate.errors import CorruptRecordError
from actionstate.records.codec import _from_envelope, decode_call, decode_record, encode_record
from actionstate.records.index import StateIndex
from actionstate.records.state import (
    CallRecord,
    CallResult,
    CallStatus,
    FenceRecord,
    StateKey,
)
from actionstate.records.untag import untag
from actionstate.stores.kafka.retention import Retention
from actionstate.testing.samples import EDGE_VALUES

KEYS = [StateKey("k", 0, "act", "e" * 64), StateKey("ключ 🎉", 2**40, "a\u2028", ""),
        StateKey('q"uote', 3, "back\\slash", "ctl\x01"), StateKey("", 10**30, "x", "y")]


def general(data: bytes) -> Any:
    """What the general path (json with the tag hook) makes of ``data``."""
    return _from_envelope(json.loads(data, object_hook=untag))


def check(data: bytes) -> None:
    fast = decode_call(data)
    if fast is not None:
        assert CallRecord(*fast) == general(data), data[:120]
        assert type(fast[0].seq) is int and type(fast[1]) is int and type(fast[3]) is int
    assert decode_record(data, "test") == general(data)


@pytest.mark.parametrize("value", EDGE_VALUES, ids=repr)
@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_call_records_decode_as_the_json_path_decodes_them(key: StateKey, value: Any) -> None:
    for status in (CallStatus.SUCCEEDED, CallStatus.PENDING):
        record = CallRecord(key, 7, CallResult("llm", "d" * 64, status,
                                               value if status is CallStatus.SUCCEEDED
                                               else None))
        check(encode_record(record, 12))


def test_plain_results_take_the_fast_path() -> None:
    for value in ["x" * 1024, "", "ключ", 42, {"a": [1, 2.5]}, None, "\x7f"]:
        data = encode_record(CallRecord(KEYS[0], 0, CallResult("f", "d", CallStatus.SUCCEEDED,
                                                               value)), 3)
        fast = decode_call(data)
        assert fast is not None and fast[2].result == value and fast[3] == 3


HEAD = b'{"v":1,"t":"call","k":["a",1,"b","c"],"e":1,"p":0,"f":"f","d":"d","s":'


@pytest.mark.parametrize("data", [
    HEAD + b'"S","r":"x"}\n',  # a newline after the record: json takes it
    HEAD + b'"S","r": "x"}',
    HEAD + b'"S","r":"x" }',
    HEAD + b'"P"}\n',
    HEAD + b'"P","r":null}',
    HEAD + b'"F","x":{"type":"E","message":"m","args":[]}}',
    HEAD + b'"S","r":"a\\"b"}',
    HEAD + b'"S","r":"\\u00fc"}',
    HEAD + b'"S","r":"x","rt":1}',
    b'{"v":1,"t":"call","k":["a",-1,"b","c"],"e":1,"p":0,"f":"f","d":"d","s":"S","r":1}',
    b'{"v":1,"t":"call","k":["a",1,"b","c"],"e":1,"p":0,"f":"f","d":"d","s":"S","r":1,'
    b'"r":2}',
    b'{"v":1,"t":"call","k":["a",1,"b","c"],"e":1,"p":' + b"9" * 30 + b',"f":"f","d":"d",'
    b'"s":"S","r":1}',
    b'{"v":1,"t":"call","k":["a\\u0041",1,"b","c"],"e":1,"p":0,"f":"f","d":"d","s":"S",'
    b'"r":1}',
])
def test_records_the_fast_path_does_not_take_read_as_before(data: bytes) -> None:
    check(data)


@pytest.mark.parametrize("data", [
    HEAD + b'"S","r":"x\x01"}',  # a raw control character: not JSON
    b'{"v":1,"t":"call","k":["a",01,"b","c"],"e":1,"p":0,"f":"f","d":"d","s":"S","r":1}',
    HEAD + b'"S","r":"x\\q"}',  # a bad escape
    HEAD + b'"S","r":"x"}}',
    HEAD + b'"S","r":"x"',
    HEAD + b'"S","r":}',  # was StopIteration, not CorruptRecordError, before
    b'{"v":1,"t":"fence","e":}',
    HEAD + b'"S","r":"x"} x',
    HEAD + b'"S","r":{"__as__":"bytes"}}',
    HEAD + b'"S","r":"\xff"}',
    HEAD + b'"S","r":' + b"1" * 5000 + b"}",  # beyond int()'s digit limit
    b'{"v":1,"t":"call","k":["a",' + b"1" * 5000 + b',"b","c"],"e":1,"p":0,"f":"f",'
    b'"d":"d","s":"S","r":1}',
])
def test_damaged_call_records_are_refused(data: bytes) -> None:
    assert decode_call(data) is None
    with pytest.raises(CorruptRecordError):
        decode_record(data, "test")


def test_apply_call_is_apply_of_the_call_record() -> None:
    records = [CallRecord(StateKey(f"k{n % 3}", n // 6, "a", "e"), n % 2,
                          CallResult("f", "d", CallStatus.SUCCEEDED, n), n // 4)
               for n in range(24)]
    fence = FenceRecord(3)
    one, other = StateIndex(), StateIndex()
    for offset, record in enumerate(records):
        if offset == 12:
            assert one.apply(fence, (offset % 2, offset), 0)
            assert other.apply(fence, (offset % 2, offset), 0)
        position = (offset % 2, offset + 100)
        assert one.apply(record, position, record.epoch) == other.apply_call(
            record.key, record.position, record.call, record.epoch, position)
    assert sorted(one.items(), key=repr) == sorted(other.items(), key=repr)
    assert one.first_positions() == other.first_positions()
    assert len(one) == len(other) > 0


def test_records_read_are_tracked_as_written_ones_are() -> None:
    read, written = Retention(1), Retention(1)
    keys = [(0, 5, b"ns/w1", b"a"), (0, 6, b"ns/w1", b"b"), (0, 6, b"ns/w1", b"b"),
            (0, 7, b"ns/w2", b"1"), (1, 2, b"ns/w1", b"c"), (0, 8, b"ns/w1", b"d"),
            (0, 4, b"ns/w1", b"e")]
    for partition, offset, head, counter in keys:
        read.track_read(partition, offset, head, counter)
        written.track(partition, offset, head + b"/", counter)
    assert (list(read.checkpoint({0: 9, 1: 3}))
            == list(written.checkpoint({0: 9, 1: 3}))
            == [(0, b"ns/w1/a"), (0, b"ns/w1/b"), (0, b"ns/w2/1"), (0, b"ns/w1/d"),
                (1, b"ns/w1/c")])
