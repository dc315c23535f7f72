"""The event log read back into classes, with replayed flags; inspect; the demo."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest

from actionstate import Agent, Event, InputEvent, OutputEvent, RunnerContext, action
from actionstate.eventlog import EventLogger, read_event_log
from actionstate.inspection import describe_state, render_text
from actionstate.testing.cli import actionstate, run_args, write_lines
from actionstate.testing.restart import Crash, Restartable
from tests.agents.counter import AGENT, input_line


class Noted(Event):
    text: str


class Noter(Agent):
    def __init__(self, crash: bool) -> None:
        self.crash = crash

    @action(InputEvent)
    def note(self, event: InputEvent, ctx: RunnerContext) -> None:
        ctx.send_event(Noted(text=ctx.durable_execute(str.upper, event.input)))

    @action(Noted)
    def finish(self, event: Noted, ctx: RunnerContext) -> None:
        if self.crash:
            raise Crash("before the output")
        ctx.send_event(OutputEvent(output=event.text))


def test_event_log_records_read_back_into_their_classes_with_replayed_flags(
        rs: Restartable, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    rs.settings.event_log = EventLogger(path, "verbose")
    with pytest.raises(Crash, match="before the output"):
        rs.run(Noter(crash=True), "k_1", 0, "hi")
    rs.settings.event_log.close()
    assert not path.read_text(), "an input's records are written when it is done"
    rs.restart()
    rs.settings.event_log = EventLogger(path, "verbose")
    assert rs.run(Noter(crash=False), "k_1", 0, "hi") == ["HI"]
    rs.settings.event_log.close()
    records = list(read_event_log(path))
    assert [(type(r.event).__name__, r.action, r.replayed) for r in records] == [
        ("InputEvent", None, False), ("Noted", "note", True), ("OutputEvent", "finish", False),
    ], "logged once, by the run that finished the input; the recorded action replayed"
    assert records[1].event == Noted(text="HI") and records[1].key == "k_1"
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert any(r["context"]["event_type"] == "action_run" for r in raw), "verbose level"


def test_event_log_off_writes_nothing(tmp_path: Path) -> None:
    logger = EventLogger(tmp_path / "none.jsonl", "off")
    batch = logger.batch()
    batch.event(Noted(text="x"), "k", 0, None, False)
    logger.write(batch.lines)
    logger.close()
    assert not (tmp_path / "none.jsonl").exists()


def test_inspect_shows_keys_states_and_calls_of_an_interrupted_run(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(i) for i in range(5)])
    assert actionstate(*run_args(tmp_path, AGENT)).returncode == 0
    report = describe_state(tmp_path / "state")
    assert report["checkpoint"]["stats"]["calls_executed"] == 5
    assert {k["key"]: k["next_seq"] for k in report["keys"]} == {"k0": 2, "k1": 2, "k2": 1}
    assert report["keys"][0]["short_term_memory"] == {"total": 6}
    text = render_text(report)
    assert "key 'k0': next seq 2" in text
    assert 'memory: {"total": 6}' in text, "memory shows in the text view"
    assert report["checkpoint"]["time_utc"] in text and " UTC (" in text
    assert f"{report['checkpoint']['stats']['inputs']:,} inputs" in text
    assert "durable calls 5 executed, 0 replayed (not paid again)" in text
    one = actionstate("inspect", "--state", str(tmp_path / "state"), "--key", "k1", "--json")
    assert one.returncode == 0
    assert [k["key"] for k in json.loads(one.stdout)["keys"]] == ["k1"]


def test_demo_kills_its_first_run_mid_chain_and_shows_what_replay_saved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs, customers = 150, 20  # the demo spreads its orders over 20 customers
    monkeypatch.setenv("ACTIONSTATE_DEMO_LATENCY", "0.05")
    result = actionstate("demo", "--dir", str(tmp_path), "--inputs", str(inputs))
    assert result.returncode == 0, result.stderr
    assert "first run: killed with SIGKILL mid-run" in result.stdout, (
        f"the demo must kill its first run, else it shows nothing:\n{result.stdout}")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["outputs"] == inputs and report["duplicate_outputs"] == 0
    assert report["missing_outputs"] == 0
    assert report["paid_twice"] == [0, 0], "no call recorded before the kill is paid again"
    assert report["refunds_twice"] == 0
    assert report["replayed"][0] > 0 and report["replayed"][1] > 0
    for line in ("paid by the killed run", "replayed by the resumed run: saved",
                 "paid twice: recorded before the kill", "in flight at the kill",
                 "refunds issued twice"):
        assert line in result.stdout
    # The report agrees with the files the demo left behind.
    outcomes = [json.loads(line) for line in (tmp_path / "outcomes.jsonl").read_text().splitlines()]
    orders = [json.loads(line) for line in (tmp_path / "orders.jsonl").read_text().splitlines()]
    assert sorted(o["order_id"] for o in outcomes) == sorted(o["order_id"] for o in orders)
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    refunds = sum("refund" in outcome for outcome in outcomes)
    assert len({c["call_id"] for c in calls}) == 2 * inputs + refunds, "every call ran"
    assert len(calls) == report["calls"] == report["killed_run_paid"][0] + report[
        "resumed_run_paid"][0]
    assert len(calls) - (2 * inputs + refunds) == report["in_flight_at_kill"][0], (
        "every call that ran twice was in flight at the kill")
    issued = Counter(c["call_id"] for c in calls if c["kind"] == "refund")
    assert set(issued.values()) == {1}, "no refund issued twice"
    # Mid-chain orders, counted from the resumed run's event log (not from the store
    # the demo read at the kill): the first action replayed, the second one run.
    runs: dict[tuple[str, int], dict[str, bool]] = {}
    for line in (tmp_path / "events.jsonl").read_text().splitlines():
        context = json.loads(line)["context"]
        if context["event_type"] == "action_run":
            runs.setdefault((context["key"], context["seq"]), {})[
                context["action"]] = context["replayed"]
    mid_chain = sum(1 for actions in runs.values()
                    if actions["assess_order"] and not actions["settle"])
    assert 0 < report["mid_chain"] == mid_chain <= customers
    assert f"{mid_chain} orders were mid-chain at the kill" in result.stdout


def test_records_logged_from_many_threads_stay_whole_lines(tmp_path: Path) -> None:
    """``def`` actions log their retries from pool threads while the loop logs events
    (into an input's batch), and inputs are written from several threads."""
    from actionstate.records.state import StateKey

    logger = EventLogger(tmp_path / "events.jsonl")
    note = "é" * 300  # multi-byte text: a torn write shows as invalid UTF-8 or JSON
    batch = logger.batch()

    def retries(worker: int) -> None:
        for i in range(300):
            batch.retry(StateKey(f"k{worker}", i, "act", "e"), 0, "f", 1,
                        RuntimeError(note), 0.0)
            single = logger.batch()
            single.event(InputEvent(input={"i": i, "note": note}), f"w{worker}", i, None, False)
            logger.write(single.lines)

    threads = [threading.Thread(target=retries, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for i in range(600):
        batch.event(InputEvent(input={"i": i, "note": note}), "k", i, None, False)
    for thread in threads:
        thread.join()
    logger.write(batch.lines)
    logger.close()
    lines = (tmp_path / "events.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6 * 300 * 2 + 600
    assert all(isinstance(json.loads(line), dict) for line in lines)


def test_a_restore_cuts_the_log_back_unless_it_was_rotated(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "events.jsonl"
    logger = EventLogger(path)
    first = logger.batch()
    first.event(Noted(text="kept"), "k", 0, None, False)
    logger.write(first.lines)
    state = logger.prepare()
    later = logger.batch()
    later.event(Noted(text="lost with the crash"), "k", 1, None, False)
    logger.write(later.lines)
    logger.close()

    resumed = EventLogger(path)
    resumed.restore(state)
    resumed.close()
    assert [r.event for r in read_event_log(path)] == [Noted(text="kept")]

    path.write_text("")  # rotated by the user
    rotated = EventLogger(path)
    rotated.restore(state)
    again = rotated.batch()
    again.event(Noted(text="after rotation"), "k", 1, None, False)
    rotated.write(again.lines)
    rotated.close()
    assert [r.event for r in read_event_log(path)] == [Noted(text="after rotation")]
    assert "shorter" in caplog.text and str(path) in caplog.text
