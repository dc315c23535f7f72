"""Issue 9, part 3: values round-trip with their types.

Call results, memory values and event fields come back on replay exactly as the
first run saw them (type for type); anything else is one clear error, the same
on the first run and on every replay; exceptions replay with their attributes.
The value types are those of :func:`tests.agents.values.sample`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import uuid
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import pytest

from actionstate import (
    Agent,
    Event,
    InputEvent,
    OutputEvent,
    ReplayedCallError,
    RunnerContext,
    action,
)
from actionstate.errors import ActionFailedError, ConfigError, CorruptRecordError
from actionstate.records import state
from actionstate.records.codec import decode_record, encode_record
from actionstate.records.digests import event_id
from actionstate.records.exceptions import decode_exception, encode_exception
from actionstate.records.state import CallRecord, CallResult, CallStatus, StateKey
from actionstate.records.values import UnstorableValueError
from actionstate.testing import FakeLLMServer
from actionstate.testing.recovery import Job, by_id, reference
from actionstate.testing.restart import Crash, Restartable
from tests.agents.values import VALUES, Carried, Model, render, render_all, sample

KEY = StateKey("k", 1, "act", "e" * 64)
NAMES = list(sample())


def same(got: Any, want: Any) -> None:
    """``got`` is ``want`` type for type: equal renderings (types and reprs, recursively)."""
    assert render(got) == render(want)


def call_roundtrip(value: Any) -> Any:
    record = CallRecord(KEY, 0, CallResult("m.f", "d" * 64, CallStatus.SUCCEEDED, value), 1)
    decoded = decode_record(encode_record(record), "test")
    assert isinstance(decoded, CallRecord)
    return decoded.call.result


# -- the codec -------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_each_value_type_round_trips_through_a_call_record(name: str) -> None:
    value = sample()[name]
    same(call_roundtrip(value), value)


def test_values_round_trip_through_memory_updates_and_event_fields() -> None:
    values = sample()
    event = Carried(id="x", values=values, when=values["datetime_zone"],
                    pair=(values["decimal"], values["set"]))
    record = state.CompleteRecord(
        KEY, InputEvent(input={"id": "x"}), (event, OutputEvent(output=values["tuple"])),
        tuple(state.MemoryUpdate(state.MemoryScope.SHORT_TERM, f"v.{k}", v)
              for k, v in values.items()), 1)
    decoded = decode_record(encode_record(record), "test")
    assert isinstance(decoded, state.CompleteRecord)
    out = decoded.output_events[0]
    assert isinstance(out, Carried)
    same(out.values, values)
    same((out.when, out.pair), (event.when, event.pair))
    same(decoded.output_events[1], OutputEvent(output=values["tuple"]))
    same({u.path: u.value for u in decoded.memory_updates},
         {f"v.{k}": v for k, v in values.items()})


def test_values_that_were_storable_before_keep_their_bytes() -> None:
    record = CallRecord(KEY, 0, CallResult("m.f", "d", CallStatus.SUCCEEDED,
                                           {"a": [1, 2.5, None, True, "ü"], "b": b"\x01"}), 1)
    assert encode_record(record).endswith(
        b'"r":{"a":[1,2.5,null,true,"\xc3\xbc"],"b":{"__as__":"bytes","b64":"AQ=="}}}')


def test_records_of_the_old_format_read_as_before() -> None:
    """A tuple written before the tags existed was a list: it still reads as a list."""
    old = (b'{"v":1,"t":"call","k":["k",1,"act","e"],"e":1,"p":0,"f":"m.f","d":"d",'
           b'"s":"S","r":{"1":[1,2],"raw":{"__as__":"bytes","b64":"AAE="}}}')
    decoded = decode_record(old, "old")
    assert isinstance(decoded, CallRecord)
    assert decoded.call.result == {"1": [1, 2], "raw": b"\x00\x01"}


def test_a_stored_value_whose_class_is_gone_is_an_error_naming_the_record() -> None:
    data = (b'{"v":1,"t":"call","k":["k",1,"act","e"],"e":1,"p":0,"f":"m.f","d":"d",'
            b'"s":"S","r":{"__as__":"dataclass","type":"no.such.Point","fields":{}}}')
    with pytest.raises(CorruptRecordError, match="record at row 7 holds a stored dataclass of "
                       "class no.such.Point, which cannot be imported"):
        decode_record(data, "row 7")


if importlib.util.find_spec("pydantic") is not None:  # defined only where pydantic exists
    import pydantic

    class Priced(pydantic.BaseModel):
        name: str
        sizes: tuple[int, ...]
        when: Any = None

    def test_pydantic_models_round_trip() -> None:
        value = Priced(name="n", sizes=(1, 2), when=sample()["datetime_zone"])
        got = call_roundtrip(value)
        assert type(got) is Priced and got == value
        assert type(got.sizes) is tuple and got.when.tzinfo == value.when.tzinfo


def test_a_pydantic_style_model_round_trips_by_duck_typing() -> None:
    """The stand-in tests.agents.values.Model has only model_dump and model_validate."""
    got = call_roundtrip([Model("m", (1, 2))])
    assert type(got[0]) is Model and got[0] == Model("m", (1, 2))


# -- unstorable values -------------------------------------------------------------------

class Opaque:
    pass


def returns_opaque() -> Any:
    return {"ok": [1, Opaque()]}


def test_the_error_names_the_type_and_where_it_is() -> None:
    record = CallRecord(KEY, 0, CallResult("m.f", "d", CallStatus.SUCCEEDED,
                                           {"ok": [1, Opaque()]}), 1)
    with pytest.raises(UnstorableValueError, match=r"type tests.test_values.Opaque \(the result "
                       r"of durable call m.f\['ok'\]\[1\]\)"):
        encode_record(record)
    for other in (OrderedDict(a=1), Counter("ab"), {"s": {Opaque()}}):
        with pytest.raises(UnstorableValueError, match="cannot store a value of type"):
            call_roundtrip(other)


def test_a_class_that_cannot_be_imported_back_is_refused_when_stored() -> None:
    @dataclasses.dataclass
    class Local:
        x: int

    with pytest.raises(UnstorableValueError, match="cannot be imported under that name"):
        call_roundtrip(Local(1))


@pytest.fixture
def rs() -> Any:
    store = Restartable(f"memory://{uuid.uuid4().hex}")
    yield store
    store.close()


def test_an_unstorable_result_is_the_calls_recorded_failure(rs: Restartable) -> None:
    ran: list[int] = []

    def tool() -> Any:
        ran.append(1)
        return returns_opaque()

    tool.__actionstate_name__ = "tests.tool"  # type: ignore[attr-defined]

    class Returns(Agent):
        @action(InputEvent)
        def work(self, event: InputEvent, ctx: RunnerContext) -> None:
            ctx.durable_execute(tool)

    errors = []
    for restart in (False, True, True):
        if restart:
            rs.restart()
        with pytest.raises(ActionFailedError) as caught:
            rs.run(Returns(), "k", 0, "x")
        cause = caught.value.__cause__
        assert type(cause) is UnstorableValueError
        errors.append(str(caught.value))
    assert ran == [1], "the call ran once; the replays raised its recorded failure"
    assert errors[0] == errors[1] == errors[2]
    assert "type tests.test_values.Opaque (the result of durable call tests.tool['ok'][1])" \
        in errors[0]
    recorded = rs.store.get(StateKey("k", 0, "work", event_id(InputEvent(input="x"))))
    assert recorded is not None and not recorded.completed
    assert recorded.calls[0].status is CallStatus.FAILED and not recorded.calls[0].retryable


def test_an_unstorable_memory_value_is_refused_at_once(rs: Restartable) -> None:
    class Sets(Agent):
        @action(InputEvent)
        def work(self, event: InputEvent, ctx: RunnerContext) -> None:
            try:
                ctx.short_term_memory.set("a.b", [Opaque()])
            except ConfigError as exc:
                assert "a.b" not in ctx.short_term_memory, "nothing written"
                ctx.send_event(OutputEvent(output=str(exc)))

    [message] = rs.run(Sets(), "k", 0, "x")
    assert message.startswith("cannot store a value of type tests.test_values.Opaque "
                              "(short_term memory 'a.b'[0]): ")


class Bad(Event):
    payload: Any


def test_an_unstorable_event_field_is_the_same_error_on_every_run(rs: Restartable) -> None:
    class Sends(Agent):
        @action(InputEvent)
        def work(self, event: InputEvent, ctx: RunnerContext) -> None:
            ctx.send_event(Bad(payload={"x": OrderedDict(a=1)}))

    messages = []
    for restart in (False, True):
        if restart:
            rs.restart()
        with pytest.raises(UnstorableValueError) as caught:
            rs.run(Sends(), "k", 0, "x")
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert ("type collections.OrderedDict (event tests.test_values.Bad sent by action "
            "'work'.payload['x'])") in messages[0]


# -- replay ----------------------------------------------------------------------------

class Producer(Agent):
    """Gets every sample value from a durable call, keeps them in memory, sends them in
    an event, and outputs their rendering; ``crash_after`` values, it dies once."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.crash_after = crash_after
        self.calls: Counter[str] = Counter()

    def make(self, name: str) -> Any:
        self.calls[name] += 1
        return sample()[name]

    @action(InputEvent)
    def produce(self, event: InputEvent, ctx: RunnerContext) -> None:
        got = {}
        for i, name in enumerate(NAMES):
            if i == self.crash_after:
                self.crash_after = None
                raise Crash("killed mid-action")
            got[name] = ctx.durable_execute(self.make, name)
            ctx.short_term_memory.set(f"v.{name}", got[name])
        ctx.send_event(Carried(id="x", values=got, when=got["datetime_zone"],
                               pair=(got["decimal"], got["set"])))
        ctx.send_event(OutputEvent(output=("results", render_all(got))))

    @action(Carried)
    def consume(self, event: Carried, ctx: RunnerContext) -> None:
        ctx.send_event(OutputEvent(output=("event", render_all(event.values))))
        ctx.send_event(OutputEvent(output=("memory", render_all(ctx.short_term_memory.get("v")))))


def test_each_value_type_is_identical_after_a_crash_and_a_replay(rs: Restartable) -> None:
    expected = render_all(sample())
    agent = Producer(crash_after=len(NAMES) // 2)
    with pytest.raises(Crash):
        rs.run(agent, "k", 0, "x")
    rs.restart()
    rs.short_term.clear()  # the process died: memory comes back from the records
    outputs = rs.run(agent, "k", 0, "x")
    assert outputs == [("results", expected), ("event", expected), ("memory", expected)]
    assert set(agent.calls.values()) == {1}, "every call ran once"
    rs.restart()  # and once more, every action skipped: memory and events from the records
    rs.short_term.clear()
    assert rs.run(agent, "k", 0, "x") == outputs
    assert set(agent.calls.values()) == {1}


# -- exceptions ------------------------------------------------------------------------

class Declined(Exception):
    def __init__(self, reason: str, *, code: int) -> None:
        super().__init__(reason)
        self.code = code
        self.details = {"at": sample()["datetime_utc"], "ids": (1, 2)}


class Wrapped(Exception):
    def __init__(self, inner: str, extra: str) -> None:
        super().__init__(f"{inner} ({extra})")
        self.inner = inner


def test_exceptions_replay_with_their_attributes() -> None:
    exc = decode_exception(encode_exception(Declined("no funds", code=402)))
    assert type(exc) is Declined and str(exc) == "no funds" and exc.args == ("no funds",)
    assert exc.code == 402
    same(exc.details, {"at": sample()["datetime_utc"], "ids": (1, 2)})
    # an __init__ that takes other arguments than it passes on: rebuilt without calling it
    exc = decode_exception(encode_exception(Wrapped("a", "b")))
    assert type(exc) is Wrapped and str(exc) == "a (b)" and exc.inner == "a"


def test_exception_attributes_survive_the_record_codec() -> None:
    stored = encode_exception(Declined("no funds", code=402))
    record = CallRecord(KEY, 0, CallResult("m.f", "d", CallStatus.FAILED, exception=stored), 1)
    decoded = decode_record(encode_record(record), "test")
    assert isinstance(decoded, CallRecord) and decoded.call.exception is not None
    exc = decode_exception(decoded.call.exception)
    assert isinstance(exc, Declined) and exc.code == 402 and exc.details["ids"] == (1, 2)


def test_an_exception_that_cannot_be_rebuilt_says_why_and_that_except_no_longer_matches() -> None:
    class Local(Exception):
        pass

    exc = decode_exception(encode_exception(Local("boom")))
    assert isinstance(exc, ReplayedCallError) and exc.message == "boom"
    assert "its type cannot be imported" in str(exc)
    assert "`except Local` no longer matches it" in str(exc)
    stored = encode_exception(Declined("x", code=1))
    stored["message"] = "something else"
    exc = decode_exception(stored)
    assert isinstance(exc, ReplayedCallError) and "it gives another message" in str(exc)


def test_unstorable_exception_args_and_attributes_are_left_out() -> None:
    exc = Declined("x", code=1)
    exc.handle = Opaque()  # type: ignore[attr-defined]
    stored = encode_exception(exc)
    assert "handle" not in stored["attrs"] and stored["attrs"]["code"] == 1
    assert stored["dropped"] == ["handle"]
    replayed = decode_exception(stored)  # rebuilt by Declined.__init__? it needs `code`
    assert isinstance(replayed, ReplayedCallError)
    assert "its attributes ['handle'] could not be stored" in str(replayed)
    assert encode_exception(ValueError(Opaque()))["args"] is None
    assert "attrs" not in encode_exception(ValueError("plain")), "the old bytes, unchanged"


# -- kill -9 and replay, against an uninterrupted run ------------------------------------

ITEMS: list[dict[str, Any]] = [{"id": "v1", "key": "k"},
                               {"id": "v2", "key": "k", "keep_memory": True}]
"""v2 leaves the memory v1 wrote as it is: v2's memory output is v1's, read back from
the checkpoint after a restart."""


def test_each_value_type_identical_after_kill_9_and_replay(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``actionstate run`` of tests/agents/values.py over two inputs of one key, killed with
    SIGKILL while v1's first action's model call is in flight (after all its value calls:
    the next run gets every value as a replayed call result), then while v2's first
    action's call is in flight after a checkpoint (v1 done: its memory, every value type
    as keys and values, is in the checkpoint), then while v2's second action's call is in
    flight after a checkpoint (memory restored from the checkpoint, v2's values replayed),
    then run to the end; compared with an uninterrupted run."""
    expected = reference(tmp_path_factory, VALUES, ITEMS)
    assert "pydantic" in NAMES, "pydantic comes with the openai extra: a real model is there"
    text = render_all(sample())
    assert {"part": "results", "id": "v1", "text": text} in expected.outputs
    ledger = tmp_path / "ledger.txt"
    monkeypatch.setenv("ACTIONSTATE_VALUES_LEDGER", str(ledger))  # not the reference's
    with FakeLLMServer() as server:
        job = Job(tmp_path, VALUES, server, ITEMS, checkpoint_interval=0.2)
        job.kill_during("v1 produce call", after_checkpoint=False)
        assert Counter(ledger.read_text().split("\n")[:-1]) == {f"v1 {n}": 1 for n in NAMES}
        job.kill_during("v2 produce call")
        job.kill_during("v2 consume call")
        job.finish()
        calls = dict(server.calls)
    assert calls == {"v1 produce call": 2, "v1 consume call": 1, "v2 produce call": 2,
                     "v2 consume call": 2}, calls
    ran = Counter(ledger.read_text().split("\n")[:-1])
    assert ran == {f"{i} {n}": 1 for i in ("v1", "v2") for n in NAMES}, (
        "every value call ran once: each later run got it by replay")
    got = sorted(by_id(job.outputs()), key=lambda o: (o["id"], o["part"]))
    want = sorted(expected.outputs, key=lambda o: (o["id"], o["part"]))
    assert [(o["id"], o["part"]) for o in got] == [
        (i, part) for i in ("v1", "v2") for part in ("event", "memory", "results")]
    for g, w in zip(got, want, strict=True):
        assert g["text"].splitlines() == w["text"].splitlines(), (g["id"], g["part"])
    assert json.dumps(got) == json.dumps(want)
    memory = next(o["text"] for o in got if (o["id"], o["part"]) == ("v2", "memory"))
    assert memory == text, "every value type, in memory through two checkpoints"


class WithHandle(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.handle = Opaque()


def test_an_attribute_that_init_makes_again_need_not_be_stored() -> None:
    exc = decode_exception(encode_exception(WithHandle("m")))
    assert type(exc) is WithHandle and isinstance(exc.handle, Opaque)


def test_checkpointed_memory_keeps_its_types(tmp_path: Path) -> None:
    from actionstate.checkpoint import Checkpoint, Marker
    from actionstate.runners.statedir import StateDir

    memory = {"pair": (1, "a"), "by_id": {1: "x", (2, 3): {4}}, "tagged": {"__as__": 1}}
    state = StateDir(tmp_path / "state")
    state.save_checkpoint(Checkpoint(job="j", marker=Marker("ns", {0: 1}, {0: 1}), store="",
                                     source={"path": "in", "offset": 0, "line": 0},
                                     sink={"path": "out", "offset": 0}), {"k": (3, memory)})
    assert state.load_checkpoint() is not None
    again = StateDir(tmp_path / "state")  # as a restart reads it
    assert again.key_state("k") == (3, memory) and again.key_state("other") is None
    found = again.key_state("k")
    assert found is not None and type(found[1]["pair"]) is tuple
