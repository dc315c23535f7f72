"""The action state store interface.

A store is an append-only log of encoded records (see
:mod:`actionstate.records.codec`) plus the shared in-memory
:class:`~actionstate.records.index.StateIndex`. A backend implements only the
medium: appending bytes, flushing, reading a range back, and deleting what no
checkpoint needs. Lookups, divergence, pruning and fencing are done here, once,
so every backend behaves the same.
"""

from __future__ import annotations

import gc
import itertools
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, ClassVar, Literal, get_args

from actionstate.checkpoint import Marker
from actionstate.errors import ConfigError, StoreError
from actionstate.records.codec import decode_call, decode_record, encode_record
from actionstate.records.crypto import Keyring
from actionstate.records.index import Position, StateIndex
from actionstate.records.state import ActionState, DropRecord, FenceRecord, Record, StateKey
from actionstate.stores.options import redact_url
from actionstate.stores.rebuilding import OF_A_STATE, check_not_past, skipper

__all__ = ["ActionStateStore", "Durability", "Marker"]

Durability = Literal["sync", "group"]
DURABILITIES: tuple[Durability, ...] = get_args(Durability)

_PIECE = 256
"""Records a rebuild applies per call of ``_meanwhile`` (about 1 - 2 ms)."""


class ActionStateStore(ABC):
    """Records action states so that replay after a crash skips completed work.

    Contract:

    * :meth:`put` appends a record; in ``sync`` durability it is durable when
      ``put`` returns, in ``group`` durability when :meth:`flush` returns.
    * :meth:`get` returns the state of a (key, seq, action, event), and does
      nothing else. When it is missing but :meth:`has_later` finds states of the
      same key at a later seq, those belong to a history that did not happen:
      the engine calls :meth:`drop_after`, for that key only.
    * :meth:`recovery_marker` names where a rebuild must start so that every
      state not yet pruned comes back; :meth:`rebuild` with it restores exactly
      those states (reading up to the end captured when the rebuild starts);
      ``rebuild(None)`` is a fresh start in a new namespace, so records of
      earlier runs are never reused.
    * Every rebuild *claims* a new epoch through the log (see
      :class:`~actionstate.records.state.FenceRecord`) and reads up to the end
      it captures after the claim (what came before the claim may be read
      while the claim waits on the medium). A writer with an older epoch (a zombie) is
      either refused by the medium (SQLite, memory: a conditional write) or its
      records after the claim (in another partition: after the claim's
      pre-fence there) are ignored by every later rebuild (Kafka, Fluss), and
      whatever it wrote before is read by this rebuild and every later one
      alike. The store stamps its epoch on every record it puts.
    * :meth:`prune` forgets states in memory; :meth:`release` deletes records
      no retained checkpoint needs; a zombie's release (or
      :meth:`discard_other_runs`) that would delete raises :class:`FencedError`.
    """

    refuses_zombies: ClassVar[bool] = False
    """The medium refuses a fenced-off writer's puts (:class:`FencedError`); else its
    later records are written and ignored by every rebuild."""

    claim_prefences: ClassVar[bool] = False
    """The backend's claim append also fences every other partition (see ``_claim``)."""

    release_deletes: ClassVar[bool] = False
    """:meth:`release` deletes records (so a zombie's release must be refused)."""

    exact_positions: ClassVar[bool] = True
    """A ``sync`` append returns the exact position (False: a lower bound, and the
    store finds its claim by reading it back)."""

    def __init__(self, durability: Durability = "sync", url: str = "") -> None:
        if durability not in DURABILITIES:
            raise ConfigError(f"unknown durability {durability!r}: use one of "
                              f"{', '.join(DURABILITIES)}")
        self.durability: Durability = durability
        self._url = redact_url(url)
        self.index = StateIndex()
        self.epoch = 0
        self._read_only = False
        self._reading: Generator[None, None, None] | None = None  # read during a claim
        self._applied = 0  # records a rebuild applied so far
        self._after_claim_ends: dict[int, int] | None = None  # read by the last claim search
        self._namespace = uuid.uuid4().hex
        self.keyring: Keyring | None = Keyring.from_env()
        """Seals every payload put and opens sealed ones read (``ACTIONSTATE_KEYS`` or
        ``ACTIONSTATE_KEY_FILE``; None: payloads in clear)."""
        self.sealed_ok = False
        """Read a payload whose key is missing as a ``Sealed`` placeholder (inspection)."""

    @property
    def url(self) -> str:
        """The URL the store was opened with, without secrets (the values of secret
        options are ``***``): safe in messages, checkpoints and reports."""
        return self._url

    # -- the medium: what a backend implements -------------------------------

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, durability: Durability = "sync",
                 **options: Any) -> ActionStateStore:
        """Open the store ``url`` names, with ``options`` (see :mod:`.options`); the
        store's :attr:`url` is ``url``."""

    @abstractmethod
    def append(self, record: Record, data: bytes, sync: bool) -> Position:
        """Append encoded ``data`` and return its position; durable now if ``sync``."""

    @abstractmethod
    def flush(self) -> None:
        """Make every appended record durable.

        It may be called on another thread than :meth:`put` (see also
        :meth:`flush_begin`, which a runner uses so that the event loop goes on
        while the medium works), while :meth:`put` keeps being called on the event-loop
        thread. A backend then takes the records appended so far under a lock and
        makes them durable on the flushing thread; a record put meanwhile goes to
        the next flush. A flush never interleaves its write with a ``sync`` put's
        (that put waits for it): records reach the medium in the order they were put.
        Only one thread puts; flushes may come from any thread (they take turns).
        """

    def flush_begin(self, *, write_now: bool = True) -> Callable[[], None] | None:
        """A flush in two parts: the part that keeps the caller busy runs now, and the
        part that only waits for the medium (an fsync, a broker's acks) is returned,
        to be called once on any thread, or None when nothing is left to wait for.
        Until it has been called, other uses of the store wait for it. A committer
        runs the first part on the event loop and waits for the second on a thread of
        its own, so the loop keeps working while the disk does.

        ``write_now=False`` (a group commit, whose throughput matters more than its
        latency): the backend may also leave its writes to the returned part, and
        only take the buffered records now. The default flushes at once."""
        self.flush()
        return None

    @abstractmethod
    def end_offsets(self) -> dict[int, int]:
        """Per partition, the offset the next record will get."""

    @abstractmethod
    def read(
        self, namespace: str, start: dict[int, int], stop: dict[int, int]
    ) -> Iterator[tuple[Position, bytes, str]]:
        """Records of ``namespace`` from ``start`` up to (excluding) ``stop``, in log order.

        Yields (position, data, description); the description names the record in errors.
        """

    @abstractmethod
    def close(self) -> None:
        """Flush and release resources. Calling it twice is fine."""

    def release(self, marker: Marker) -> None:  # noqa: B027 - optional hook
        """A checkpoint holding ``marker`` is saved: let go of what only older ones
        needed, such as the records before it.

        The default keeps everything; backends with cheap deletes override this, and
        raise :class:`FencedError` instead of deleting once a newer run claimed
        the namespace (the records may be its states in flight).
        """

    def discard_other_runs(self) -> None:  # noqa: B027 - optional hook
        """Delete the records of every namespace but this one.

        A runner calls it on a fresh start only for a store that belongs to its
        state dir alone (the default SQLite file), never for a shared one.
        """

    @property
    def partition_count(self) -> int:
        """How many partitions the log has (fences go to each)."""
        return 1

    def key_bound(self, key: str) -> Position:
        """The partition the records of agent key ``key`` go to, and a lower bound of
        the offset the next one will get there (cheap: no round trip where the
        backend knows it). The default asks :meth:`end_offsets` of partition 0."""
        return (0, self.end_offsets().get(0, 0))

    # -- the contract, shared by every backend -------------------------------

    @property
    def namespace(self) -> str:
        """The run namespace new records are written under (a new one per fresh start)."""
        return self._namespace

    def use_namespace(self, namespace: str) -> None:
        """Write further records under ``namespace`` (a restored run's).

        Backends that derive something from the namespace extend this.
        """
        self._namespace = namespace

    def put(self, record: Record, *, sync: bool | None = None) -> None:
        """Append one record under the store's epoch and apply it; ``sync``
        overrides the store's durability."""
        if self._read_only:
            raise StoreError(f"store {self.url} was opened to read only: open it again to write")
        epoch = self.epoch
        data = encode_record(record, epoch, self.keyring)
        position = self.append(record, data, self.durability == "sync" if sync is None else sync)
        self.index.apply(record, position, epoch)

    def get(self, key: StateKey) -> ActionState | None:
        """The state of ``key``, or None (a pure lookup)."""
        return self.index.get(key)

    def has_later(self, key: str, seq: int) -> bool:
        """True when states of input ``key`` exist at a seq above ``seq`` (a pure lookup)."""
        return self.index.has_later(key, seq)

    def drop_after(self, key: str, seq: int) -> None:
        """Divergence: durably forget every state of input ``key`` with a seq above ``seq``
        (they belong to a history that did not happen), for that key only."""
        self.put(DropRecord(key, seq), sync=True)

    def prune(self, key: str, seq: int) -> None:
        """Forget states of ``key`` with seq <= ``seq`` (they completed before a checkpoint)."""
        self.index.prune(key, seq)

    def recovery_marker(self) -> Marker:
        """Where a rebuild must start to bring back every state not yet pruned.

        A query: take it after :meth:`flush`, as a checkpoint does, so that every
        record the checkpoint relies on is durable.
        """
        offsets = self.end_offsets()
        offsets.update(self.index.first_positions())
        fences = {p: self.index.fence_before(p, o) for p, o in offsets.items()}
        return Marker(self.namespace, dict(sorted(offsets.items())), fences, self.epoch)

    def attach(self, namespace: str) -> None:
        """Write into ``namespace`` beside other writers of it (the subtasks of a Flink
        job): no claim, no rebuild, an empty index; the states a writer needs come in
        through :meth:`records` and :meth:`StateIndex.apply`, key by key."""
        self.index = StateIndex()
        self._read_only = False
        self.use_namespace(namespace)

    def records(self, start: dict[int, int], stop: dict[int, int]
                ) -> Iterator[tuple[Position, Record]]:
        """The decoded records of this namespace from ``start`` up to ``stop``, in log
        order per partition."""
        for position, data, where in self.read(self.namespace, start, stop):
            yield position, decode_record(data, where, self.keyring, self.sealed_ok)

    def rebuild(self, marker: Marker | None, *, read_only: bool = False,
                done: Callable[[str], int] | None = None) -> int:
        """Claim a new epoch and restore the states after ``marker``.

        ``None`` is a fresh start in a new namespace. ``read_only`` reads without
        claiming (to look at a run another process may still own; puts are refused
        afterwards). ``done(key)``, if given, is the highest seq of input ``key`` whose
        states are no longer needed (-1: none), asked once per key read: the states at
        or below it are skipped while reading, and the index ends as if every record
        was applied and then ``prune(key, done(key))`` ran, without ever holding them.
        Returns the records read.
        """
        self.index = StateIndex()
        self._read_only = read_only
        if marker is None:
            self.use_namespace(uuid.uuid4().hex)  # a fresh start never writes into an old run
            start = ends = self.end_offsets()
        else:
            self.use_namespace(marker.namespace)
            start = marker.offsets
            self.index.start_at(marker.offsets, marker.fences)
            ends = self.end_offsets()
            check_not_past(start, ends, self._past_end)
        self._read_ahead(start, ends)
        skipped = None if done is None else skipper(done)
        self._applied = 0
        # The index only grows while it is read in, and its objects hold no cycles: the
        # cyclic collector would traverse every state held so far, again and again.
        collecting = gc.isenabled()
        gc.disable()
        try:
            if read_only:
                for _ in self._apply(self.read(self.namespace, start, ends), skipped):
                    pass
                return self._applied
            # What precedes ``ends`` is read in pieces while the claim waits on the
            # medium (see _meanwhile), the rest (the claim's fences, and whatever a
            # writer of the old epoch put meanwhile) after it.
            self._reading = reading = self._apply(self.read(self.namespace, start, ends),
                                                  skipped, _PIECE)
            try:
                self._claim(ends)
                self._reading = None
                for _ in reading:
                    pass
            finally:
                self._reading = None  # (also when the claim failed)
                reading.close()
            # After the claim (its search's, if nothing was written since): read up to it.
            stop = self._after_claim_ends or self.end_offsets()
            for _ in self._apply(self.read(self.namespace, ends, stop), skipped):
                pass
            return self._applied
        finally:
            if collecting:
                gc.enable()

    def _apply(self, records: Iterator[tuple[Position, bytes, str]],
               skipped: Callable[[StateKey], bool] | None, piece: int = 1 << 62
               ) -> Generator[None, None, None]:
        """Apply ``records`` to the index, counting them in ``_applied``; a step of the
        generator applies ``piece`` records (by default all)."""
        index, keyring, sealed_ok = self.index, self.keyring, self.sealed_ok
        apply, apply_call = index.apply, index.apply_call
        while True:
            count = 0
            for count, (position, data, where) in enumerate(  # noqa: B007 - read after
                    itertools.islice(records, piece), 1):
                call = decode_call(data, skipped)
                if call:  # the common case; empty: a done state's, skipped
                    apply_call(*call, position)
                elif call is None:
                    record = decode_record(data, where, keyring, sealed_ok)
                    if skipped is None or not isinstance(record, OF_A_STATE) or not skipped(
                            record.key):
                        apply(record, position, record.epoch)
            self._applied += count
            if count < piece:
                return
            yield

    def _past_end(self, part: int, first: int, end: int) -> str | None:
        """Why a rebuild refuses a marker that starts at ``first`` in partition ``part``,
        past the medium's end there (``end``): a backend names its medium. None: the
        medium keeps nothing across processes, and the rebuild reads nothing there."""
        return (f"store {self.url} partition {part} ends at offset {end}, but the recovery "
                f"marker starts at offset {first}: its records were deleted since the "
                "checkpoint (the store recreated, emptied or replaced by an older copy), "
                "so the states they held are lost; restore the store the checkpoint was "
                "taken on, or start fresh without a checkpoint")

    def _meanwhile(self) -> bool:
        """Apply one more piece of the records a rebuild reads during its claim; False
        once none is left (or outside a claim). A backend calls it while the claim
        waits on its medium (then serves what it waits for, and calls again), so that
        the claim's round trips and the reading overlap."""
        reading = self._reading
        if reading is None:
            return False
        self._reading = None  # not again while it runs (its read may wait, and call this)
        if next(reading, False) is None:
            self._reading = reading
            return True
        return False  # the last piece is applied: the rest is read after the claim

    def _read_ahead(self, start: dict[int, int],  # noqa: B027 - optional hook
                    ends: dict[int, int]) -> None:
        """A rebuild will read this namespace from ``start`` up to ``ends`` (the end
        offsets now), then on: a backend may begin (open its reader, fetch) while the
        claim is written; :meth:`read` then goes on from there, up to the stop it is
        given."""

    def _claim(self, ends: dict[int, int] | None = None) -> None:
        """Take the next epoch: a claim in partition 0 (epoch = its offset + 1), with a
        fence in every other partition before it and after it, each durable.

        The fence before (a *pre-fence*, epoch = partition 0's end offset + 1, a lower bound
        of the claim's epoch and above every earlier claim's) shuts out older writers in
        every partition by the time the claim is acknowledged; the fence after carries the
        exact epoch, and is skipped when it equals the pre-fence. A backend whose claim
        append writes the pre-fences itself sets ``claim_prefences`` (and may skip a fence
        copy that repeats them). ``ends``: the end offsets read just before, if any.
        """
        partitioned = self.partition_count > 1
        prefence = 0
        if partitioned and not self.claim_prefences:
            prefence = (self.end_offsets() if ends is None else ends).get(0, 0) + 1
            self._fence_others(prefence)
        token = uuid.uuid4().hex
        claim = FenceRecord(0, token)
        position = self.append(claim, encode_record(claim), True)
        if not self.exact_positions:
            position = self._find_claim(token, position)
        self.epoch = position[1] + 1
        if partitioned and self.epoch != prefence:
            self._fence_others(self.epoch)

    def _fence_others(self, epoch: int) -> None:
        """A fence of ``epoch`` to every partition but 0 (the backend routes it)."""
        self._after_claim_ends = None  # the fence comes after them
        fence = FenceRecord(epoch)
        self.append(fence, encode_record(fence), True)

    def _find_claim(self, token: str, lower_bound: Position) -> Position:
        stop = self._after_claim_ends = self.end_offsets()
        for position, data, where in self.read(self.namespace, {0: lower_bound[1]},
                                               {0: stop.get(0, 0)}):
            record = decode_record(data, where, self.keyring, self.sealed_ok)
            if isinstance(record, FenceRecord) and record.claim == token:
                return position
        raise StoreError(f"store {self.url or type(self).__name__}: the claim just written "
                         "is not in partition 0; the store lost an acknowledged record")

    def states(self) -> Iterable[tuple[StateKey, ActionState]]:
        """Every live state (for inspection)."""
        return self.index.items()

    def __enter__(self) -> ActionStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
