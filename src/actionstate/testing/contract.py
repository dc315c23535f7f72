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

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from actionstate.checkpoint import Marker
from actionstate.errors import CorruptRecordError, FencedError
from actionstate.events import Event, InputEvent, OutputEvent
from actionstate.records.codec import decode_record
from actionstate.records.index import Position
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
from actionstate.stores import ActionStateStore, Durability, open_store

__all__ = ["ContractEvent", "StoreContract"]


class ContractEvent(Event):
    """An event type used by the contract suite."""

    event_type = "actionstate.testing.ContractEvent"
    name: str
    n: int


def _key(key: str, seq: int, action: str = "act", event: str = "e" * 64) -> StateKey:
    return StateKey(key, seq, action, event)


def _call(sk: StateKey, position: int, result: Any) -> CallRecord:
    return CallRecord(sk, position, CallResult("f", "d" * 64, CallStatus.SUCCEEDED, result))


def _ok(store: ActionStateStore, sk: StateKey, position: int, result: Any) -> None:
    store.put(_call(sk, position, result))


def _done(sk: StateKey) -> CompleteRecord:
    return CompleteRecord(
        sk, InputEvent(input={"k": sk.key}), (ContractEvent(name="x", n=sk.seq),
                                              OutputEvent(output=[1, 2])),
        (MemoryUpdate(MemoryScope.SHORT_TERM, "a.b", sk.seq),))


def _complete(store: ActionStateStore, sk: StateKey) -> None:
    store.put(_done(sk))


def _recorded(store: ActionStateStore, name: str) -> tuple[StateKey, Marker]:
    """One call recorded for key ``name``, and the marker a checkpoint would take then."""
    sk = _key(name, 0)
    _ok(store, sk, 0, "recorded")
    return sk, store.recovery_marker()


def _results(store: ActionStateStore, sk: StateKey) -> dict[int, Any] | None:
    state = store.get(sk)
    return None if state is None else {p: c.result for p, c in sorted(state.calls.items())}


class StoreContract:
    """Behaviour every :class:`~actionstate.stores.base.ActionStateStore` must show."""

    deletes_records: ClassVar[bool | None] = None
    """Whether the store's ``release`` and ``discard_other_runs`` delete records at
    once, so that reading them back returns them no more (SQLite: True); False for a
    store that keeps them (the default hooks; Kafka, whose tombstones take effect
    only when compaction runs; Fluss). None checks only that either holds: all of
    the records concerned come back, or none."""

    @pytest.fixture
    def store_url(self) -> str:
        raise NotImplementedError("define a store_url fixture in the subclass")

    @pytest.fixture(autouse=True)
    def _close_opened_stores(self) -> Iterator[None]:
        """Every store :meth:`open_store` opened is closed after the test, last first."""
        with contextlib.ExitStack() as opened:
            self._opened = opened
            yield

    @pytest.fixture
    def store(self, _close_opened_stores: None, store_url: str) -> ActionStateStore:
        """A fresh start on ``store_url``."""
        store = self.open_store(store_url)
        store.rebuild(None)
        return store

    def open_store(self, url: str, durability: Durability = "sync") -> ActionStateStore:
        """:func:`~actionstate.stores.open_store`, closed after the test."""
        store = open_store(url, durability=durability)
        self._opened.callback(store.close)
        return store

    def reopen(self, url: str, marker: Marker | None, *,
               read_only: bool = False) -> ActionStateStore:
        """A restarted runner's store (it claims a new epoch), or a read-only look;
        closed after the test."""
        store = self.open_store(url)
        store.rebuild(marker, read_only=read_only)
        return store

    def deletes(self, store: ActionStateStore) -> bool | None:
        """:attr:`deletes_records`; if unset, False for a store with the default hooks."""
        if self.deletes_records is None and (
                type(store).release is ActionStateStore.release
                and type(store).discard_other_runs is ActionStateStore.discard_other_runs):
            return False
        return self.deletes_records

    def run_log(self, store: ActionStateStore) -> set[tuple[Position, bytes]]:
        """Every record of the store's run, read from the start of every partition."""
        start = self._start_marker(store).offsets
        return {(position, data) for position, data, _ in store.read(
            store.namespace, start, store.end_offsets())}

    def zombie_put(self, zombie: ActionStateStore, record: Record) -> None:
        """A write by an instance a successor took over: refused where the medium
        fences (``refuses_zombies``), else written and ignored by every rebuild."""
        if zombie.refuses_zombies:
            with pytest.raises(FencedError):
                zombie.put(record)
                zombie.flush()
        else:
            zombie.put(record)
            zombie.flush()

    def test_put_get_round_trip(self, store: ActionStateStore, store_url: str) -> None:
        sk = _key("k", 0)
        _ok(store, sk, 0, {"text": "hi", "n": [1, 2.5, None, True]})
        store.put(CallRecord(sk, 1, CallResult("g", "0" * 64, CallStatus.FAILED, exception={
            "type": "builtins.ValueError", "message": "bad", "args": ["bad"]})))
        _complete(store, sk)
        for candidate in (store, self.reopen(store_url, self._start_marker(store),
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

    def _start_marker(self, store: ActionStateStore) -> Marker:
        """A marker at the start of every partition (reads the whole run back)."""
        marker = store.recovery_marker()
        return dataclasses.replace(marker, offsets=dict.fromkeys(marker.offsets, 0),
                                   fences=dict.fromkeys(marker.offsets, 0))

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
            store.namespace, marker.offsets,
            store.end_offsets()) if getattr(decode_record(data, where), "key", None) == sk]
        assert len(sizes) == 200
        assert max(sizes) - min(sizes) <= 4, "a put must not rewrite earlier calls"

    def test_truncate_drops_calls_from_position(self, store: ActionStateStore) -> None:
        sk = _key("t", 0)
        for position in range(5):
            _ok(store, sk, position, position)
        store.put(TruncateRecord(sk, 2))
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
        json.dumps(marker.to_json())
        assert Marker.from_json(json.loads(json.dumps(marker.to_json()))) == marker
        _ok(store, later, 0, "after the checkpoint")
        store.flush()
        restored = self.reopen(store_url, marker)
        held = {(sk.key, sk.seq) for sk, _ in restored.states()}
        assert held == {("b", 0), ("a", 1)}, "the completed, pruned state is not read back"
        state = restored.get(in_flight)
        assert state is not None and state.calls[0].result == "in flight at the checkpoint"

    def test_no_marker_means_no_rebuild(self, store: ActionStateStore, store_url: str) -> None:
        sk = _key("fresh", 0)
        _ok(store, sk, 0, 1)
        old_marker = self._start_marker(store)
        fresh = self.reopen(store_url, None)
        assert fresh.get(sk) is None and len(fresh.index) == 0
        _ok(fresh, _key("fresh", 0, event="f" * 64), 0, "new run")
        fresh.flush()
        again = self.reopen(store_url, old_marker)
        assert again.get(_key("fresh", 0, event="f" * 64)) is None, "runs must not mix"
        assert again.get(sk) is not None
        again.rebuild(None)
        assert again.namespace != old_marker.namespace, "a fresh start is a new run"

    def test_divergence_drops_later_seqs_of_that_key_only(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self._start_marker(store)
        for seq in (1, 2, 3):
            _ok(store, _key("a", seq), 0, seq)
        _ok(store, _key("a", 1, action="other"), 0, "second action at seq 1")
        _ok(store, _key("b", 5), 0, "other key")
        assert store.get(_key("a", 1, event="9" * 64)) is None
        assert store.has_later("a", 1), "a lookup has no side effect"
        store.drop_after("a", 1)
        for candidate in (store, self.reopen(store_url, marker, read_only=True)):
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
        state = self.reopen(store_url, marker, read_only=True).get(sk)
        assert state is not None and state.calls[0].result == key

    def test_one_megabyte_payload_round_trips(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self._start_marker(store)
        big = "x" * (1 << 20)
        _ok(store, _key("big", 0), 0, {"blob": big, "bytes": b"\x00\xff" * 10})
        store.flush()
        state = self.reopen(store_url, marker, read_only=True).get(_key("big", 0))
        assert state is not None
        assert state.calls[0].result == {"blob": big, "bytes": b"\x00\xff" * 10}

    def test_corrupted_record_names_the_record(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self._start_marker(store)
        _ok(store, _key("c", 0), 0, 1)
        store.append(CompleteRecord(_key("c", 0), InputEvent(input=1), (), ()),
                     b"{not json", sync=True)
        with pytest.raises(CorruptRecordError) as info:
            self.reopen(store_url, marker, read_only=True)
        where = str(info.value)
        assert "record at" in where and "not valid JSON" in where

    def test_unknown_format_version_is_refused(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self._start_marker(store)
        store.append(CompleteRecord(_key("v", 0), InputEvent(input=1), (), ()),
                     b'{"v":99,"t":"fence","e":1}', sync=True)
        with pytest.raises(CorruptRecordError, match="format version 99"):
            self.reopen(store_url, marker, read_only=True)

    def test_group_durability_is_durable_after_flush(self, store_url: str) -> None:
        store = self.open_store(store_url, durability="group")
        store.rebuild(None)
        marker = self._start_marker(store)
        for seq in range(50):
            _ok(store, _key(f"g{seq % 7}", seq), 0, seq)
        store.flush()
        other = self.reopen(store_url, marker, read_only=True)
        assert all(other.get(_key(f"g{seq % 7}", seq)) is not None for seq in range(50))

    def test_sync_put_is_visible_to_a_new_instance_at_once(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self._start_marker(store)
        _ok(store, _key("s", 0), 0, "durable")
        other = self.reopen(store_url, marker, read_only=True)
        assert other.get(_key("s", 0)) is not None

    # -- recovery: several crashes, and zombies ----------------------------------

    def test_a_call_survives_two_restarts_while_its_action_is_in_flight(
            self, store: ActionStateStore, store_url: str) -> None:
        sk = _key("slow", 0)
        _ok(store, sk, 0, "first call, before checkpoint 1")
        first = self.reopen(store_url, store.recovery_marker())  # crash 1, restart
        assert _results(first, sk) == {0: "first call, before checkpoint 1"}
        _ok(first, sk, 1, "second call, by the restarted run")
        second = self.reopen(store_url, first.recovery_marker())  # crash 2, restart
        assert _results(second, sk) == {0: "first call, before checkpoint 1",
                                        1: "second call, by the restarted run"}
        _ok(second, sk, 2, "third")
        third = self.reopen(store_url, second.recovery_marker(), read_only=True)
        assert _results(third, sk) == {0: "first call, before checkpoint 1",
                                       1: "second call, by the restarted run", 2: "third"}

    def test_zombie_writes_after_the_successor_restored_never_count(
            self, store: ActionStateStore, store_url: str) -> None:
        sk, other = _key("z", 0), _key("z2", 0)
        _ok(store, sk, 0, "before takeover")
        marker = store.recovery_marker()
        successor = self.reopen(store_url, marker)
        assert successor.epoch > store.epoch
        for record in (_call(sk, 0, "zombie overwrite"), _call(sk, 1, "zombie new call"),
                       _done(sk), TruncateRecord(sk, 0), _call(other, 0, "zombie, other key"),
                       DropRecord("z", -1)):
            self.zombie_put(store, record)
        _ok(successor, sk, 1, "successor write")
        successor.flush()
        for latest in (self.reopen(store_url, marker, read_only=True),
                       self.reopen(store_url, successor.recovery_marker(), read_only=True)):
            assert _results(latest, sk) == {0: "before takeover", 1: "successor write"}
            state = latest.get(sk)
            assert state is not None and not state.completed
            assert latest.get(other) is None

    def test_two_restorers_from_one_marker_the_later_claim_wins(
            self, store: ActionStateStore, store_url: str) -> None:
        sk, marker = _recorded(store, "twin")
        loser = self.reopen(store_url, marker)
        winner = self.reopen(store_url, marker)
        assert store.epoch < loser.epoch < winner.epoch, "claims never share an epoch"
        assert _results(loser, sk) == _results(winner, sk) == {0: "recorded"}
        self.zombie_put(loser, _call(sk, 1, "loser"))
        self.zombie_put(loser, _done(sk))
        _ok(winner, sk, 1, "winner")
        winner.flush()
        latest = self.reopen(store_url, marker, read_only=True)
        assert _results(latest, sk) == {0: "recorded", 1: "winner"}
        state = latest.get(sk)
        assert state is not None and not state.completed

    def test_a_write_racing_the_successor_claim_is_seen_by_all_or_none(
            self, store: ActionStateStore, store_url: str) -> None:
        sk, marker = _recorded(store, "race")
        successor = self.open_store(store_url)
        real_append = successor.append

        def racing_append(record: Record, data: bytes, sync: bool) -> Position:
            if not (isinstance(record, FenceRecord) and record.claim):
                return real_append(record, data, sync)
            _ok(store, sk, 1, "just before the claim")  # not fenced yet: a legal write
            position = real_append(record, data, sync)
            self.zombie_put(store, _call(sk, 2, "just after the claim"))
            return position

        successor.append = racing_append  # type: ignore[method-assign]
        successor.rebuild(marker)
        successor.append = real_append  # type: ignore[method-assign]
        seen = {0: "recorded", 1: "just before the claim"}
        assert _results(successor, sk) == seen
        _ok(successor, sk, 2, "successor")
        latest = self.reopen(store_url, successor.recovery_marker(), read_only=True)
        assert _results(latest, sk) == {**seen, 2: "successor"}

    def test_sequential_restorers_each_fence_all_before_them(
            self, store: ActionStateStore, store_url: str) -> None:
        sk = _key("seq", 0)
        _ok(store, sk, 0, "run 0")
        marker = store.recovery_marker()
        runs = [store]
        for n in range(1, 4):
            runs.append(self.reopen(store_url, marker))
            assert runs[-1].epoch > runs[-2].epoch
            _ok(runs[-1], sk, n, f"run {n}")
            for zombie in runs[:-1]:
                self.zombie_put(zombie, _call(sk, n, f"zombie of run {n}"))
            marker = runs[-1].recovery_marker()
        latest = self.reopen(store_url, marker, read_only=True)
        assert _results(latest, sk) == {n: f"run {n}" for n in range(4)}

    def test_close_twice_is_fine(self, store_url: str) -> None:
        store = self.open_store(store_url)
        store.close()
        store.close()

    # -- deleting what no checkpoint needs ---------------------------------------

    def test_release_keeps_every_state_its_marker_covers(
            self, store: ActionStateStore, store_url: str) -> None:
        done, in_flight, later = _key("r", 0), _key("s", 0), _key("r", 1)
        _ok(store, done, 0, "completed before the checkpoint")
        _complete(store, done)
        store.prune("r", 0)
        _ok(store, in_flight, 0, "in flight at the checkpoint")
        marker = store.recovery_marker()
        written = self.run_log(store)
        store.release(marker)
        _ok(store, in_flight, 1, "after the release")
        _ok(store, later, 0, "after the release")
        store.flush()
        restored = self.reopen(store_url, marker)
        assert {(sk.key, sk.seq) for sk, _ in restored.states()} == {("s", 0), ("r", 1)}
        assert _results(restored, in_flight) == {0: "in flight at the checkpoint",
                                                 1: "after the release"}
        assert _results(restored, later) == {0: "after the release"}
        # Read from the start: what the marker covers is all there; what lies below
        # it is deleted as a whole (a store that deletes) or kept as a whole.
        now = self.run_log(store)
        covered = {(at, data) for at, data in written if at[1] >= marker.offsets.get(at[0], 0)}
        below = written - covered
        assert below, "the claim and the pruned state's records lie below the marker"
        assert covered <= now, "release deleted a record its marker still needs"
        kept = below & now
        assert kept in (below, set()), (
            f"release deleted {len(below - kept)} of the {len(below)} records below its "
            "marker: all or none")
        if self.deletes(store) is not None:
            assert (not kept) is self.deletes(store), (
                "released records come back" if kept else "released records are gone")
        # The restored run releases its own checkpoint: that one restores as well.
        second = restored.recovery_marker()
        restored.release(second)
        restored.flush()
        latest = self.reopen(store_url, second, read_only=True)
        assert _results(latest, in_flight) == {0: "in flight at the checkpoint",
                                               1: "after the release"}
        assert _results(latest, later) == {0: "after the release"}

    def test_a_fresh_start_never_sees_another_runs_states_discarded_or_not(
            self, store: ActionStateStore, store_url: str) -> None:
        old, new = _key("old", 0), _key("new", 0)
        _ok(store, old, 0, "an earlier run")
        old_marker = store.recovery_marker()
        current = self.reopen(store_url, None)
        _ok(current, new, 0, "this run")
        marker = current.recovery_marker()
        current.discard_other_runs()
        _ok(current, new, 1, "after the discard")
        current.flush()
        assert len(self.reopen(store_url, None).index) == 0, "a fresh start reads no run"
        restored = self.reopen(store_url, marker)
        assert _results(restored, new) == {0: "this run", 1: "after the discard"}
        assert restored.get(old) is None, "runs must not mix"
        earlier = _results(self.reopen(store_url, old_marker, read_only=True), old)
        assert earlier in ({0: "an earlier run"}, None), "another run is kept whole or deleted"
        if self.deletes(store) is not None:
            assert (earlier is None) is self.deletes(store), (
                "the other run is gone" if earlier is None else "the other run is kept")
