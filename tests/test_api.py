"""The Python API (actionstate.run / run_async) with each kind of source and sink, dead
letters, user-defined sources and sinks, and a resume after a failed action."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import actionstate
from actionstate import (
    ActionFailedError,
    Agent,
    ConfigError,
    InputError,
    InputEvent,
    InputRecord,
    OutputEvent,
    RunnerContext,
    action,
)
from actionstate.connectors.base import Item
from actionstate.testing.cli import actionstate as cli
from actionstate.testing.cli import run_args, write_lines
from tests.agents.counter import AGENT, Counter, input_line

RECORDS = [{"id": i, "k": f"k{i % 3}", "n": i} for i in range(30)]


def _expected(tmp: Path) -> list[dict[str, Any]]:
    """What the command writes for RECORDS (the reference the API must match)."""
    tmp.mkdir()
    write_lines(tmp / "in.jsonl", [input_line(i) for i in range(30)])
    done = cli(*run_args(tmp, AGENT))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in (tmp / "out.jsonl").read_text().splitlines()]


def _by_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: int(row["id"]))


def test_a_list_in_a_list_out_matches_the_command(tmp_path: Path) -> None:
    outputs: list[Any] = []
    stats = actionstate.run(Counter, source=RECORDS, key="k", sink=outputs,
                            state=tmp_path / "api-state", job="counter:Counter")
    assert stats.inputs == 30 and stats.outputs == 30 and stats.stopped_by is None
    assert _by_id(outputs) == _by_id(_expected(tmp_path / "cli"))


def test_files_in_and_out_match_the_command(tmp_path: Path) -> None:
    reference = _expected(tmp_path / "cli")
    (tmp_path / "api").mkdir()
    write_lines(tmp_path / "api" / "in.jsonl", [input_line(i) for i in range(30)])
    stats = actionstate.run(Counter(), source=tmp_path / "api" / "in.jsonl", key="k",
                            sink=str(tmp_path / "api" / "out.jsonl"),
                            state=tmp_path / "api" / "state", job="counter:Counter")
    assert stats.outputs == 30
    written = [json.loads(line)
               for line in (tmp_path / "api" / "out.jsonl").read_text().splitlines()]
    assert _by_id(written) == _by_id(reference), "the same lines as the command"


def test_an_async_iterable_into_a_callback(tmp_path: Path) -> None:
    async def tickets() -> AsyncIterator[dict[str, Any]]:
        for record in RECORDS:
            await asyncio.sleep(0)
            yield record

    seen: list[tuple[str, Any]] = []
    stats = asyncio.run(actionstate.run_async(
        Counter, source=tickets(), key=lambda record: record["k"],
        sink=lambda key, output: seen.append((key, output)), state=tmp_path / "state",
        job="counter:Counter"))
    assert stats.outputs == 30
    assert all(key == output["key"] for key, output in seen)
    assert _by_id([output for _, output in seen]) == _by_id(_expected(tmp_path / "cli"))


class FailsOnce(Agent):
    """Doubles through a durable call; raises on input 20 while ``failing`` is set."""

    failing = True
    calls: list[int] = []

    @action(InputEvent)
    def handle(self, event: InputEvent, ctx: RunnerContext) -> None:
        n = event.input["n"]
        doubled = ctx.durable_execute(FailsOnce.double, n)
        if n == 20 and FailsOnce.failing:
            raise RuntimeError("the model said no")
        ctx.send_event(OutputEvent(output={"id": n, "doubled": doubled}))

    @staticmethod
    def double(n: int) -> int:
        FailsOnce.calls.append(n)
        return n * 2


def test_a_failed_action_resumes_without_paying_again(tmp_path: Path) -> None:
    FailsOnce.calls, FailsOnce.failing = [], True
    outputs: list[Any] = []
    with pytest.raises(ActionFailedError):
        actionstate.run(FailsOnce, source=RECORDS, key="k", sink=outputs, state=tmp_path,
                        concurrency=1)
    first = list(FailsOnce.calls)
    assert 20 in first
    FailsOnce.failing = False
    resumed: list[Any] = []
    stats = actionstate.run(FailsOnce, source=RECORDS, key="k", sink=resumed, state=tmp_path,
                            concurrency=1)
    again = FailsOnce.calls[len(first):]
    assert set(first).isdisjoint(again), "no recorded call ran again (20's included)"
    assert sorted(first + again) == list(range(30))
    # A list is an at-least-once sink: the inputs after the last checkpoint ran again
    # (replayed from the store) and their outputs were delivered again.
    assert {o["id"] for o in outputs} | {o["id"] for o in resumed} == set(range(30))
    assert {o["id"] for o in resumed} >= {20} and stats.inputs == len(resumed)


def test_a_memory_store_runs_recorded_calls_again(tmp_path: Path) -> None:
    """The control for the test above: without a durable store the calls are paid again."""
    FailsOnce.calls, FailsOnce.failing = [], True
    with pytest.raises(ActionFailedError):
        actionstate.run(FailsOnce, source=RECORDS, key="k", sink=[], state=tmp_path,
                        store="memory://", concurrency=1)
    first = list(FailsOnce.calls)
    FailsOnce.failing = False
    actionstate.run(FailsOnce, source=RECORDS, key="k", sink=[], state=tmp_path,
                    store="memory://", concurrency=1)
    assert 20 in FailsOnce.calls[len(first):], "the failed input's call ran again"


def test_an_iterable_that_shrank_is_refused(tmp_path: Path) -> None:
    actionstate.run(Counter, source=RECORDS, key="k", sink=[], state=tmp_path)
    with pytest.raises(InputError, match="fewer than the 30 the checkpoint had read"):
        actionstate.run(Counter, source=RECORDS[:10], key="k", sink=[], state=tmp_path)


BAD = ['{"id": 1, "k": "a", "n": 1}', "not json", '{"id": 3, "n": 3}', '{"id": 4, "k": 4}',
       '{"id": 5, "k": "b", "n": 5}']


def test_bad_records_go_to_the_dead_letter_sink(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", BAD)
    letters: list[Any] = []
    outputs: list[Any] = []
    stats = actionstate.run(Counter, source=tmp_path / "in.jsonl", key="k", sink=outputs,
                            dead_letter=letters, state=tmp_path / "state")
    assert sorted(o["id"] for o in outputs) == [1, 5]
    assert stats.dead_letters == 3
    assert [letter["where"] for letter in letters] == [2, 3, 4]
    assert letters[0]["record"] == "not json" and "not a JSON object" in letters[0]["error"]
    assert f"{tmp_path / 'in.jsonl'}:3" in letters[1]["error"] and "no key field" in (
        letters[1]["error"])
    assert "not a string" in letters[2]["error"]


def test_without_a_dead_letter_sink_a_bad_record_stops_the_run(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", BAD)
    outputs: list[Any] = []
    with pytest.raises(InputError, match=r"in\.jsonl:2: not a JSON object"):
        actionstate.run(Counter, source=tmp_path / "in.jsonl", key="k", sink=outputs,
                        state=tmp_path / "state")
    assert [o["id"] for o in outputs] == [1], "the records before it finished"


def test_the_command_sends_bad_records_to_a_dead_letter_file(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", BAD)
    done = cli(*run_args(tmp_path, AGENT), "--dead-letter", str(tmp_path / "dead.jsonl"))
    assert done.returncode == 0, done.stderr
    letters = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [letter["where"] for letter in letters] == [2, 3, 4]
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2


class Countdown:
    """A user-defined source: the numbers below ``n``, keyed by parity; its position
    is the next number. What the README shows."""

    def __init__(self, n: int) -> None:
        self.n, self.next = n, 0

    def describe(self) -> str:
        return f"countdown to {self.n}"

    def restore(self, state: dict[str, Any] | None) -> None:
        self.next = state["next"] if state else 0

    async def batches(self) -> AsyncIterator[Sequence[Item]]:
        for i in range(self.next, self.n):
            yield [InputRecord(key=f"k{i % 2}", record={"id": i, "n": i}, where=i, mark=i + 1)]

    def admitted(self, item: Item) -> None:
        self.next = item.mark

    def state(self) -> dict[str, Any]:
        return {"kind": "countdown", "next": self.next}

    def close(self) -> None:
        pass


class Totals:
    """A user-defined sink: per key, the last output; exactly once through its state."""

    def __init__(self) -> None:
        self.last: dict[str, Any] = {}
        self.prepared = 0

    def describe(self) -> str:
        return "totals"

    def restore(self, state: dict[str, Any] | None) -> None:
        self.last = dict(state["last"]) if state else {}

    def write(self, outputs: Sequence[tuple[str, Any]]) -> None:
        for key, output in outputs:
            self.last[key] = output

    def prepare(self) -> dict[str, Any]:
        self.prepared += 1
        return {"kind": "totals", "last": self.last}

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_user_defined_source_and_sink(tmp_path: Path) -> None:
    totals = Totals()
    actionstate.run(Counter, source=Countdown(10), sink=totals, state=tmp_path)
    assert totals.last == {"k0": {"id": 8, "key": "k0", "seq": 4, "total": 40},
                           "k1": {"id": 9, "key": "k1", "seq": 4, "total": 50}}
    assert totals.prepared >= 2, "the first checkpoint and the last"
    more = Totals()
    stats = actionstate.run(Counter, source=Countdown(12), sink=more, state=tmp_path)
    assert stats.inputs == 2, "it resumed at the position the checkpoint saved"
    assert more.last["k0"] == {"id": 10, "key": "k0", "seq": 5, "total": 60}


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs key="):
        actionstate.run(Counter, source=RECORDS, sink=[], state=tmp_path)
    with pytest.raises(ConfigError, match="unknown scheme 'http'"):
        actionstate.run(Counter, source="http://x/y", key="k", sink=[], state=tmp_path)
    with pytest.raises(ConfigError, match="is not an Agent"):
        actionstate.run(object(), source=RECORDS, key="k", sink=[],  # type: ignore[arg-type]
                        state=tmp_path)
    with pytest.raises(ConfigError, match="durability 'fast'"):
        actionstate.run(Counter, source=RECORDS, key="k", sink=[], state=tmp_path,
                        durability="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="stop grace -1 must be 0 or more seconds"):
        actionstate.run(Counter, source=RECORDS, key="k", sink=[], state=tmp_path,
                        stop_grace=-1)
    with pytest.raises(ConfigError, match="not callable|is not a path"):
        actionstate.run(Counter, source=RECORDS, key="k", sink=42,  # type: ignore[arg-type]
                        state=tmp_path)
    assert actionstate.run(Counter, source=RECORDS, key="k", sink=[], state=tmp_path).inputs == 30
