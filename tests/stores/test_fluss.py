"""The store contract, and what only a Fluss store does, against real Fluss clusters.

The clusters are started by ``scripts/services/fluss start [--sasl]`` (reused
when running). A cluster that cannot be started fails the tests: never a skip.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import fluss
import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from actionstate.errors import ConfigError, StoreError
from actionstate.events import InputEvent
from actionstate.records.codec import decode_record, encode_record
from actionstate.records.index import Position
from actionstate.records.state import (
    CallRecord,
    CallResult,
    CallStatus,
    CompleteRecord,
    FenceRecord,
    Record,
    StateKey,
)
from actionstate.stores import ActionStateStore, Durability, open_store
from actionstate.stores.fluss import FlussActionStateStore, bucket_of
from actionstate.stores.fluss.config import parse_url
from actionstate.testing.contract import EncryptedStoreContract, StoreContract
from actionstate.testing.services import Tables, start_service

DATABASE = "actionstate_test"
SASL = "flussSaslUsername=admin&flussSaslPassword=admin-secret"


@pytest.fixture(scope="session")
def fluss_cluster() -> str:
    return start_service("fluss")


@pytest.fixture(scope="session")
def fluss_sasl_cluster() -> str:
    return start_service("fluss", "--sasl")


@pytest.fixture
def tables(fluss_cluster: str) -> Iterator[Tables]:
    with Tables(fluss_cluster) as made:
        yield made


@pytest.fixture
def sasl_tables(fluss_sasl_cluster: str) -> Iterator[Tables]:
    with Tables(fluss_sasl_cluster, **{
            "security.protocol": "SASL", "security.sasl.mechanism": "PLAIN",
            "security.sasl.username": "admin", "security.sasl.password": "admin-secret"}) as made:
        yield made


@pytest.fixture(scope="session")
def shared_url(fluss_cluster: str) -> Iterator[str]:
    """One 4-bucket table for the tests that need no table of their own.

    Runs are namespaced, so tests sharing it do not see each other's records
    (and a new table per test would only add work for the coordinator).
    """
    made = Tables(fluss_cluster)
    yield made.url()
    made.drop()


class TestFlussStore(StoreContract):
    @pytest.fixture
    def store_url(self, shared_url: str) -> str:
        return shared_url


class TestFlussEncryptedStore(EncryptedStoreContract, TestFlussStore):
    """The contract with payloads sealed (AES-256-GCM), key rotation, missing/wrong keys."""


def call(store: ActionStateStore, key: StateKey, position: int, result: object) -> None:
    store.put(CallRecord(key, position, CallResult("f", "d" * 64, CallStatus.SUCCEEDED,
                                                   result)))


def fresh(url: str, durability: Durability = "sync") -> ActionStateStore:
    store = open_store(url, durability=durability)
    store.rebuild(None)
    return store


def all_records(store: ActionStateStore) -> list[tuple[Position, Record]]:
    start = {b: 0 for b in store.end_offsets()}
    return [(position, decode_record(data, where)) for position, data, where
            in store.read(store.namespace, start, store.end_offsets())]


KEYS = [f"customer_{i}" for i in range(40)] + ["", "ключ-🔑-键", "x" * 300, "a:b/c d"]


def test_buckets_are_computed_as_fluss_does(tables: Tables) -> None:
    store = fresh(tables.url("buckets=7"))
    positions = {}
    for i, key in enumerate(KEYS):
        record = CallRecord(StateKey(key, 0, "a", "e" * 64), 0,
                            CallResult("f", "d" * 64, CallStatus.SUCCEEDED, i))
        positions[key] = store.append(record, encode_record(record, store.epoch), sync=True)
    placed = {}
    for (bucket, offset), stored in all_records(store):
        if isinstance(stored, CallRecord):
            placed[stored.key.key] = (bucket, offset)
    store.close()
    assert set(placed) == set(KEYS)
    for key, (bucket, offset) in placed.items():
        assert bucket == bucket_of(key, 7), key
        assert positions[key] == (bucket, offset), "with one writer, positions are exact"
    assert len({b for b, _ in placed.values()}) == 7


def fences_of(store: ActionStateStore) -> list[tuple[tuple[int, int], FenceRecord]]:
    return [(p, r) for p, r in all_records(store) if isinstance(r, FenceRecord)]


@pytest.mark.parametrize("buckets", [1, 5])
def test_a_claim_goes_to_bucket_0_and_a_fence_to_every_other_bucket(
        tables: Tables, buckets: int) -> None:
    store = fresh(tables.url(f"buckets={buckets}"))
    assert store.partition_count == buckets
    fences = fences_of(store)
    store.close()
    claims = [(p, r) for p, r in fences if r.claim]
    assert [p for p, _ in claims] == [(0, 0)] and claims[0][1].epoch == 0
    assert store.epoch == 1, "the epoch is the claim's offset + 1"
    copies = sorted(p for p, r in fences if not r.claim)
    assert copies == [(b, 0) for b in range(1, buckets)], "one fence per other bucket"
    assert all(r.epoch == store.epoch for _, r in fences if not r.claim)


def test_a_claim_behind_a_stale_lower_bound_is_found_and_fenced_everywhere(
        shared_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Other writers appended to bucket 0 since the claimant last read its end: the
    claim's epoch is still its exact offset + 1, and every bucket gets that fence."""
    store = fresh(shared_url)
    key0 = next(f"b0-{i}" for i in range(1000) if bucket_of(f"b0-{i}", 4) == 0)
    sk = StateKey(key0, 0, "a", "e" * 64)
    call(store, sk, 0, "before the checkpoint")
    marker = store.recovery_marker()
    successor = open_store(shared_url)  # reads the end offsets now
    assert isinstance(successor, FlussActionStateStore)
    for position in range(1, 6):
        call(store, sk, position, "still before the claim")
    monkeypatch.setattr(successor, "_resync_positions", lambda ends=None: None)
    successor.rebuild(marker)
    monkeypatch.undo()
    fences = fences_of(successor)
    claim = [(p, r) for p, r in fences if r.claim and p[0] == 0][-1]
    assert claim[0] == (0, successor.epoch - 1)
    last = {p[0]: r.epoch for p, r in sorted(fences) if not r.claim}
    assert last == {1: successor.epoch, 2: successor.epoch, 3: successor.epoch}
    assert sorted(successor.get(sk).calls) == list(range(6))  # type: ignore[union-attr]
    for other in range(4):  # the zombie's later writes count nowhere
        key = next(f"z{other}-{i}" for i in range(1000) if bucket_of(f"z{other}-{i}", 4) == other)
        call(store, StateKey(key, 0, "a", "e" * 64), 0, "zombie")
    call(store, sk, 6, "zombie")
    latest = open_store(shared_url)
    latest.rebuild(marker, read_only=True)
    assert {k for k, _ in latest.states()} == {sk}
    assert sorted(latest.get(sk).calls) == list(range(6))  # type: ignore[union-attr]
    for s in (store, successor, latest):
        s.close()


def test_a_rebuild_reads_on_to_its_claims_rows_and_reads_no_offsets_after_its_claim(
        shared_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rebuild's tail reads from the end offsets read before the claim up to the
    claim's own row in each bucket (its cut-off): a zombie's write that lands before the
    claim counts, one after it counts for no one, and neither finding the claim nor
    the rebuild's stop reads end offsets after the claim was written."""
    store = fresh(shared_url)
    key = next(f"t-{i}" for i in range(1000) if bucket_of(f"t-{i}", 4) == 2)
    sk = StateKey(key, 0, "a", "e" * 64)
    call(store, sk, 0, "before the checkpoint")
    marker = store.recovery_marker()
    successor = open_store(shared_url)
    assert isinstance(successor, FlussActionStateStore)
    real_append, real_end_offsets = successor.append, successor.end_offsets
    claimed: list[FenceRecord] = []
    offsets_read_after: list[int] = []

    def racing_append(record: Record, data: bytes, sync: bool) -> Position:
        if isinstance(record, FenceRecord) and record.claim:
            call(store, sk, 1, "while the claim is written")  # before it in bucket 2
            position = real_append(record, data, sync)
            claimed.append(record)
            call(store, sk, 2, "after the claim")  # after the claim's pre-fence
            return position
        return real_append(record, data, sync)

    def end_offsets() -> dict[int, int]:
        if claimed:
            offsets_read_after.append(1)
        return real_end_offsets()

    monkeypatch.setattr(successor, "append", racing_append)
    monkeypatch.setattr(successor, "end_offsets", end_offsets)
    successor.rebuild(marker)
    monkeypatch.undo()
    assert claimed and not offsets_read_after
    claim = [p for p, r in fences_of(successor) if r.claim == claimed[0].claim]
    assert claim == [(0, successor.epoch - 1)]
    reader = open_store(shared_url)
    reader.rebuild(marker, read_only=True)
    for restored in (successor, reader):
        state = restored.get(sk)
        assert state is not None
        assert {p: c.result for p, c in state.calls.items()} == {
            0: "before the checkpoint", 1: "while the claim is written"}
    for s in (store, successor, reader):
        s.close()


def test_concurrent_claims_take_distinct_epochs_and_the_winner_sees_what_counts(
        shared_url: str) -> None:
    store = fresh(shared_url)
    sks = [StateKey(f"c{i}", 0, "a", "e" * 64) for i in range(8)]
    assert {bucket_of(sk.key, 4) for sk in sks} == {0, 1, 2, 3}
    for sk in sks:
        call(store, sk, 0, "recorded")
    marker = store.recovery_marker()
    restorers = [open_store(shared_url) for _ in range(6)]

    def restore(i: int) -> None:
        restorers[i].rebuild(marker)
        for sk in sks:
            call(restorers[i], sk, 1 + i, f"restorer {i}")

    with concurrent.futures.ThreadPoolExecutor(len(restorers)) as pool:
        list(pool.map(restore, range(len(restorers))))
    epochs = [r.epoch for r in restorers]
    assert len(set(epochs)) == len(epochs) and min(epochs) > store.epoch
    winner = restorers[epochs.index(max(epochs))]
    latest = open_store(shared_url)
    latest.rebuild(marker, read_only=True)
    for sk in sks:
        seen = {p: c.result for p, c in latest.get(sk).calls.items()}  # type: ignore[union-attr]
        assert seen == {p: c.result for p, c in winner.get(sk).calls.items()}  # type: ignore[union-attr]
        assert seen[0] == "recorded" and seen[1 + restorers.index(winner)] == (
            f"restorer {restorers.index(winner)}")
    for s in (store, *restorers, latest):
        s.close()


def test_multi_bucket_rebuild_restores_only_states_after_the_marker(shared_url: str) -> None:
    url = shared_url
    store = fresh(url, durability="group")
    keys = [f"k{i}" for i in range(24)]
    assert {bucket_of(k, 4) for k in keys} == {0, 1, 2, 3}
    done = [StateKey(k, 0, "a", "e" * 64) for k in keys]
    for sk in done:
        call(store, sk, 0, "done before the checkpoint")
        store.put(CompleteRecord(sk, InputEvent(input=sk.key), (), ()))
    in_flight = [StateKey(k, 1, "a", "e" * 64) for k in keys[::3]]
    for sk in in_flight:
        call(store, sk, 0, "in flight at the checkpoint")
    for k in keys:
        store.prune(k, 0)
    marker = store.recovery_marker()
    assert sorted(marker.offsets) == [0, 1, 2, 3]
    later = [StateKey(k, 2, "a", "e" * 64) for k in keys[1::2]]
    for sk in later:
        call(store, sk, 0, "after the checkpoint")
    store.flush()
    restored = open_store(url)
    count = restored.rebuild(marker)
    assert {sk for sk, _ in restored.states()} == set(in_flight) | set(later)
    # + its own claim and the fence it put in each other bucket
    assert count == len(in_flight) + len(later) + 4, "records before the marker are not read"
    for sk in in_flight:
        state = restored.get(sk)
        assert state is not None and state.calls[0].result == "in flight at the checkpoint"
    restored.close()
    store.close()


def test_rebuilds_of_64_buckets_claim_while_their_read_fetches(tables: Tables) -> None:
    """A rebuild starts reading before its claim, so the claim (a row to each of the 64
    buckets) is written while a poll is under way. With the client's default batch size
    (2 MB a bucket: 128 MB for 64, over its 64 MB buffer), 9 of 12 such rebuilds failed
    with "buffer exhausted" once the timeout ran out (3 of 3 runs of this test failed).
    Four in a row, each restoring every state."""
    url = tables.url("buckets=64&flussTimeoutMs=5000")
    store = fresh(url, durability="group")
    keys = [StateKey(f"customer_{i}", 0, "a", "e" * 64) for i in range(256)]
    for sk in keys:
        for at in range(4):
            call(store, sk, at, "r" * 1024)
    store.flush()
    marker = store.recovery_marker()
    store.close()
    for _ in range(4):
        restored = open_store(url)
        restored.rebuild(marker)
        assert {sk for sk, _ in restored.states()} == set(keys)
        assert all(len(restored.get(sk).calls) == 4 for sk in keys)  # type: ignore[union-attr]
        restored.close()


def test_read_stops_at_the_given_offsets(shared_url: str) -> None:
    store = fresh(shared_url)
    start = store.end_offsets()
    call(store, StateKey("k", 0, "a", "e" * 64), 0, "before")
    stop = store.end_offsets()
    call(store, StateKey("k", 0, "a", "e" * 64), 1, "after")
    records = [decode_record(data, where)
               for _, data, where in store.read(store.namespace, start, stop)]
    store.close()
    assert [r.position for r in records if isinstance(r, CallRecord)] == [0]


def test_group_positions_are_exact_with_one_writer(shared_url: str) -> None:
    store = fresh(shared_url, durability="group")
    positions = {}
    for i in range(30):
        sk = StateKey(f"k{i % 6}", i, "a", "e" * 64)
        record = CallRecord(sk, 0, CallResult("f", "d" * 64, CallStatus.SUCCEEDED, i))
        positions[i] = store.append(record, b"x", sync=False)
        if i % 10 == 9:
            store.flush()
    store.flush()
    start = {b: 0 for b in range(4)}
    actual = [p for p, data, _ in store.read(store.namespace, start, store.end_offsets())
              if data == b"x"]
    store.close()
    assert sorted(actual) == sorted(positions.values()), "with one writer, positions are exact"


def test_marker_of_a_recreated_table_is_refused(shared_url: str) -> None:
    url = shared_url
    store = fresh(url)
    marker = store.recovery_marker()
    beyond = dataclasses.replace(marker, offsets={p: o + 100 for p, o in marker.offsets.items()})
    with pytest.raises(StoreError, match="dropped or truncated"):
        open_store(url).rebuild(beyond)
    more_buckets = dataclasses.replace(marker, offsets={**marker.offsets, 9: 0})
    with pytest.raises(StoreError, match="buckets"):
        open_store(url).rebuild(more_buckets)
    store.close()


def test_options_and_url(fluss_cluster: str, tables: Tables) -> None:
    url = tables.url("")
    name = tables.names[-1]
    store = open_store(url, flussActionStateTable=name, flussActionStateTableBuckets="3",
                       flussBootstrapServers=fluss_cluster, actionStateStoreBackend="fluss")
    assert isinstance(store, FlussActionStateStore)
    assert store.table_name == f"{DATABASE}.{name}" and store.num_buckets == 3
    assert store.url == url, "the store keeps the URL it was opened with"
    store.close()
    store.close()
    by_options = open_store(f"fluss://{fluss_cluster}", flussActionStateDatabase=DATABASE,
                            flussActionStateTable=name)
    assert isinstance(by_options, FlussActionStateStore)
    assert by_options.table_name == f"{DATABASE}.{name}" and by_options.num_buckets == 3
    by_options.close()
    direct = FlussActionStateStore(fluss_cluster, DATABASE, name, timeout=30.0)
    assert direct.num_buckets == 3 and direct.url == f"fluss://{fluss_cluster}/{DATABASE}.{name}"
    direct.close()
    with pytest.raises(ConfigError, match="unknown Fluss store option 'flussBuckets'"):
        open_store(url, flussBuckets="4")
    with pytest.raises(ConfigError, match="flussActionStateTableBuckets='many' must be an integer"):
        open_store(f"{url}?buckets=many")
    with pytest.raises(ConfigError, match="table name"):
        open_store(f"fluss://{fluss_cluster}/{DATABASE}.bad*name")


@pytest.mark.parametrize(("url", "options", "first", "second"), [
    ("fluss://h:9123/db.t", {"flussActionStateTable": "x"},
     "flussActionStateTable='t' in the URL", "flussActionStateTable='x' in the options"),
    ("fluss://h:9123/db.t", {"flussActionStateDatabase": "other"},
     "flussActionStateDatabase='db' in the URL", "flussActionStateDatabase='other' in the options"),
    ("fluss://h:9123/db.t", {"flussBootstrapServers": "elsewhere:9123"},
     "flussBootstrapServers='h:9123' in the URL",
     "flussBootstrapServers='elsewhere:9123' in the options"),
    ("fluss://h:9123/db.t?buckets=3", {"flussActionStateTableBuckets": 4},
     "buckets='3' in the URL query", "flussActionStateTableBuckets='4' in the options"),
])
def test_a_setting_given_twice_must_agree(url: str, options: dict[str, object], first: str,
                                          second: str) -> None:
    """No silent precedence: the URL does not win over an option, nor the reverse."""
    with pytest.raises(ConfigError, match="disagree: give the setting once") as info:
        FlussActionStateStore.from_url(url, "sync", **options)
    assert first in str(info.value) and second in str(info.value)


def test_settings_from_the_url_and_options() -> None:
    settings = parse_url("fluss://h:9123/db.t?buckets=8",
                         {"flussBootstrapServers": "h:9123", "flussActionStateTable": "t",
                          "actionStateStoreBackend": "fluss"})
    assert (settings.servers, settings.database, settings.table, settings.buckets,
            settings.timeout) == ("h:9123", "db", "t", 8, 60.0)
    assert parse_url("fluss://h:1/t", {}).database == "flink_agents"
    assert parse_url("fluss://", {}).servers == "localhost:9123"
    # A URL made from Flink Agents' options names the first server of their list.
    assert parse_url("fluss://a:1/db.t", {"flussBootstrapServers": "a:1,b:2"}).servers == (
        "a:1,b:2")
    assert parse_url("fluss://a:1/db.t", {"flussSaslUsername": "u", "flussSaslPassword": "p",
                                          "flussSaslMechanism": "PLAIN"}).security == {
        "security.protocol": "SASL", "security.sasl.mechanism": "PLAIN",
        "security.sasl.username": "u", "security.sasl.password": "p"}
    with pytest.raises(ConfigError, match="credentials"):
        parse_url("fluss://admin:secret@h:1/db.t", {})


def test_the_timeout_is_flussTimeoutMs_in_milliseconds() -> None:
    assert parse_url("fluss://h:1/db.t?flussTimeoutMs=2500", {}).timeout == 2.5
    assert parse_url("fluss://h:1/db.t", {"flussTimeoutMs": 500}).timeout == 0.5
    with pytest.raises(ConfigError, match="flussTimeoutMs must be positive, got 0"):
        parse_url("fluss://h:1/db.t", {"flussTimeoutMs": "0"})
    with pytest.raises(ConfigError, match="flussTimeoutMs='1.5' must be an integer"):
        parse_url("fluss://h:1/db.t", {"flussTimeoutMs": "1.5"})
    with pytest.raises(ConfigError, match="unknown Fluss store option 'timeout'.*flussTimeoutMs"):
        parse_url("fluss://h:1/db.t?timeout=60", {})


def test_the_timeout_bounds_a_wait_for_the_cluster() -> None:
    """A server that accepts connections and never answers: the store gives up after
    flussTimeoutMs, with an error naming the fix."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(StoreError, match=f"Fluss at {address} did not answer in"):
            open_store(f"fluss://{address}/x.y", flussTimeoutMs=1500)
        assert time.monotonic() - started < 10


def test_offsets_and_markers_are_queries_a_release_tightens_positions(shared_url: str) -> None:
    """Positions are lower bounds: reading the end offsets or taking a recovery marker
    leaves them alone; a release (after a saved checkpoint) re-reads the ends, so records
    put after it get exact positions again."""
    other = fresh(shared_url)
    store = fresh(shared_url, durability="group")  # its claim is bucket 0's last record
    key = next(f"p{i}" for i in range(1000) if bucket_of(f"p{i}", 4) == 0)

    def append(index: int) -> Position:
        record = CallRecord(StateKey(key, 0, "a", "e" * 64), index,
                            CallResult("f", "d" * 64, CallStatus.SUCCEEDED, index))
        return store.append(record, encode_record(record, store.epoch), sync=False)

    first = append(0)
    for position in range(3):  # another writer pushes bucket 0's offsets up
        call(other, StateKey(key, 0, "a", "e" * 64), position, "other")
    ends = store.end_offsets()
    assert ends[0] == first[1] + 3, "the first record is still buffered"
    assert append(1) == (0, first[1] + 1), "end_offsets() changes no position"
    store.flush()
    marker = store.recovery_marker()
    assert append(2) == (0, first[1] + 2), "recovery_marker() changes no position"
    store.flush()
    store.release(marker)  # re-reads the ends
    assert append(3) == (0, ends[0] + 3), "after a release, the exact offset"
    store.flush()
    mine = [p for p, r in all_records(store) if isinstance(r, CallRecord)]
    assert mine == [(0, first[1] + 3), (0, first[1] + 4), (0, ends[0] + 2),
                    (0, ends[0] + 3)]
    store.close()
    other.close()


def test_a_table_with_another_schema_is_refused(fluss_cluster: str, tables: Tables) -> None:
    url = tables.url("")
    name = tables.names[-1]

    async def create() -> None:
        conn = await fluss.FlussConnection.create(fluss.Config(
            {"bootstrap.servers": fluss_cluster}))
        try:
            admin = conn.get_admin()
            await admin.create_database(DATABASE, ignore_if_exists=True)
            schema = fluss.Schema(pa.schema([("id", pa.int64()), ("v", pa.string())]))
            await admin.create_table(fluss.TablePath(DATABASE, name),
                                     fluss.TableDescriptor(schema, bucket_count=2))
        finally:
            await conn.close()

    asyncio.run(create())
    with pytest.raises(ConfigError, match="not an action state table"):
        open_store(url)


def test_unreachable_cluster_is_a_clear_error() -> None:
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        open_store("fluss://127.0.0.1:1/x.y")
    assert time.monotonic() - started < 30
    assert "127.0.0.1:1" in str(info.value)
    assert "scripts/services/fluss start" in str(info.value)


@pytest.mark.parametrize("credentials", [
    {"flussSaslUsername": "admin", "flussSaslPassword": "admin-secret",
     "flussSecurityProtocol": "SASL", "flussSaslMechanism": "PLAIN"},
    {"flussSaslJaasConfig": 'org.apache.fluss.security.auth.sasl.plain.PlainLoginModule '
                            'required username="admin" password="admin-secret";'},
    {},  # credentials in the URL query
])
def test_sasl_plain_round_trip(sasl_tables: Tables, credentials: dict[str, str]) -> None:
    url = sasl_tables.url("buckets=2" if credentials else f"buckets=2&{SASL}")
    store = open_store(url, "sync", **credentials)
    store.rebuild(None)
    marker = store.recovery_marker()
    sk = StateKey("k", 0, "a", "e" * 64)
    call(store, sk, 0, "over SASL")
    restored = open_store(url, "sync", **credentials)
    restored.rebuild(marker)
    state = restored.get(sk)
    assert state is not None and state.calls[0].result == "over SASL"
    restored.close()
    store.close()


def test_sasl_wrong_password_is_a_clear_error(fluss_sasl_cluster: str) -> None:
    url = f"fluss://{fluss_sasl_cluster}/{DATABASE}.never_created"
    with pytest.raises(StoreError, match="authentication failed"):
        open_store(url, flussSaslUsername="admin", flussSaslPassword="wrong")
    with pytest.raises(StoreError, match="authentication failed"):
        open_store(url)  # no credentials at all


def test_a_batch_holds_what_pa_array_builds_and_the_first_imports_no_pandas() -> None:
    """The rows are built from buffers: the same batch ``pa.array`` builds (UTF-8 keys,
    binary payloads with any byte), and the process's first batch does not import pandas
    (``pa.array``'s first call did: ~0.2 s that a store's claim paid)."""
    from actionstate.stores.fluss.rows import SCHEMA, arrow_batch

    keys = ["k", "", "clé-é", "emoji-\U0001f600", "x" * 5000]
    payloads = [b"{}", b"", b"\0\xff\x00", "é".encode(), b"p" * 70_000]
    agents = ["a", "b", "", "ключ", "z"]
    built = arrow_batch(keys, payloads, agents)
    expected = pa.RecordBatch.from_arrays(
        [pa.array(keys, pa.string()), pa.array(payloads, pa.binary()),
         pa.array(agents, pa.string())], schema=SCHEMA)
    built.validate(full=True)
    assert built.equals(expected) and built.schema == SCHEMA
    assert arrow_batch([], [], []).num_rows == 0
    probe = ("import sys; from actionstate.stores.fluss.rows import arrow_batch; "
             "arrow_batch(['k'], [b'v'], ['a']); print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
