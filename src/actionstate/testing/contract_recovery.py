"""The store contract on recovery: several crashes, zombies, deleting what no
checkpoint needs. Part of :class:`~actionstate.testing.contract.StoreContract`."""

from __future__ import annotations

import threading

import pytest

from actionstate.errors import FencedError
from actionstate.records.index import Position
from actionstate.records.state import DropRecord, FenceRecord, Record, TruncateRecord
from actionstate.stores import ActionStateStore
from actionstate.testing.samples import call, complete, done, key, ok, recorded, results
from actionstate.testing.store_harness import StoreHarness

__all__ = ["RecoveryContract"]


class RecoveryContract(StoreHarness):
    """Recovery behaviour every store must show."""

    # -- recovery: several crashes, and zombies ----------------------------------

    def test_a_call_survives_two_restarts_while_its_action_is_in_flight(
            self, store: ActionStateStore, store_url: str) -> None:
        sk = key("slow", 0)
        ok(store, sk, 0, "first call, before checkpoint 1")
        first = self.reopen(store_url, store.recovery_marker())  # crash 1, restart
        assert results(first, sk) == {0: "first call, before checkpoint 1"}
        ok(first, sk, 1, "second call, by the restarted run")
        second = self.reopen(store_url, first.recovery_marker())  # crash 2, restart
        assert results(second, sk) == {0: "first call, before checkpoint 1",
                                        1: "second call, by the restarted run"}
        ok(second, sk, 2, "third")
        third = self.reopen(store_url, second.recovery_marker(), read_only=True)
        assert results(third, sk) == {0: "first call, before checkpoint 1",
                                       1: "second call, by the restarted run", 2: "third"}

    def test_zombie_writes_after_the_successor_restored_never_count(
            self, store: ActionStateStore, store_url: str) -> None:
        sk, other = key("z", 0), key("z2", 0)
        ok(store, sk, 0, "before takeover")
        marker = store.recovery_marker()
        successor = self.reopen(store_url, marker)
        assert successor.epoch > store.epoch
        for record in (call(sk, 0, "zombie overwrite"), call(sk, 1, "zombie new call"),
                       done(sk), TruncateRecord(sk, 0), call(other, 0, "zombie, other key"),
                       DropRecord("z", -1)):
            self.zombie_put(store, record)
        ok(successor, sk, 1, "successor write")
        successor.flush()
        for latest in (self.reopen(store_url, marker, read_only=True),
                       self.reopen(store_url, successor.recovery_marker(), read_only=True)):
            assert results(latest, sk) == {0: "before takeover", 1: "successor write"}
            state = latest.get(sk)
            assert state is not None and not state.completed
            assert latest.get(other) is None

    def test_a_zombie_release_deletes_nothing_the_successor_needs(
            self, store: ActionStateStore, store_url: str) -> None:
        sk = key("zr", 0)
        ok(store, sk, 0, "in flight at the takeover")
        marker = store.recovery_marker()
        successor = self.reopen(store_url, marker)
        ok(successor, sk, 1, "successor write")
        successor.flush()
        # The zombie finishes the input as it sees it and checkpoints: its marker lies
        # past every record of the key, the successor's too; it has nothing buffered.
        self.zombie_put(store, done(sk))
        store.prune("zr", 0)
        late = store.recovery_marker()
        if not store.release_deletes:
            store.release(late)  # it deletes nothing
        else:
            with pytest.raises(FencedError):
                store.release(late)
        for latest in (self.reopen(store_url, successor.recovery_marker(), read_only=True),
                       self.reopen(store_url, marker, read_only=True)):
            assert results(latest, sk) == {0: "in flight at the takeover",
                                           1: "successor write"}, "a zombie deleted records"
            state = latest.get(sk)
            assert state is not None and not state.completed

    def test_two_restorers_from_one_marker_the_later_claim_wins(
            self, store: ActionStateStore, store_url: str) -> None:
        sk, marker = recorded(store, "twin")
        loser = self.reopen(store_url, marker)
        winner = self.reopen(store_url, marker)
        assert store.epoch < loser.epoch < winner.epoch, "claims never share an epoch"
        assert results(loser, sk) == results(winner, sk) == {0: "recorded"}
        self.zombie_put(loser, call(sk, 1, "loser"))
        self.zombie_put(loser, done(sk))
        ok(winner, sk, 1, "winner")
        winner.flush()
        latest = self.reopen(store_url, marker, read_only=True)
        assert results(latest, sk) == {0: "recorded", 1: "winner"}
        state = latest.get(sk)
        assert state is not None and not state.completed

    def test_restorers_racing_from_one_marker_take_distinct_epochs_and_one_wins(
            self, store: ActionStateStore, store_url: str) -> None:
        sks = [key(f"c{i}", 0) for i in range(8)]
        for sk in sks:
            ok(store, sk, 0, "recorded")
        marker = store.recovery_marker()
        restorers = [self.open_store(store_url) for _ in range(4)]
        start = threading.Barrier(len(restorers))
        failures: list[BaseException] = []

        def restore(i: int) -> None:
            try:
                start.wait()
                restorers[i].rebuild(marker)
                for sk in sks:  # legal until a later claim lands, then refused or ignored
                    try:
                        ok(restorers[i], sk, 1 + i, f"restorer {i}")
                        restorers[i].flush()
                    except FencedError:
                        assert restorers[i].refuses_zombies
            except BaseException as exc:  # re-raised below, on the test's thread
                failures.append(exc)

        threads = [threading.Thread(target=restore, args=(i,)) for i in range(len(restorers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        epochs = [r.epoch for r in restorers]
        assert len(set(epochs)) == len(epochs), f"claims never share an epoch: {epochs}"
        assert min(epochs) > store.epoch
        n = epochs.index(max(epochs))
        winner = restorers[n]
        for loser in restorers:
            if loser is not winner:
                for sk in sks:
                    self.zombie_put(loser, call(sk, 9, "loser, after every claim"))
                    self.zombie_put(loser, done(sk))
        seen = {sk: results(winner, sk) for sk in sks}
        for view in seen.values():
            assert view is not None
            assert view[0] == "recorded" and view[1 + n] == f"restorer {n}"
        for latest in (self.reopen(store_url, marker, read_only=True),
                       self.reopen(store_url, winner.recovery_marker(), read_only=True)):
            for sk in sks:
                assert results(latest, sk) == seen[sk], "a fresh rebuild sees the winner's view"
                state = latest.get(sk)
                assert state is not None and not state.completed

    def test_a_write_racing_the_successor_claim_is_seen_by_all_or_none(
            self, store: ActionStateStore, store_url: str) -> None:
        sk, marker = recorded(store, "race")
        successor = self.open_store(store_url)
        real_append = successor.append

        def racing_append(record: Record, data: bytes, sync: bool) -> Position:
            if not (isinstance(record, FenceRecord) and record.claim):
                return real_append(record, data, sync)
            ok(store, sk, 1, "just before the claim")  # not fenced yet: a legal write
            position = real_append(record, data, sync)
            self.zombie_put(store, call(sk, 2, "just after the claim"))
            return position

        successor.append = racing_append  # type: ignore[method-assign]
        successor.rebuild(marker)
        successor.append = real_append  # type: ignore[method-assign]
        seen = {0: "recorded", 1: "just before the claim"}
        assert results(successor, sk) == seen
        ok(successor, sk, 2, "successor")
        latest = self.reopen(store_url, successor.recovery_marker(), read_only=True)
        assert results(latest, sk) == {**seen, 2: "successor"}

    def test_sequential_restorers_each_fence_all_before_them(
            self, store: ActionStateStore, store_url: str) -> None:
        sk = key("seq", 0)
        ok(store, sk, 0, "run 0")
        marker = store.recovery_marker()
        runs = [store]
        for n in range(1, 4):
            runs.append(self.reopen(store_url, marker))
            assert runs[-1].epoch > runs[-2].epoch
            ok(runs[-1], sk, n, f"run {n}")
            for zombie in runs[:-1]:
                self.zombie_put(zombie, call(sk, n, f"zombie of run {n}"))
            marker = runs[-1].recovery_marker()
        latest = self.reopen(store_url, marker, read_only=True)
        assert results(latest, sk) == {n: f"run {n}" for n in range(4)}

    # -- deleting what no checkpoint needs ---------------------------------------

    def test_release_keeps_every_state_its_marker_covers(
            self, store: ActionStateStore, store_url: str) -> None:
        done, in_flight, later = key("r", 0), key("s", 0), key("r", 1)
        ok(store, done, 0, "completed before the checkpoint")
        complete(store, done)
        store.prune("r", 0)
        ok(store, in_flight, 0, "in flight at the checkpoint")
        marker = store.recovery_marker()
        written = self.run_log(store)
        store.release(marker)
        ok(store, in_flight, 1, "after the release")
        ok(store, later, 0, "after the release")
        store.flush()
        restored = self.reopen(store_url, marker)
        assert {(sk.key, sk.seq) for sk, _ in restored.states()} == {("s", 0), ("r", 1)}
        assert results(restored, in_flight) == {0: "in flight at the checkpoint",
                                                 1: "after the release"}
        assert results(restored, later) == {0: "after the release"}
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
        assert results(latest, in_flight) == {0: "in flight at the checkpoint",
                                               1: "after the release"}
        assert results(latest, later) == {0: "after the release"}

    def test_a_fresh_start_never_sees_another_runs_states_discarded_or_not(
            self, store: ActionStateStore, store_url: str) -> None:
        old, new = key("old", 0), key("new", 0)
        ok(store, old, 0, "an earlier run")
        old_marker = store.recovery_marker()
        current = self.reopen(store_url, None)
        ok(current, new, 0, "this run")
        marker = current.recovery_marker()
        current.discard_other_runs()
        ok(current, new, 1, "after the discard")
        current.flush()
        assert len(self.reopen(store_url, None).index) == 0, "a fresh start reads no run"
        restored = self.reopen(store_url, marker)
        assert results(restored, new) == {0: "this run", 1: "after the discard"}
        assert restored.get(old) is None, "runs must not mix"
        earlier = results(self.reopen(store_url, old_marker, read_only=True), old)
        assert earlier in ({0: "an earlier run"}, None), "another run is kept whole or deleted"
        if self.deletes(store) is not None:
            assert (earlier is None) is self.deletes(store), (
                "the other run is gone" if earlier is None else "the other run is kept")

    def test_a_rebuild_skipping_done_states_ends_as_a_rebuild_then_prune(
            self, store: ActionStateStore, store_url: str) -> None:
        marker = self.start_marker(store)
        for seq in range(4):  # inputs 0 - 2 of "d" completed before the checkpoint
            ok(store, key("d", seq), 0, f"d{seq}")
        for seq in range(3):
            complete(store, key("d", seq))
        store.put(TruncateRecord(key("d", 1), 0))
        ok(store, key("e", 0), 0, "e0, done")
        ok(store, key("e", 1), 0, "e1, in flight")
        ok(store, key("e", 3), 0, "e3, a history that did not happen")
        store.drop_after("e", 2)
        successor = self.reopen(store_url, marker)  # a claim and its fences in between
        self.zombie_put(store, call(key("d", 3), 1, "zombie"))
        ok(successor, key("d", 3), 1, "d3, in flight")
        ok(successor, key("f", 0), 0, "f0, no input done")
        successor.flush()
        asked: list[str] = []

        def done_through(name: str) -> int:
            asked.append(name)
            return {"d": 2, "e": 0}.get(name, -1)

        pruned = self.reopen(store_url, marker, read_only=True)
        pruned.prune("d", 2)
        pruned.prune("e", 0)
        skipping = self.open_store(store_url)
        skipping.rebuild(marker, read_only=True, done=done_through)
        assert sorted(asked) == ["d", "e", "f"], "asked once per input key"
        held = {(sk.key, sk.seq) for sk, _ in skipping.states()}
        assert held == {("d", 3), ("e", 1), ("f", 0)}
        assert {sk: (state.calls, state.completed) for sk, state in skipping.states()} == {
            sk: (state.calls, state.completed) for sk, state in pruned.states()}
        assert results(skipping, key("d", 3)) == {0: "d3", 1: "d3, in flight"}
        assert skipping.index.first_positions() == pruned.index.first_positions()
        assert skipping.has_later("d", 2) and not skipping.has_later("e", 1)
