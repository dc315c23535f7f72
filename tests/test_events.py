import hashlib
import json

import pytest

from actionstate import AgentDefinitionError, Event, InputEvent, OutputEvent
from actionstate.events import event_class
from actionstate.records.digests import canonical_bytes, event_id


class Checked(Event):
    id: str
    n: int


class Nested(Event):
    payload: dict[str, list[int]]
    raw: bytes = b""


def test_user_event_round_trips_to_its_own_class() -> None:
    event = Checked(id="t1", n=3)
    data = json.loads(json.dumps(event.to_json()))
    back = Event.from_json(data)
    assert type(back) is Checked and back == event
    assert data == {"type": f"{__name__}.Checked", "data": {"id": "t1", "n": 3}}


def test_builtin_events_have_short_stable_names() -> None:
    assert InputEvent(input={"a": 1}).to_json()["type"] == "actionstate.InputEvent"
    assert event_class("actionstate.OutputEvent") is OutputEvent


def test_event_id_is_full_sha256_of_type_and_canonical_content() -> None:
    a = Nested(payload={"b": [1], "a": [2]})
    b = Nested(payload={"a": [2], "b": [1]})
    assert event_id(a) == event_id(b)
    assert len(event_id(a)) == 64
    assert event_id(a) == hashlib.sha256(canonical_bytes(a.to_json())).hexdigest()
    assert event_id(a) != event_id(Nested(payload={"a": [2], "b": [2]}))


def test_two_classes_with_one_type_name_are_refused() -> None:
    with pytest.raises(AgentDefinitionError, match="used by two classes"):
        class Clash(Event):
            event_type = "actionstate.InputEvent"


def test_unknown_event_type_names_the_fix() -> None:
    with pytest.raises(AgentDefinitionError, match="import the module"):
        event_class("nowhere.Missing")
