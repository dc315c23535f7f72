"""An agent whose durable calls return every storable value type (issue 9, part 3).

:func:`sample` builds one value of each supported type (a pydantic model too
where pydantic is installed); :func:`render` writes a value as canonical text
(type and repr, sets sorted), so two runs can be compared line by line.
:class:`Values` gets each value from a durable call, stores them all in
short-term memory (unless the input says ``"keep_memory": true``: then the
memory an earlier input of its key left is kept), sends them in a
:class:`Carried` event, and outputs the rendering of what it got: the results
(action ``produce``), and the event fields and memory (action ``consume``).
Each action then calls the model of ``ACTIONSTATE_MODEL_BASE_URL`` with a
prompt unique to its input (``"<id> produce call"``, ``"<id> consume call"``),
after its value calls, so a test can kill the run while that call is in flight
with every value recorded. With ``ACTIONSTATE_VALUES_LEDGER`` set, each run of
the value call appends ``<id> <name>`` to that file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import importlib.util
import os
import uuid
import zoneinfo
from pathlib import Path
from typing import Any

from actionstate import Agent, Event, InputEvent, OutputEvent, RunnerContext, action
from actionstate.llm import model_from_env

VALUES = f"{Path(__file__).resolve()}:Values"
"""The agent spec of :class:`Values` for ``actionstate run``."""
MODEL = model_from_env()


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.StrEnum):
    LOW = "low"


class Perm(enum.IntFlag):
    R = 1
    W = 2


@dataclasses.dataclass
class Point:
    x: int
    y: tuple[int, int]
    tags: set[str] = dataclasses.field(default_factory=set)
    label: str = dataclasses.field(init=False, default="")

    def __post_init__(self) -> None:
        self.label = f"p{self.x}"


@dataclasses.dataclass(frozen=True)
class Frozen:
    when: dt.date
    amount: decimal.Decimal


class Model:
    """A stand-in for a pydantic model: the two methods actionstate uses, nothing else."""

    def __init__(self, name: str, sizes: tuple[int, ...]) -> None:
        self.name, self.sizes = name, sizes

    def model_dump(self) -> dict[str, Any]:
        return {"name": self.name, "sizes": self.sizes}

    @classmethod
    def model_validate(cls, data: dict[str, Any]) -> Model:
        return cls(data["name"], data["sizes"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Model) and (self.name, self.sizes) == (other.name, other.sizes)

    def __repr__(self) -> str:  # a content repr: an event carrying it has a stable id
        return f"Model(name={self.name!r}, sizes={self.sizes!r})"


PARIS = zoneinfo.ZoneInfo("Europe/Paris")
HAS_PYDANTIC = importlib.util.find_spec("pydantic") is not None

if HAS_PYDANTIC:
    import pydantic

    class Order(pydantic.BaseModel):
        """A real pydantic model: its fields keep their types through model_dump and
        model_validate, and its repr shows its content (no set of strings, whose
        order changes from process to process)."""

        id: uuid.UUID
        items: tuple[int, ...]
        when: dt.datetime
        price: decimal.Decimal
        color: Color


def sample() -> dict[str, Any]:
    """One value of every supported type (new objects on each call)."""
    values: dict[str, Any] = {
        "str": "ключ \"q\"",
        "int": -(2**70),
        "float": 1.5,
        "none": None,
        "list": [1, "a", [True]],
        "tuple": (1, "a", (2.5, None), []),
        "int_keys": {1: "one", 2: ("two",)},
        "tuple_keys": {(1, 2): "a", (3, "x"): [1]},
        "mixed_keys": {1: "a", "b": 2, None: 3, 2.5: 4},
        "enum_keys": {Color.RED: 1, Color.BLUE: 2},
        "frozenset_keys": {frozenset({1}): "f"},
        "tag_key": {"__as__": "tuple", "items": [1]},
        "set": {"b", "a", 3},
        "frozenset": frozenset({"x", ("t", 1)}),
        "empty_set": set(),
        "datetime": dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
        "datetime_utc": dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC),
        "datetime_zone": dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS),
        "datetime_offset": dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-3,
                                                                                   minutes=-30),
                                                                      "NST")),
        "date": dt.date(2024, 2, 29),
        "time": dt.time(23, 59, 1, 5, tzinfo=dt.timezone(dt.timedelta(hours=5))),
        "time_naive": dt.time(0, 0),
        "timedelta": dt.timedelta(days=-1, seconds=5, microseconds=6),
        "decimal": decimal.Decimal("1.10"),
        "decimal_exp": decimal.Decimal("-1E+3"),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "enum": Color.RED,
        "str_enum": Level.LOW,
        "flags": Perm.R | Perm.W,
        "bytes": b"\x00\xff",
        "dataclass": Point(1, (2, 3), {"b", "a"}),
        "frozen_dataclass": Frozen(dt.date(2024, 1, 2), decimal.Decimal("0.01")),
        "model": Model("m", (1, 2)),
        "nested": [{"when": dt.date(2020, 1, 1), "ids": {uuid.UUID(int=1)}}, (Color.BLUE,)],
    }
    if HAS_PYDANTIC:
        values["pydantic"] = Order(id=uuid.UUID(int=7), items=(1, 2),
                                   when=dt.datetime(2024, 3, 1, 8, tzinfo=PARIS),
                                   price=decimal.Decimal("9.90"), color=Color.BLUE)
    return values


def make(name: str, item_id: str) -> Any:
    """The durable call: one sample value (logged to ``ACTIONSTATE_VALUES_LEDGER``)."""
    ledger = os.environ.get("ACTIONSTATE_VALUES_LEDGER")
    if ledger:
        with open(ledger, "a") as f:
            f.write(f"{item_id} {name}\n")
    return sample()[name]


def render(value: Any) -> str:
    """Canonical text of ``value``: its type and content, sets sorted, dicts in order."""
    kind = type(value)
    name = kind.__qualname__
    if kind is dict:
        return "dict{" + ", ".join(f"{render(k)}: {render(v)}" for k, v in value.items()) + "}"
    if kind is list or kind is tuple:
        return f"{name}[" + ", ".join(render(v) for v in value) + "]"
    if kind is set or kind is frozenset:
        return f"{name}{{" + ", ".join(sorted(render(v) for v in value)) + "}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ", ".join(f"{f.name}={render(getattr(value, f.name))}"
                           for f in dataclasses.fields(value))
        return f"{name}({fields})"
    if kind is Model or (HAS_PYDANTIC and isinstance(value, pydantic.BaseModel)):
        return f"{name}({render(value.model_dump())})"
    return f"{name}:{value!r}"


def render_all(values: dict[str, Any]) -> str:
    return "\n".join(f"{k} = {render(v)}" for k, v in values.items())


class Carried(Event):
    """Sent from ``produce`` to ``consume``: every value, and two typed fields."""

    id: str
    values: dict[str, Any]
    when: dt.datetime
    pair: tuple[Any, ...]


class Values(Agent):
    @action(InputEvent)
    async def produce(self, event: InputEvent, ctx: RunnerContext) -> None:
        item = event.input
        names = list(sample())
        got: dict[str, Any] = {}
        half = len(names) // 2
        for name in names[:half]:  # both kinds of durable call
            got[name] = await ctx.durable_execute_async(make, name, item["id"])
        for name in names[half:]:
            got[name] = ctx.durable_execute(make, name, item["id"])
        await ctx.durable_execute_async(MODEL.chat, [{"role": "user",
                                                      "content": f"{item['id']} produce call"}])
        if not item.get("keep_memory"):
            for name, value in got.items():
                ctx.short_term_memory.set(f"v.{name}", value)
        ctx.send_event(OutputEvent(output={"id": item["id"], "part": "results",
                                           "text": render_all(got)}))
        ctx.send_event(Carried(id=item["id"], values=got, when=got["datetime_zone"],
                               pair=(got["decimal"], got["set"])))

    @action(Carried)
    async def consume(self, event: Carried, ctx: RunnerContext) -> None:
        await ctx.durable_execute_async(MODEL.chat, [{"role": "user",
                                                      "content": f"{event.id} consume call"}])
        fields = {"values": event.values, "when": event.when, "pair": event.pair}
        memory = ctx.short_term_memory.get("v")
        ctx.send_event(OutputEvent(output={"id": event.id, "part": "event",
                                           "text": render_all(fields)}))
        ctx.send_event(OutputEvent(output={"id": event.id, "part": "memory",
                                           "text": render_all(memory)}))
