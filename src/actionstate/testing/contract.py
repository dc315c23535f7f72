"""The contract every action state store keeps, as a pytest suite.

Use it for your own store: subclass :class:`StoreContract` in a test module
and give it a ``store_url`` fixture::

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store_url(self, tmp_path): return f"mystore://{tmp_path}/x"

Every test opens stores with :func:`~actionstate.stores.open_store`; opening
the URL again is how a test simulates a restarted runner.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from actionstate.durable.codec import decode_record
from actionstate.durable.state import (
    CallRecord,
    CallResult,
    CallStatus,
    CompleteRecord,
    MemoryUpdate,
    StateKey,
    TruncateRecord,
)
from actionstate.errors import CorruptRecordError
from actionstate.events import Event, InputEvent, OutputEvent
from actionstate.stores import ActionStateStore, open_store

__all__ = ["ContractEvent", "StoreContract"]


class ContractEvent(Event):
    """An event type used by the contract suite."""

    event_type = "actionstate.testing.ContractEvent"
    name: str
    n: int


def _key(key: str, seq: int, action: str = "act", event: str = "e" * 64) -> StateKey:
    return StateKey(key, seq, action, event)


def _ok(store: ActionStateStore, sk: StateKey, position: int, result: Any) -> None:
    store.put(CallRecord(sk, position, CallResult("f", "d" * 64, CallStatus.SUCCEEDED, result),
                         store.epoch))


def _complete(store: ActionStateStore, sk: StateKey) -> None:
    store.put(CompleteRecord(
        sk, InputEvent(input={"k": sk.key}), (ContractEvent(name="x", n=sk.seq),
                                              OutputEvent(output=[1, 2])),
        (MemoryUpdate("short_term", "a.b", sk.seq),), store.epoch))


class StoreContract:
    """Behaviour every :class:`~actionstate.stores.base.ActionStateStore` must show."""

    @pytest.fixture
    def store_url(self) -> str:
        raise NotImplementedError("define a store_url fixture in the subclass")

    @pytest.fixture
    def store(self, store_url: str) -> Iterator[ActionStateStore]:
        store = open_store(store_url)
        store.rebuild(None)
        store.fence()
        yield store
        store.close()

    def reopen(self, url: str, marker: dict[str, Any] | None) -> ActionStateStore:
        store = open_store(url)
        store.rebuild(marker)
        return store

    def test_put_get_round_trip(self, store: ActionStateStore, store_url: str) -> None:
        sk = _key("k", 0)
        _ok(store, sk, 0, {"text": "hi", "n": [1, 2.5, None, True]})
        store.put(CallRecord(sk, 1, CallResult("g", "0" * 64, CallStatus.FAILED, exception={
            "type": "builtins.ValueError", "message": "bad", "args": ["bad"]}), store.epoch))
        _complete(store, sk)
        for candidate in (store, self.reopen(store_url, self._start_marker(store))):
            state = candidate.get(sk)
            assert state is not None and state.completed
            assert state.calls[0].result == {"text": "hi", "n": [1, 2.5, None, True]}
            assert state.calls[1].status is CallStatus.FAILED
            assert state.calls[1].exception == {"type": "builtins.ValueError",
                                                "message": "bad", "args": ["bad"]}
            assert state.output_events == [ContractEvent(name="x", n=0),
                                           OutputEvent(output=[1, 2])]
            assert state.memory_updates == [MemoryUpdate("short_term", "a.b", 0)]
            assert state.task_event == InputEvent(input={"k": "k"})

    def _start_marker(self, store: ActionStateStore) -> dict[str, Any]:
        marker = store.recovery_marker()
        return dict(marker, offsets={p: 0 for p in marker["offsets"]})

    def test_each_put_appends_one_small_record(self, store: ActionStateStore) -> None:
        sk = _key("delta", 0)
        before = sum(store.end_offsets().values())
        for position in range(200):
            _ok(store, sk, position, "x" * 100)
        store.flush()
        assert sum(store.end_offsets().values()) - before == 200
        marker = self._start_marker(store)
        # A partitioned store may yield its partitions in any order: pick this key's out.
        sizes = [len(data) for _, data, where in store.read(
            store.namespace, {int(p): o for p, o in marker["offsets"].items()},
            store.end_offsets()) if getattr(decode_record(data, where), "key", None) == sk]
        assert len(sizes) == 200
        assert max(sizes) - min(sizes) <= 4, "a put must not rewrite earlier calls"

    def test_truncate_drops_calls_from_position(self, store: ActionStateStore) -> None:
        sk = _key("t", 0)
        for position in range(5):
            _ok(store, sk, position, position)
        store.put(TruncateRecord(sk, 2, store.epoch))
        state = store.get(sk)
        assert state is not None and sorted(state.calls) == [0, 1]

    def test_rebuild_restores_only_states_after_marker(
            self, store: ActionStateStore, store_url: str) -> None:
        done, in_flight, later = _key("a", 0), _key("b", 0), _key("a", 1)
        _ok(store, done, 0, "done")
        _complete(store, done)
        _ok(store, in_flight, 0, "in flight at the checkpoint")
        store.prune("a", 0)
        marker = store.recovery_marker()
        json.dumps(marker)
        _ok(store, later, 0, "after the checkpoint")
        store.flush()
        restored = self.reopen(store_url, marker)
        assert restored.get(done) is None
        assert restored.get(later) is not None
        state = restored.get(in_flight)
        assert state is not None and state.calls[0].result == "in flight at the checkpoint"
        restored.close()

    def test_no_marker_means_no_rebuild(self, store: ActionStateStore, store_url: str) -> None:
        sk = _key("fresh", 0)
        _ok(store, sk, 0, 1)
        old_marker = self._start_marker(store)
        fresh = self.reopen(store_url, None)
        assert fresh.get(sk) is None and len(fresh.index) == 0
        fresh.fence()
        _ok(fresh, _key("fresh", 0, event="f" * 64), 0, "new run")
        fresh.flush()
        again = self.reopen(store_url, old_marker)
        assert again.get(_key("fresh", 0, event="f" * 64)) is None, "runs must not mix"
        assert again.get(sk) is not None
        again.rebuild(None)
        assert again.namespace != old_marker["namespace"], "a fresh start is a new run"
        fresh.close()
        again.close()

    def test_divergence_drops_later_seqs_of_that_key_only(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self._start_marker(store)
        for seq in (1, 2, 3):
            _ok(store, _key("a", seq), 0, seq)
        _ok(store, _key("a", 1, action="other"), 0, "second action at seq 1")
        _ok(store, _key("b", 5), 0, "other key")
        assert store.get(_key("a", 1, event="9" * 64)) is None
        for candidate in (store, self.reopen(store_url, marker)):
            assert candidate.get(_key("a", 2)) is None
            assert candidate.get(_key("a", 3)) is None
            assert candidate.get(_key("a", 1)) is not None
            assert candidate.get(_key("a", 1, action="other")) is not None
            assert candidate.get(_key("b", 5)) is not None

    def test_several_actions_at_one_seq_are_not_divergence(
            self, store: ActionStateStore) -> None:
        _ok(store, _key("m", 0, action="one"), 0, 1)
        assert store.get(_key("m", 0, action="two")) is None
        assert store.get(_key("m", 0, action="one")) is not None

    def test_prune_drops_seqs_up_to_and_including(self, store: ActionStateStore) -> None:
        for seq in range(4):
            _ok(store, _key("p", seq), 0, seq)
        _ok(store, _key("q", 0), 0, "other")
        store.prune("p", 1)
        held = {(sk.key, sk.seq) for sk, _ in store.states()}
        assert held == {("p", 2), ("p", 3), ("q", 0)}

    @pytest.mark.parametrize("key", ["with_underscores_1_2", "ключ-🔑-键", "a:b/c d", ""])
    def test_any_key_text_round_trips(
            self, store: ActionStateStore, store_url: str, key: str) -> None:
        marker = self._start_marker(store)
        sk = StateKey(key, 7, "act_with_underscore", "e" * 64)
        _ok(store, sk, 0, key)
        store.flush()
        state = self.reopen(store_url, marker).get(sk)
        assert state is not None and state.calls[0].result == key

    def test_one_megabyte_payload_round_trips(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self._start_marker(store)
        big = "x" * (1 << 20)
        _ok(store, _key("big", 0), 0, {"blob": big, "bytes": b"\x00\xff" * 10})
        store.flush()
        state = self.reopen(store_url, marker).get(_key("big", 0))
        assert state is not None
        assert state.calls[0].result == {"blob": big, "bytes": b"\x00\xff" * 10}

    def test_corrupted_record_names_the_record(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self._start_marker(store)
        _ok(store, _key("c", 0), 0, 1)
        store.append(CompleteRecord(_key("c", 0), InputEvent(input=1), (), (), 0),
                     b"{not json", sync=True)
        with pytest.raises(CorruptRecordError) as info:
            self.reopen(store_url, marker)
        where = str(info.value)
        assert "record at" in where and "not valid JSON" in where

    def test_unknown_format_version_is_refused(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self._start_marker(store)
        store.append(CompleteRecord(_key("v", 0), InputEvent(input=1), (), (), 0),
                     b'{"v":99,"t":"fence","e":1}', sync=True)
        with pytest.raises(CorruptRecordError, match="format version 99"):
            self.reopen(store_url, marker)

    def test_group_durability_is_durable_after_flush(self, store_url: str) -> None:
        store = open_store(store_url, durability="group")
        store.rebuild(None)
        store.fence()
        marker = self._start_marker(store)
        for seq in range(50):
            _ok(store, _key(f"g{seq % 7}", seq), 0, seq)
        store.flush()
        other = self.reopen(store_url, marker)
        assert all(other.get(_key(f"g{seq % 7}", seq)) is not None for seq in range(50))
        store.close()
        other.close()

    def test_sync_put_is_visible_to_a_new_instance_at_once(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self._start_marker(store)
        _ok(store, _key("s", 0), 0, "durable")
        other = self.reopen(store_url, marker)
        assert other.get(_key("s", 0)) is not None
        other.close()

    def test_zombie_records_after_a_fence_are_ignored(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self._start_marker(store)
        _ok(store, _key("z", 0), 0, "before takeover")
        successor = self.reopen(store_url, marker)
        successor.fence()
        _ok(store, _key("z", 0), 1, "zombie write")
        _ok(successor, _key("z", 0), 1, "successor write")
        successor.flush()
        store.flush()
        latest = self.reopen(store_url, marker)
        state = latest.get(_key("z", 0))
        assert state is not None
        assert state.calls[0].result == "before takeover"
        assert state.calls[1].result == "successor write"
        successor.close()
        latest.close()

    def test_close_twice_is_fine(self, store_url: str) -> None:
        store = open_store(store_url)
        store.close()
        store.close()
