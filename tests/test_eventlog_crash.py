"""The event log across kill -9: every input's events once, replays flagged.

The triage run is SIGKILLed at random call counts and once at a random time, then
resumed to the end, with ``--event-log`` at the verbose level. The log must hold each input's events
exactly once (as the output file holds each output once). With the SQLite store,
events that actions recorded before a kill sent again are ``replayed``; with
``memory://`` (the control) nothing was recorded, so nothing is replayed.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from actionstate.eventlog import read_event_log
from actionstate.loader import load_agent_class
from actionstate.testing.crash import TRIAGE, Streams, labels, make_tickets, run_to_end
from actionstate.testing.fake_llm import FakeLLMServer

TICKETS, CUSTOMERS = 120, 12


@pytest.mark.parametrize(("store", "seed"), [(None, 1), (None, 2), ("memory://", 1)])
def test_event_log_after_kills_holds_every_event_once(tmp_path: Path, store: str | None,
                                                      seed: int) -> None:
    make_tickets(tmp_path / "tickets.jsonl", TICKETS, CUSTOMERS)
    log = tmp_path / "events.jsonl"
    # Checkpoints 0.5 s apart: inputs finish after the last one before a kill, and are
    # redone (their recorded actions replayed) by the next run.
    streams = Streams(str(tmp_path / "tickets.jsonl"), str(tmp_path / "labels.jsonl"),
                      extra=("--event-log", str(log), "--event-log-level", "verbose",
                             "--checkpoint-interval", "0.5"))
    rng = random.Random(seed)
    with FakeLLMServer(latency=0.02) as server:
        kills = run_to_end(tmp_path, server, store, "sync",
                           sorted(rng.sample(range(5, TICKETS - 5), 3)),
                           [rng.uniform(0.1, 0.8)], streams)
    assert kills >= 3

    load_agent_class(f"{TRIAGE}:Triage")  # its module defines the events to read back
    records = list(read_event_log(log))
    inputs = Counter(r.event.input["id"] for r in records  # type: ignore[attr-defined]
                     if type(r.event).__name__ == "InputEvent")
    outputs = Counter(r.event.output["id"] for r in records  # type: ignore[attr-defined]
                      if type(r.event).__name__ == "OutputEvent")
    expected = Counter(f"T{i}" for i in range(TICKETS))
    assert inputs == expected, "every input logged once"
    assert outputs == expected, "every output logged once"
    assert outputs.keys() == {row["id"] for row in labels(tmp_path)}
    raw = [json.loads(line)["context"] for line in log.read_text().splitlines()]
    seen = Counter((c["key"], c["seq"], c["event_type"], c["action"]) for c in raw)
    assert max(seen.values()) == 1, "no event logged twice"
    # Verbose: an action_run record per action says whether it was replayed; each event
    # is replayed exactly when the action that sent it was.
    actions = {(c["key"], c["seq"], c["action"]): c["replayed"] for c in raw
               if c["event_type"] == "action_run"}
    assert len(actions) == 2 * TICKETS, "classify and act, once per input"
    for r in records:
        sent_by = r.action and actions[(r.key, r.seq, r.action)]
        assert r.replayed == bool(sent_by), (r.key, r.seq, r.action, r.replayed)
    replayed = sum(r.replayed for r in records)
    if store is None:
        assert replayed > 0, "actions recorded before a kill are replayed, and say so"
    else:
        assert replayed == 0, "memory:// records nothing: nothing is replayed"
