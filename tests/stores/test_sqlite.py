import threading
from pathlib import Path

import pytest

from actionstate.errors import FencedError, StoreError
from actionstate.stores import open_store
from actionstate.testing.contract import EncryptedStoreContract, StoreContract
from actionstate.testing.samples import key, ok


class TestSqliteStore(StoreContract):
    deletes_records = True  # release: rows below the marker; discard: other namespaces

    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite://{tmp_path}/state.db"


class TestSqliteEncryptedStore(EncryptedStoreContract, TestSqliteStore):
    """The contract with payloads sealed (AES-256-GCM), key rotation, missing/wrong keys."""


def test_a_zombies_group_commit_on_another_thread_is_refused_and_writes_nothing(
        tmp_path: Path) -> None:
    """A batch large enough to be written on the committing thread is fenced there too."""
    url = f"sqlite://{tmp_path}/state.db"
    zombie = open_store(url, durability="group")
    zombie.rebuild(None)
    ok(zombie, key("z", 0), 0, "before takeover")
    zombie.flush()
    marker = zombie.recovery_marker()
    successor = open_store(url)
    successor.rebuild(marker)
    for seq in range(1, 1001):
        ok(zombie, key("z", seq), 0, "zombie")
    finish = zombie.flush_begin(write_now=False)
    assert finish is not None
    failures: list[BaseException] = []

    def commit() -> None:
        try:
            finish()
        except BaseException as exc:
            failures.append(exc)
    committer = threading.Thread(target=commit)
    committer.start()
    committer.join()
    assert len(failures) == 1 and isinstance(failures[0], FencedError), failures
    latest = open_store(url)
    latest.rebuild(successor.recovery_marker(), read_only=True)
    assert [state_key.seq for state_key, _ in latest.states()] == [0]
    for store in (zombie, successor, latest):
        store.close()


def test_after_a_failed_write_every_later_one_fails_at_once_with_its_reason(
        tmp_path: Path) -> None:
    """The failed commit's records are lost: a later one would leave a gap (and, for a
    lock another process holds, wait out SQLite's busy timeout again, 5 s each)."""
    store = open_store(f"sqlite://{tmp_path}/state.db", durability="group")
    store.rebuild(None)
    store._db.execute("PRAGMA query_only=1")  # type: ignore[attr-defined]  # writes fail
    ok(store, key("a", 0), 0, "lost")
    with pytest.raises(StoreError, match="readonly") as first:
        store.flush()
    store._db.execute("PRAGMA query_only=0")  # type: ignore[attr-defined]  # it could write
    ok(store, key("a", 1), 0, "after the failure")
    with pytest.raises(StoreError) as later:
        store.flush()
    assert str(later.value) == str(first.value)
    store.close()  # no write, no error
