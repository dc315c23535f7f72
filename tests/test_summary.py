"""``actionstate run --summary``: counts checked against what the model server saw.

An uninterrupted run's summary must match the fake model server's own counts
exactly (calls, prompt tokens). After kill -9 and a resume, the resumed run's
summary shows the recorded calls and tokens it replayed instead of paying again,
each count exact: executed = the model server's requests during that run less
the failed attempts, retried = the failed attempts, replayed = the calls the
store held at the kill, and executed + replayed + reconciled = the job's calls;
``memory://`` (the control) recorded nothing and replays nothing. A refund
killed between its PENDING record and the side effect is reconciled, and
counted so.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from actionstate.inspection import describe_state, render_text
from actionstate.loader import load_agent_class
from actionstate.testing.crash import (
    TRIAGE,
    Streams,
    command,
    killed_run,
    ledger,
    make_tickets,
    run_to_end,
)
from actionstate.testing.fake_llm import FakeLLMServer

TICKETS, CUSTOMERS = 60, 6


def _streams(tmp: Path, summary: Path) -> Streams:
    return Streams(str(tmp / "tickets.jsonl"), str(tmp / "labels.jsonl"),
                   extra=("--summary", str(summary), "--checkpoint-interval", "0.5"))


def test_the_summary_of_a_run_matches_the_model_server_s_counts(tmp_path: Path) -> None:
    make_tickets(tmp_path / "tickets.jsonl", TICKETS, CUSTOMERS)
    summary = tmp_path / "summary.json"
    with FakeLLMServer() as server:
        assert run_to_end(tmp_path, server, None, "sync", [], [],
                          _streams(tmp_path, summary)) == 0
        calls = dict(server.calls)
    found = json.loads(summary.read_text())
    refunds = sum(ledger(tmp_path).values())
    assert found["complete"] is True and found["resumed_at"] is None
    assert found["inputs"] == found["outputs"] == TICKETS
    assert found["calls"]["executed"] == sum(calls.values()) + refunds
    assert found["calls"]["replayed"] == 0
    assert found["tokens"]["executed"]["prompt"] == sum(
        len(prompt.split()) * n for prompt, n in calls.items())
    assert found["tokens"]["executed"]["completion"] > 0
    assert found["tokens"]["replayed"] == {"prompt": 0, "completion": 0}


@pytest.mark.parametrize("store", [None, "memory://"])
def test_a_resumed_run_s_summary_shows_what_replay_saved(tmp_path: Path,
                                                         store: str | None) -> None:
    """Two kills, then a run to the end whose first three model calls fail once
    (HTTP 500). No checkpoint but the first (--checkpoint-interval 600): every
    run takes up every input, so the last one serves each call of the job once, from
    the store or by running it."""
    make_tickets(tmp_path / "tickets.jsonl", TICKETS, CUSTOMERS)
    summary = tmp_path / "summary.json"
    streams = Streams(str(tmp_path / "tickets.jsonl"), str(tmp_path / "labels.jsonl"),
                      extra=("--summary", str(summary), "--checkpoint-interval", "600",
                             "--retry-wait-interval", "0.01",
                             *(("--store", store) if store else ())))
    rng = random.Random(3)
    failed: set[str] = set()

    def fail_once(prompt: str, _: int) -> tuple[int, None] | None:
        if len(failed) < 3 and prompt not in failed:
            failed.add(prompt)
            return 500, None
        return None

    with FakeLLMServer(latency=0.02) as server:
        for at_calls in sorted(rng.sample(range(5, TICKETS - 5), 2)):
            killed_run(tmp_path, server, at_calls, streams)
        while any(r.answered is None for r in server.requests):
            time.sleep(0.005)  # a killed run's requests still being answered call fail too
        before, refunded = server.total_calls, sum(ledger(tmp_path).values())
        recorded = _recorded(tmp_path / "state") if store is None else Counter[str]()
        server.fail = fail_once
        assert run_to_end(tmp_path, server, store, "sync", [], [], streams) == 0
        model_calls = server.total_calls - before
    refunds = ledger(tmp_path)
    assert max(refunds.values()) == 1 or store == "memory://", "no refund twice"
    found = json.loads(summary.read_text())  # the last run's: the one that finished
    assert found["complete"] is True and found["resumed_at"] is not None
    reply, refund = "actionstate.llm.OpenAIModel.reply", "triage.issue_refund"
    functions = found["functions"]
    calls = found["calls"]
    # Each model call that ran: one request, and one more for each failed attempt.
    assert functions[reply]["executed"] == model_calls - len(failed)
    assert functions[reply]["retried"] == calls["retried"] == len(failed) == 3
    assert functions[reply]["replayed"] == recorded[reply]
    assert functions.get(refund, {}).get("replayed", 0) == recorded[refund]
    assert calls["executed"] == sum(f["executed"] for f in functions.values())
    # A refund the run issued: run, or reconciled and not found (in flight at a kill).
    issued = sum(refunds.values()) - refunded
    ran = functions.get(refund, {}).get("executed", 0)
    assert ran <= issued <= ran + calls["reconciled"]
    assert calls["executed"] + calls["replayed"] + calls["reconciled"] == (
        TICKETS + len(refunds)), "every call of the job, once"
    replayed = found["tokens"]["replayed"]
    if store is None:
        assert calls["replayed"] == sum(recorded.values()) > 0
        assert replayed["prompt"] > 0 and replayed["completion"] > 0, "tokens not paid twice"
    else:
        assert calls["replayed"] == 0 and model_calls == TICKETS + len(failed)
        assert replayed == {"prompt": 0, "completion": 0}, "memory:// replays nothing"
    if store is None:  # inspect shows the same saving, from the last checkpoint's counters
        report = describe_state(tmp_path / "state")
        kept = report["checkpoint"]["summary"]  # inspect --json: the final checkpoint's
        assert kept["functions"] == found["functions"] and kept["calls"] == found["calls"]
        assert set(kept["latency"]) == set(found["latency"])
        text = render_text(report)
        executed = found["tokens"]["executed"]
        assert (f"model tokens {executed['prompt'] + executed['completion']:,} paid, "
                f"{replayed['prompt'] + replayed['completion']:,} replayed (saved)") in text
        assert f"{found['calls']['replayed']:,} replayed (not paid again)" in text


def _recorded(state: Path) -> Counter[str]:
    """The calls with a recorded result the killed run left, by function."""
    from actionstate.inspection import held_states
    from actionstate.loader import load_agent_class
    from actionstate.records.state import CallStatus

    load_agent_class(f"{TRIAGE}:Triage")  # the store holds its Classified events
    return Counter(call.function_id for _, s in held_states(state)
                   for call in s.calls.values() if call.status is not CallStatus.PENDING)


def test_a_refund_in_flight_at_a_kill_is_reconciled_not_run_again(tmp_path: Path) -> None:
    """The ledger is a FIFO no one reads: a refund's PENDING record is written, then
    the refund blocks opening the ledger until the run is killed. The next run (a
    real ledger) reconciles exactly those refunds: none was issued, so each
    reconciler issues it; the rest run."""
    make_tickets(tmp_path / "tickets.jsonl", TICKETS, CUSTOMERS)
    fifo = tmp_path / "ledger.fifo"
    os.mkfifo(fifo)
    summary = tmp_path / "summary.json"
    streams = Streams(str(tmp_path / "tickets.jsonl"), str(tmp_path / "labels.jsonl"),
                      extra=("--summary", str(summary), "--checkpoint-interval", "600"))
    load_agent_class(f"{TRIAGE}:Triage")
    with FakeLLMServer() as server:
        env = dict(os.environ, ACTIONSTATE_MODEL_BASE_URL=server.base_url,
                   ACTIONSTATE_REFUND_LEDGER=str(fifo))
        proc = subprocess.Popen(command(tmp_path, None, "sync", streams), env=env)
        try:
            while proc.poll() is None and not _pending(tmp_path / "state"):
                try:  # until a refund's PENDING record is written (it then blocks)
                    proc.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            proc.kill()
            proc.wait()
        pending = _pending(tmp_path / "state")  # what the kill left
        assert pending > 0
        before = server.total_calls
        assert run_to_end(tmp_path, server, None, "sync", [], [], streams) == 0
        model_calls = server.total_calls - before
    found = json.loads(summary.read_text())
    refund = found["functions"]["triage.issue_refund"]
    refunds = ledger(tmp_path)
    assert max(refunds.values()) == 1
    assert found["calls"]["reconciled"] == refund["reconciled"] == pending
    assert refund["executed"] + pending == sum(refunds.values()), (
        "the FIFO took no refund: each reconciler issued its refund once")
    assert found["functions"]["actionstate.llm.OpenAIModel.reply"]["executed"] == model_calls
    assert found["calls"]["executed"] == model_calls + refund["executed"]


def _pending(state: Path) -> int:
    """Calls recorded as PENDING (a reconciled call started) in the state dir's store."""
    from actionstate.inspection import held_states
    from actionstate.records.state import CallStatus

    if not (state / "checkpoint.db").exists():
        return 0
    return sum(call.status is CallStatus.PENDING for _, s in held_states(state)
               for call in s.calls.values())
