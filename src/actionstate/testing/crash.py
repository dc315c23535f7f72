"""SIGKILL ``actionstate run`` of the example triage agent at random points, resume it,
and compare with an uninterrupted run.

The agent is ``examples/triage.py`` of the source checkout: its model calls go
to a :class:`~actionstate.testing.fake_llm.FakeLLMServer` (which counts them),
its refunds to a ledger file in the run's directory. :func:`crash_check` is the
whole test for one store; the other helpers are its parts, for tests that kill
the run another way.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actionstate.testing.fake_llm import FakeLLMServer
from actionstate.testing.services import CHECKOUT

__all__ = ["Streams", "command", "crash_check", "killed_run", "labels", "ledger",
           "make_tickets", "run_to_end", "with_reference"]

TRIAGE = CHECKOUT / "examples" / "triage.py"
TEXTS = ["I was charged twice, please refund", "the app shows an error", "password reset?",
         "refund please, it arrived broken", "opening hours?", "crash on startup"]


def make_tickets(path: Path, n: int, customers: int) -> None:
    """``n`` tickets (ids ``T0``...) spread over ``customers`` customers, the same every time."""
    rng = random.Random(1)
    with open(path, "w") as f:
        for i in range(n):
            text = rng.choice(TEXTS)
            f.write(json.dumps({"id": f"T{i}", "customer": f"c_{i % customers}", "text": text,
                                "amount": 10 + i % 50}) + "\n")


@dataclass(frozen=True)
class Streams:
    """Where a run reads and writes instead of ``tickets.jsonl`` and ``labels.jsonl``
    (e.g. Kafka topics): the ``--input`` and ``--output`` values, more arguments, and a
    function giving the output's records as a reader sees them."""

    input: str
    output: str
    outputs: Callable[[], list[dict[str, Any]]] | None = None
    extra: tuple[str, ...] = ()


def command(tmp: Path, store: str | None, durability: str,
            streams: Streams | None = None, agent: Path = TRIAGE) -> list[str]:
    """The triage run over ``tmp/tickets.jsonl`` into ``tmp/labels.jsonl`` (or the
    ``streams``; ``store`` None: the state dir's SQLite file); ``agent``: the
    triage agent's file (a copy elsewhere)."""
    source = streams.input if streams else str(tmp / "tickets.jsonl")
    sink = streams.output if streams else str(tmp / "labels.jsonl")
    cmd = [sys.executable, "-m", "actionstate", "run", f"{agent}:Triage",
           "--input", source, "--key", "customer", "--state",
           str(tmp / "state"), "--output", sink, "--quiet",
           "--checkpoint-interval", "0.05", "--durability", durability,
           *(streams.extra if streams else ())]
    return cmd + (["--store", store] if store else [])


def run_to_end(tmp: Path, server: FakeLLMServer, store: str | None, durability: str,
               kill_after_calls: list[int], kill_after_seconds: list[float],
               streams: Streams | None = None) -> int:
    """Run, SIGKILLing at the given call counts and times, then once to completion;
    returns how many runs were killed (a run may finish before its kill)."""
    env = dict(os.environ, ACTIONSTATE_MODEL_BASE_URL=server.base_url,
               ACTIONSTATE_REFUND_LEDGER=str(tmp / "refunds.jsonl"))
    kills = 0
    plans: list[tuple[str, float]] = ([("calls", n) for n in kill_after_calls]
                                      + [("time", t) for t in kill_after_seconds] + [("end", 0)])
    for kind, value in plans:
        with open(tmp / "stderr.txt", "w+b") as errors:
            proc = subprocess.Popen(command(tmp, store, durability, streams), env=env,
                                    stderr=errors)
            if kind == "calls":
                def kill_at(total: int, proc: subprocess.Popen[bytes] = proc,
                            value: float = value) -> None:
                    if total >= value:
                        proc.send_signal(signal.SIGKILL)
                server.on_call = kill_at
            try:
                proc.wait(timeout=value if kind == "time" else 120)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            server.on_call = None
            errors.seek(0)
            stderr = errors.read().decode()
        if proc.returncode == -signal.SIGKILL:
            kills += 1
        else:
            assert proc.returncode == 0, stderr
            assert "Traceback" not in stderr
            if kind == "end":
                return kills
    raise AssertionError("the last run did not finish")


def killed_run(tmp: Path, server: FakeLLMServer, at_calls: int,
               streams: Streams | None = None, env: dict[str, str] | None = None,
               agent: Path = TRIAGE, stderr: Path | None = None) -> None:
    """One triage run (as :func:`command`, SQLite, ``sync``), SIGKILLed once the model
    server has seen ``at_calls`` calls; ``env`` replaces ``os.environ`` as its base;
    ``stderr``: a file that keeps what the run wrote there."""
    environ = dict(os.environ if env is None else env,
                   ACTIONSTATE_MODEL_BASE_URL=server.base_url,
                   ACTIONSTATE_REFUND_LEDGER=str(tmp / "refunds.jsonl"))
    errors = open(stderr, "wb") if stderr is not None else None  # None: this process's
    try:
        proc = subprocess.Popen(command(tmp, None, "sync", streams, agent), env=environ,
                                stderr=errors)
        server.on_call = lambda total: proc.kill() if total >= at_calls else None
        assert proc.wait(timeout=120) == -signal.SIGKILL, "the run ended before its kill"
    finally:
        server.on_call = None
        if errors is not None:
            errors.close()


def labels(tmp: Path, streams: Streams | None = None) -> list[dict[str, Any]]:
    """The run's outputs by ticket id (from ``labels.jsonl``, or what the streams'
    output holds), without the run-scoped refund ids."""
    if streams is not None and streams.outputs is not None:
        rows = streams.outputs()
    else:
        rows = [json.loads(line) for line in (tmp / "labels.jsonl").read_text().splitlines()]
    for row in rows:  # refund ids come from run-scoped idempotency keys
        if "refund" in row:
            row["refund"].pop("refund_id")
    return sorted(rows, key=lambda r: str(r["id"]))


def ledger(tmp: Path) -> Counter[str]:
    """How many times each ticket was refunded."""
    path = tmp / "refunds.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(json.loads(line)["ticket_id"] for line in lines)


def with_reference(tmp: Path, name: str, n: int, customers: int) -> tuple[Path, Path, int]:
    """Directories ``tmp/reference`` and ``tmp/<name>`` holding the same ``n`` tickets;
    the reference is run to the end at once (SQLite, sync). Returns both, and how
    many model calls the reference made."""
    reference, run = tmp / "reference", tmp / name
    for d in (reference, run):
        d.mkdir()
        make_tickets(d / "tickets.jsonl", n, customers)
    with FakeLLMServer() as server:
        assert run_to_end(reference, server, None, "sync", [], []) == 0
        return reference, run, server.total_calls


def crash_check(tmp_path: Path, store: str | None, seed: int,
                streams: Callable[[Path], Streams] | None = None) -> None:
    """Kill a triage run of 240 tickets at 3 random call counts and once at a random
    time, resume it each time, and check it against an uninterrupted run: the same
    outputs, one per input, no refund twice, at most one model call per key per kill
    made again. ``streams`` (given the run's directory, holding ``tickets.jsonl``)
    moves the crashed run's input and output elsewhere (e.g. to Kafka topics)."""
    n, customers = 240, 12
    reference, crashed, expected_calls = with_reference(tmp_path, "crashed", n, customers)
    moved = streams(crashed) if streams is not None else None
    rng = random.Random(seed)
    kill_calls = sorted(rng.sample(range(10, n - 10), 3))
    with FakeLLMServer() as server:
        kills = run_to_end(crashed, server, store, "sync", kill_calls,
                           [rng.uniform(0.1, 1.0)], moved)
        calls = server.calls
    assert kills >= 3
    outputs = labels(crashed, moved)
    assert len(outputs) == n, "exactly one output per input"
    assert outputs == labels(reference), "outputs identical to an uninterrupted run"
    repeated = {prompt: count - 1 for prompt, count in calls.items() if count > 1}
    assert all(extra <= kills for extra in repeated.values())
    assert sum(repeated.values()) <= kills * customers, "at most one call per key per kill"
    assert sum(calls.values()) - expected_calls == sum(repeated.values())
    assert ledger(crashed) == ledger(reference), "refunds have a reconciler: none repeats"
    assert max(ledger(crashed).values()) == 1
