"""Issue 10 part 4, the hot path: the faster encoders write the same bytes, digests do
not change, and a SQLite group commit can run on another thread."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from actionstate.events import InputEvent, OutputEvent
from actionstate.records.codec import decode_record, encode_record
from actionstate.records.digests import (
    _digest_default,
    _keyed,
    args_digest,
    canonical_bytes,
    digest,
)
from actionstate.records.state import (
    CallRecord,
    CallResult,
    CallStatus,
    CompleteRecord,
    MemoryScope,
    MemoryUpdate,
    StateKey,
    TruncateRecord,
)
from actionstate.records.untag import untag
from actionstate.records.values import STORED, stored_json, wire
from actionstate.testing.samples import EDGE_VALUES as VALUES


def reference_canonical(value: Any) -> bytes:
    """canonical_bytes as it was written before the hot-path work (a new json encoder per
    call, with its circular-reference checks)."""
    options: dict[str, Any] = {"sort_keys": True, "separators": (",", ":"),
                               "ensure_ascii": False}
    try:
        return json.dumps(value, default=_digest_default, **options).encode()
    except TypeError:
        return json.dumps(_keyed(value), default=lambda o: _keyed(_digest_default(o)),
                          **options).encode()


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_canonical_bytes_and_digests_are_unchanged(value: Any) -> None:
    assert canonical_bytes(value) == reference_canonical(value)
    assert digest(value) == hashlib.sha256(reference_canonical(value)).hexdigest()


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_args_digest_is_the_digest_of_args_and_kwargs(value: Any) -> None:
    for args, kwargs in [((value,), {}), ((1, value, "x"), {}), ((), {"k": value}),
                         ((value, value), {"b": [value], "a": 1})]:
        expected = hashlib.sha256(reference_canonical([list(args), kwargs])).hexdigest()
        assert args_digest(args, kwargs) == expected


def test_a_value_that_contains_itself_is_refused_as_it_always_was() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        canonical_bytes(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        args_digest((loop,), {})


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_stored_json_is_the_stored_encoder_s_text(value: Any) -> None:
    assert stored_json(value) == STORED.encode(wire(value))


KEY = StateKey("key_ü", 7, "act", "e" * 64)


def generic_call(record: CallRecord, epoch: int) -> bytes:
    call = record.call
    env: dict[str, Any] = {"v": 1, "t": "call", "k": [KEY.key, KEY.seq, KEY.action,
                                                        KEY.event_id],
                           "e": epoch, "p": record.position, "f": call.function_id,
                           "d": call.args_digest, "s": call.status.value}
    if call.status is CallStatus.SUCCEEDED:
        env["r"] = wire(call.result)
    return STORED.encode(env).encode()


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_call_record_is_written_with_the_same_bytes(value: Any) -> None:
    for status in (CallStatus.SUCCEEDED, CallStatus.PENDING):
        record = CallRecord(KEY, 3, CallResult("mod.fn", digest(value), status,
                                               value if status is CallStatus.SUCCEEDED
                                               else None))
        for epoch in (0, 5):
            data = encode_record(record, epoch)
            assert data == generic_call(record, epoch)
            again = decode_record(data, "test")
            assert again.epoch == epoch and type(again) is CallRecord
            assert again.call.status is status
            assert encode_record(again, epoch) == data


def test_a_complete_record_is_written_with_the_same_bytes() -> None:
    record = CompleteRecord(
        KEY, InputEvent(input={"n": 1.5, "s": "ü"}),
        (OutputEvent(output={"id": "T1", "v": (1, 2)}), OutputEvent(output=None)),
        (MemoryUpdate(MemoryScope.SHORT_TERM, "a.b", {"x": b"\x01"}),
         MemoryUpdate(MemoryScope.SENSORY, "c", 1e16)))
    env = {"v": 1, "t": "done", "k": [KEY.key, KEY.seq, KEY.action, KEY.event_id], "e": 9,
           "ev": wire(record.task_event), "out": [wire(e) for e in record.output_events],
           "mem": [[m.scope, m.path, wire(m.value)] for m in record.memory_updates]}
    data = encode_record(record, 9)
    assert data == STORED.encode(env).encode()
    assert encode_record(decode_record(data, "test"), 9) == data


@pytest.mark.parametrize("data", [
    b'{"v":1,"t":"fence","e":3}',
    b' {"v":1,"t":"fence","e":3}\n',
    b'\xef\xbb\xbf{"v":1,"t":"fence","e":3}',
    '{"v":1,"t":"fence","e":3,"w":"ü"}'.encode("utf-16"),
    '{"v":1,"t":"fence","e":3,"w":"ü"}'.encode("utf-16-le"),
])
def test_records_read_as_json_loads_reads_them(data: bytes) -> None:
    record = decode_record(data, "test")
    assert record == decode_record(json.dumps(json.loads(data)).encode(), "test")


@pytest.mark.parametrize("data", [
    b'{"v":1,"t":"fence","e":3} x', b'{"v":1,"t":"fence","e":3}{}', b'{"v":1,', b"{\x00",
    b'{"v":1,"t":"call","k":["a",1,"b","c"],"e":1,"p":0,"f":"f","d":"d","s":"S",'
    b'"r":{"__as__":"bytes"}}',
])
def test_damaged_records_are_refused_as_before(data: bytes) -> None:
    from actionstate.errors import CorruptRecordError

    with pytest.raises(CorruptRecordError):
        decode_record(data, "test")
    with pytest.raises((ValueError, KeyError)):
        json.loads(data, object_hook=untag)


def test_decoded_records_of_one_action_share_their_key() -> None:
    records = [CallRecord(KEY, p, CallResult("f", "d", CallStatus.SUCCEEDED, p))
               for p in range(3)]
    decoded = [decode_record(encode_record(r, 1), "test") for r in records]
    assert decoded == [CallRecord(r.key, r.position, r.call, 1) for r in records]
    keys = [r.key for r in decoded if isinstance(r, CallRecord)]
    assert keys[0] is keys[1] is keys[2]
    odd = decode_record(b'{"v":1,"t":"trunc","k":["key_\\u00fc",7.0,"act","' + b"e" * 64
                        + b'"],"e":1,"p":0}', "test")
    assert isinstance(odd, TruncateRecord)
    assert odd.key == KEY and type(odd.key.seq) is int


# -- a SQLite group commit on another thread --------------------------------------------------


def _call(n: int) -> CallRecord:
    key = StateKey(f"k{n % 7}", n // 7, "act", "e" * 64)
    return CallRecord(key, n % 3, CallResult("f", "d", CallStatus.SUCCEEDED, n))


def _stored(path: Any, namespace: str) -> list[int]:
    """The results of the call records of ``namespace`` in ``path``, in log order."""
    import sqlite3

    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT payload FROM records WHERE namespace=? ORDER BY id",
                          (namespace,)).fetchall()
    finally:
        db.close()
    records = [decode_record(payload, "test") for (payload,) in rows]
    return [r.call.result for r in records if isinstance(r, CallRecord)]


def test_flushes_on_a_thread_and_puts_on_another_lose_and_repeat_nothing(tmp_path: Any) -> None:
    import threading

    from actionstate.stores.sqlite import SqliteActionStateStore

    path = tmp_path / "state.db"
    store = SqliteActionStateStore(path, "group")
    store.rebuild(None)
    stop = threading.Event()
    flushes = [0]

    def flusher() -> None:
        while not stop.is_set():
            store.flush()
            flushes[0] += 1

    thread = threading.Thread(target=flusher)
    thread.start()
    try:
        for n in range(6000):
            store.put(_call(n), sync=n % 500 == 499)  # now and then a sync put
    finally:
        stop.set()
        thread.join()
    store.flush()
    assert flushes[0] > 1
    assert _stored(path, store.namespace) == list(range(6000))
    marker = store.recovery_marker()
    store.close()
    again = SqliteActionStateStore(path, "group")
    assert again.rebuild(marker, read_only=True) >= 6000
    assert again.get(_call(5999).key) is not None
    again.close()


def test_a_group_put_does_not_wait_for_a_flush_in_progress(tmp_path: Any) -> None:
    import threading

    from actionstate.stores.sqlite import SqliteActionStateStore

    path = tmp_path / "state.db"
    store = SqliteActionStateStore(path, "group")
    store.rebuild(None)
    inserting, release = threading.Event(), threading.Event()
    insert_many = store._insert_many

    def slow_insert(rows: list[Any]) -> int:
        inserting.set()
        assert release.wait(10)
        return insert_many(rows)

    store._insert_many = slow_insert  # type: ignore[method-assign]
    for n in range(10):
        store.put(_call(n))
    thread = threading.Thread(target=store.flush)
    thread.start()
    try:
        assert inserting.wait(10)
        for n in range(10, 20):  # while the commit of the first ten is held up
            store.put(_call(n))
        assert _stored(path, store.namespace) == []
        sync = threading.Thread(target=store.put, args=(_call(20),), kwargs={"sync": True})
        sync.start()  # a sync put waits for the commit in progress, then goes after it
        sync.join(0.2)
        assert sync.is_alive()
    finally:
        release.set()
        thread.join()
    sync.join()
    assert _stored(path, store.namespace) == list(range(21))
    store.close()


def test_a_group_commit_uses_few_statements_of_few_sizes() -> None:
    from actionstate.stores.sqlite import _row_counts

    sizes: set[int] = set()
    for total in range(1, 5000):
        counts = list(_row_counts(total, 1024))
        assert sum(counts) == total and all(0 < c <= 1024 for c in counts)
        assert len(counts) <= total // 1024 + 3
        sizes.update(counts)
    assert len(sizes) <= 30  # prepared statements sqlite3 keeps cached
