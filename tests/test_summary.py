"""``actionstate run --summary``: counts checked against what the model server saw.

An uninterrupted run's summary must match the fake model server's own counts
exactly (calls, prompt tokens). After kill -9 and a resume, the resumed run's
summary shows the recorded calls and tokens it replayed instead of paying again;
``memory://`` (the control) recorded nothing and replays nothing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from actionstate.inspection import describe_state, render_text
from actionstate.testing.crash import Streams, ledger, make_tickets, run_to_end
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
    make_tickets(tmp_path / "tickets.jsonl", TICKETS, CUSTOMERS)
    summary = tmp_path / "summary.json"
    rng = random.Random(3)
    with FakeLLMServer(latency=0.02) as server:
        kills = run_to_end(tmp_path, server, store, "sync",
                           sorted(rng.sample(range(5, TICKETS - 5), 2)), [],
                           _streams(tmp_path, summary))
    assert kills >= 2
    found = json.loads(summary.read_text())  # the last run's: the one that finished
    assert found["complete"] is True and found["resumed_at"] is not None
    replayed = found["tokens"]["replayed"]
    if store is None:
        assert found["calls"]["replayed"] > 0
        assert replayed["prompt"] > 0 and replayed["completion"] > 0, "tokens not paid twice"
    else:
        assert found["calls"]["replayed"] == 0
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
