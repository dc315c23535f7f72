"""The fixtures and helpers of the store contract suite (see :mod:`.contract`)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import ClassVar

import pytest

from actionstate.checkpoint import Marker
from actionstate.errors import FencedError
from actionstate.records.index import Position
from actionstate.records.state import Record
from actionstate.stores import ActionStateStore, Durability, open_store

__all__ = ["StoreHarness"]


class StoreHarness:
    """Opens, reopens and closes the stores a contract test uses."""

    deletes_records: ClassVar[bool | None] = None
    """Whether the store's ``release`` and ``discard_other_runs`` delete records at
    once, so that reading them back returns them no more (SQLite: True); False for a
    store that keeps them (the default hooks; Kafka, whose tombstones take effect
    only when compaction runs; Fluss). None checks only that either holds: all of
    the records concerned come back, or none."""

    keeps_records: ClassVar[bool] = True
    """Whether records outlive the process (``memory://``: False; a rebuild from a
    marker past its end then reads nothing, as a restart with a checkpoint does)."""

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
        start = self.start_marker(store).offsets
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

    def start_marker(self, store: ActionStateStore) -> Marker:
        """A marker at the start of every partition (reads the whole run back)."""
        marker = store.recovery_marker()
        return dataclasses.replace(marker, offsets=dict.fromkeys(marker.offsets, 0),
                                   fences=dict.fromkeys(marker.offsets, 0))
