"""The contract every action state store keeps, as a pytest suite.

Use it for your own store: subclass :class:`StoreContract` in a test module
and give it a ``store_url`` fixture::

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store_url(self, tmp_path): return f"mystore://{tmp_path}/x"

For pytest's detailed assertion messages from this module, call
``pytest.register_assert_rewrite("actionstate.testing")`` in your ``conftest.py``
before anything imports it.

Every test opens stores with :meth:`StoreContract.open_store` (which closes
them after the test); opening the URL again is how a test simulates a
restarted runner. A store whose :meth:`~ActionStateStore.release` and
:meth:`~ActionStateStore.discard_other_runs` delete records at once sets
``deletes_records = True`` in its subclass (see
:attr:`StoreContract.deletes_records`).
"""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest

from actionstate.checkpoint import Marker
from actionstate.errors import CorruptRecordError, EncryptionKeyError, StoreError
from actionstate.events import InputEvent, OutputEvent
from actionstate.records.codec import decode_record
from actionstate.records.crypto import KEY_FILE_ENV, KEYS_ENV, Sealed
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
from actionstate.stores import ActionStateStore
from actionstate.testing.contract_recovery import RecoveryContract
from actionstate.testing.samples import ContractEvent, complete, key, ok, results

__all__ = ["ContractEvent", "EncryptedStoreContract", "StoreContract"]


class StoreContract(RecoveryContract):
    """Behaviour every :class:`~actionstate.stores.base.ActionStateStore` must show."""

    def test_put_get_round_trip(self, store: ActionStateStore, store_url: str) -> None:
        sk = key("k", 0)
        ok(store, sk, 0, {"text": "hi", "n": [1, 2.5, None, True]})
        store.put(CallRecord(sk, 1, CallResult("g", "0" * 64, CallStatus.FAILED, exception={
            "type": "builtins.ValueError", "message": "bad", "args": ["bad"]})))
        complete(store, sk)
        for candidate in (store, self.reopen(store_url, self.start_marker(store),
                                             read_only=True)):
            state = candidate.get(sk)
            assert state is not None and state.completed
            assert state.calls[0].result == {"text": "hi", "n": [1, 2.5, None, True]}
            assert state.calls[1].status is CallStatus.FAILED
            assert state.calls[1].exception == {"type": "builtins.ValueError",
                                                "message": "bad", "args": ["bad"]}
            assert state.output_events == [ContractEvent(name="x", n=0),
                                           OutputEvent(output=[1, 2])]
            assert state.memory_updates == [MemoryUpdate(MemoryScope.SHORT_TERM, "a.b", 0)]
            assert state.task_event == InputEvent(input={"k": "k"})

    def test_each_put_appends_one_small_record(self, store: ActionStateStore) -> None:
        sk = key("delta", 0)
        before = sum(store.end_offsets().values())
        for position in range(200):
            ok(store, sk, position, "x" * 100)
        store.flush()
        assert sum(store.end_offsets().values()) - before == 200
        marker = self.start_marker(store)
        # A partitioned store may yield its partitions in any order: pick this key's out.
        sizes = [len(data) for _, data, where in store.read(
            store.namespace, marker.offsets,
            store.end_offsets())
            if getattr(decode_record(data, where, store.keyring), "key", None) == sk]
        assert len(sizes) == 200
        assert max(sizes) - min(sizes) <= 4, "a put must not rewrite earlier calls"

    def test_truncate_drops_calls_from_position(self, store: ActionStateStore) -> None:
        sk = key("t", 0)
        for position in range(5):
            ok(store, sk, position, position)
        store.put(TruncateRecord(sk, 2))
        state = store.get(sk)
        assert state is not None and sorted(state.calls) == [0, 1]

    def test_rebuild_restores_only_states_after_marker(
            self, store: ActionStateStore, store_url: str) -> None:
        done, in_flight, later = key("a", 0), key("b", 0), key("a", 1)
        ok(store, done, 0, "done")
        complete(store, done)
        ok(store, in_flight, 0, "in flight at the checkpoint")
        store.prune("a", 0)
        marker = store.recovery_marker()
        json.dumps(marker.to_json())
        assert Marker.from_json(json.loads(json.dumps(marker.to_json()))) == marker
        ok(store, later, 0, "after the checkpoint")
        store.flush()
        restored = self.reopen(store_url, marker)
        held = {(sk.key, sk.seq) for sk, _ in restored.states()}
        assert held == {("b", 0), ("a", 1)}, "the completed, pruned state is not read back"
        state = restored.get(in_flight)
        assert state is not None and state.calls[0].result == "in flight at the checkpoint"

    def test_a_marker_past_the_end_is_a_clear_error(
            self, store: ActionStateStore, store_url: str) -> None:
        """A marker beyond the medium's end (the store was recreated, emptied or put
        back from an older copy since the checkpoint) names records that are gone: a
        rebuild that read nothing there would pay again for every recorded call."""
        sk = key("past", 0)
        ok(store, sk, 0, "recorded")
        store.flush()
        beyond = dataclasses.replace(store.recovery_marker(), offsets={
            p: end + 100 for p, end in store.end_offsets().items()})
        if not self.keeps_records:  # the control: nothing is kept, nothing is refused
            assert len(self.reopen(store_url, beyond).index) == 0
            return
        with pytest.raises(StoreError, match=r"recovery marker starts at (offset|id) \d+: "):
            self.reopen(store_url, beyond)
        state = self.reopen(store_url, self.start_marker(store)).get(sk)
        assert state is not None and state.calls[0].result == "recorded", "nothing is lost"

    def test_no_marker_means_no_rebuild(self, store: ActionStateStore, store_url: str) -> None:
        sk = key("fresh", 0)
        ok(store, sk, 0, 1)
        old_marker = self.start_marker(store)
        fresh = self.reopen(store_url, None)
        assert fresh.get(sk) is None and len(fresh.index) == 0
        ok(fresh, key("fresh", 0, event="f" * 64), 0, "new run")
        fresh.flush()
        again = self.reopen(store_url, old_marker)
        assert again.get(key("fresh", 0, event="f" * 64)) is None, "runs must not mix"
        assert again.get(sk) is not None
        again.rebuild(None)
        assert again.namespace != old_marker.namespace, "a fresh start is a new run"

    def test_divergence_drops_later_seqs_of_that_key_only(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self.start_marker(store)
        for seq in (1, 2, 3):
            ok(store, key("a", seq), 0, seq)
        ok(store, key("a", 1, action="other"), 0, "second action at seq 1")
        ok(store, key("b", 5), 0, "other key")
        assert store.get(key("a", 1, event="9" * 64)) is None
        assert store.has_later("a", 1), "a lookup has no side effect"
        store.drop_after("a", 1)
        for candidate in (store, self.reopen(store_url, marker, read_only=True)):
            assert candidate.get(key("a", 2)) is None
            assert candidate.get(key("a", 3)) is None
            assert candidate.get(key("a", 1)) is not None
            assert candidate.get(key("a", 1, action="other")) is not None
            assert candidate.get(key("b", 5)) is not None

    def test_several_actions_at_one_seq_are_not_divergence(
            self, store: ActionStateStore) -> None:
        ok(store, key("m", 0, action="one"), 0, 1)
        assert store.get(key("m", 0, action="two")) is None
        assert store.get(key("m", 0, action="one")) is not None

    def test_prune_drops_seqs_up_to_and_including(self, store: ActionStateStore) -> None:
        for seq in range(4):
            ok(store, key("p", seq), 0, seq)
        ok(store, key("q", 0), 0, "other")
        store.prune("p", 1)
        held = {(sk.key, sk.seq) for sk, _ in store.states()}
        assert held == {("p", 2), ("p", 3), ("q", 0)}

    @pytest.mark.parametrize("key", ["with_underscores_1_2", "ключ-🔑-键", "a:b/c d", ""])
    def test_any_key_text_round_trips(
            self, store: ActionStateStore, store_url: str, key: str) -> None:
        marker = self.start_marker(store)
        sk = StateKey(key, 7, "act_with_underscore", "e" * 64)
        ok(store, sk, 0, key)
        store.flush()
        state = self.reopen(store_url, marker, read_only=True).get(sk)
        assert state is not None and state.calls[0].result == key

    def test_one_megabyte_payload_round_trips(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self.start_marker(store)
        big = "x" * (1 << 20)
        ok(store, key("big", 0), 0, {"blob": big, "bytes": b"\x00\xff" * 10})
        store.flush()
        state = self.reopen(store_url, marker, read_only=True).get(key("big", 0))
        assert state is not None
        assert state.calls[0].result == {"blob": big, "bytes": b"\x00\xff" * 10}

    def test_corrupted_record_names_the_record(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self.start_marker(store)
        ok(store, key("c", 0), 0, 1)
        store.append(CompleteRecord(key("c", 0), InputEvent(input=1), (), ()),
                     b"{not json", sync=True)
        with pytest.raises(CorruptRecordError) as info:
            self.reopen(store_url, marker, read_only=True)
        where = str(info.value)
        assert "record at" in where and "not valid JSON" in where

    def test_unknown_format_version_is_refused(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self.start_marker(store)
        store.append(CompleteRecord(key("v", 0), InputEvent(input=1), (), ()),
                     b'{"v":99,"t":"fence","e":1}', sync=True)
        with pytest.raises(CorruptRecordError, match="format version 99"):
            self.reopen(store_url, marker, read_only=True)

    def test_group_durability_is_durable_after_flush(self, store_url: str) -> None:
        store = self.open_store(store_url, durability="group")
        store.rebuild(None)
        marker = self.start_marker(store)
        for seq in range(50):
            ok(store, key(f"g{seq % 7}", seq), 0, seq)
        store.flush()
        other = self.reopen(store_url, marker, read_only=True)
        assert all(other.get(key(f"g{seq % 7}", seq)) is not None for seq in range(50))

    def test_a_group_commit_finished_on_another_thread_covers_what_was_put_before_it(
            self, store_url: str) -> None:
        """As a runner commits a group: ``flush_begin(write_now=False)`` on the putting
        thread, its returned part on another while puts go on (1,200 records: SQLite
        writes a batch that large on the committing thread)."""
        store = self.open_store(store_url, durability="group")
        store.rebuild(None)
        marker = self.start_marker(store)
        for seq in range(1200):
            ok(store, key(f"t{seq % 7}", seq), 0, seq)
        finish = store.flush_begin(write_now=False)
        committer = threading.Thread(target=finish) if finish is not None else None
        if committer is not None:
            committer.start()
        for seq in range(1200, 1300):  # meanwhile: for the next commit
            ok(store, key(f"t{seq % 7}", seq), 0, seq)
        if committer is not None:
            committer.join()
        first = self.reopen(store_url, marker, read_only=True)
        assert all(first.get(key(f"t{seq % 7}", seq)) is not None for seq in range(1200))
        store.flush()
        every = self.reopen(store_url, marker, read_only=True)
        assert [results(every, key(f"t{seq % 7}", seq)) for seq in range(1300)] == [
            {0: seq} for seq in range(1300)]

    def test_sync_put_is_visible_to_a_new_instance_at_once(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self.start_marker(store)
        ok(store, key("s", 0), 0, "durable")
        other = self.reopen(store_url, marker, read_only=True)
        assert other.get(key("s", 0)) is not None

    def test_payloads_are_sealed_at_rest_exactly_when_keys_are_configured(
            self, store: ActionStateStore, store_url: str) -> None:
        """The raw records hold no payload in clear with a keyring (the encrypted variant
        of the suite), and every payload in clear without (the control); the fields a
        rebuild reads stay readable either way."""
        marker = self.start_marker(store)
        sk = key("readable-key", 0)
        ok(store, sk, 0, {"card": "CANARY-result"})
        store.put(CallRecord(sk, 1, CallResult("f", "d" * 64, CallStatus.FAILED, exception={
            "type": "builtins.ValueError", "message": "CANARY-exception", "args": []})))
        store.put(CompleteRecord(
            sk, InputEvent(input="CANARY-input"), (OutputEvent(output="CANARY-output"),),
            (MemoryUpdate(MemoryScope.SHORT_TERM, "a", "CANARY-memory"),)))
        store.flush()
        raw = b"\n".join(data for _, data, _ in store.read(
            store.namespace, marker.offsets, store.end_offsets()))
        assert b"readable-key" in raw
        canaries = {w for w in (b"CANARY-result", b"CANARY-exception", b"CANARY-input",
                                b"CANARY-output", b"CANARY-memory") if w in raw}
        if store.keyring is None:
            assert len(canaries) == 5
        else:
            assert canaries == set(), "a payload is in clear under encryption"
        state = self.reopen(store_url, marker, read_only=True).get(sk)
        assert state is not None and state.calls[0].result == {"card": "CANARY-result"}
        assert state.calls[1].exception is not None
        assert state.calls[1].exception["message"] == "CANARY-exception"
        assert state.task_event == InputEvent(input="CANARY-input")
        assert state.memory_updates == [
            MemoryUpdate(MemoryScope.SHORT_TERM, "a", "CANARY-memory")]

    def test_close_twice_is_fine(self, store_url: str) -> None:
        store = self.open_store(store_url)
        store.close()
        store.close()


KEY_1 = "key-1:" + "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE="  # 32 x "1"
KEY_2 = "key-2:" + "MjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjI="  # 32 x "2"
WRONG_1 = "key-1:" + "OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk="  # 32 x "9"


class EncryptedStoreContract(StoreContract):
    """The whole contract again with payloads sealed (keys in ``ACTIONSTATE_KEYS``), plus
    key rotation and missing or wrong keys. Subclass it beside your store's plain
    contract class, with the same ``store_url`` fixture (multiple inheritance: put this
    class first)."""

    @pytest.fixture(autouse=True)
    def _keys(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(KEYS_ENV, KEY_1)
        monkeypatch.delenv(KEY_FILE_ENV, raising=False)

    def test_keys_rotate_and_old_records_stay_readable(
            self, store: ActionStateStore, store_url: str,
            monkeypatch: pytest.MonkeyPatch) -> None:
        assert store.keyring is not None and store.keyring.active == "key-1"
        marker = self.start_marker(store)
        ok(store, key("r", 0), 0, "under key 1")
        store.flush()
        monkeypatch.setenv(KEYS_ENV, f"{KEY_2},{KEY_1}")  # key 2 seals, key 1 still opens
        second = self.reopen(store_url, marker)
        ok(second, key("r", 1), 0, "under key 2")
        second.flush()
        third = self.reopen(store_url, marker, read_only=True)
        assert [third.get(key("r", s)).calls[0].result  # type: ignore[union-attr]
                for s in (0, 1)] == ["under key 1", "under key 2"]
        raw = [data for _, data, _ in third.read(third.namespace, marker.offsets,
                                                 third.end_offsets()) if b'"z"' in data]
        assert [b'"key-1"' in d for d in raw] == [True, False]
        assert [b'"key-2"' in d for d in raw] == [False, True]
        monkeypatch.setenv(KEYS_ENV, KEY_2)  # key 1 dropped too early
        with pytest.raises(EncryptionKeyError, match="encrypted with key 'key-1'") as info:
            self.reopen(store_url, marker, read_only=True)
        assert "add key 'key-1'" in str(info.value)

    def test_a_wrong_key_or_none_is_a_clear_error_never_a_silent_miss(
            self, store: ActionStateStore, store_url: str,
            monkeypatch: pytest.MonkeyPatch) -> None:
        marker = self.start_marker(store)
        ok(store, key("w", 0), 0, "sealed")
        store.flush()
        monkeypatch.setenv(KEYS_ENV, WRONG_1)
        with pytest.raises(EncryptionKeyError, match="does not decrypt with the configured "
                                                     "key 'key-1'") as info:
            self.reopen(store_url, marker, read_only=True)
        assert "OTk5" not in str(info.value) and "MTEx" not in str(info.value)
        monkeypatch.delenv(KEYS_ENV)
        with pytest.raises(EncryptionKeyError, match="no key is configured"):
            self.reopen(store_url, marker, read_only=True)
        looker = self.open_store(store_url)  # inspection: sealed payloads shown as such
        looker.sealed_ok = True
        looker.rebuild(marker, read_only=True)
        state = looker.get(key("w", 0))
        assert state is not None and state.calls[0].result == Sealed("key-1")
