"""``actionstate demo``: run the demo agent, SIGKILL it mid-run, resume, and report."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["run_demo"]

NOTES = ["please refund, it arrived broken", "where is my parcel?", "charged twice, refund",
         "login error on checkout", "love it", "wrong size, refund please"]


def run_demo(directory: str | None, inputs: int) -> int:
    """Run the demo in ``directory`` (a new temp dir if None); returns an exit code."""
    work = Path(directory or tempfile.mkdtemp(prefix="actionstate-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    orders, output, state = work / "orders.jsonl", work / "outcomes.jsonl", work / "state"
    for name in ("calls.jsonl", "summary.json", "report.json", "events.jsonl", output.name):
        (work / name).unlink(missing_ok=True)  # a demo run before, in the same dir
    shutil.rmtree(state, ignore_errors=True)
    rng = random.Random(42)
    with open(orders, "w", encoding="utf-8") as f:
        for i in range(inputs):
            f.write(json.dumps({"order_id": f"o{i:05d}", "customer": f"c{rng.randrange(20)}",
                                "note": rng.choice(NOTES),
                                "amount": round(rng.uniform(5, 200), 2)}) + "\n")
    command = [sys.executable, "-m", "actionstate", "run", "actionstate.demo.agent:OrderDesk",
               "--input", str(orders), "--key", "customer", "--state", str(state),
               "--output", str(output), "--checkpoint-interval", "0.5", "--quiet",
               "--summary", str(work / "summary.json"), "--event-log", str(work / "events.jsonl"),
               "--event-log-level", "verbose"]
    env = dict(os.environ, ACTIONSTATE_DEMO_DIR=str(work))
    latency = env.setdefault("ACTIONSTATE_DEMO_LATENCY", "0.2")
    print(f"demo in {work}: {inputs} orders of 20 customers; agent "
          f"actionstate.demo.agent:OrderDesk: per order a model call, a refund when due, "
          f"and a model call drafting the reply; the model answers in {latency} s on average")
    first = subprocess.Popen(command, env=env)
    killed = _kill_when(first, output, work / "calls.jsonl", inputs // 3)
    written = output.read_text().count("\n") if output.exists() else 0
    paid_first = _calls(work)
    at_kill = _at_kill(work, state)
    print("first run: " + (f"killed with SIGKILL mid-run, after {written} of {inputs} "
                           "outputs" if killed else "finished before the kill"))
    second = subprocess.run(command, env=env, check=False)
    if second.returncode != 0:
        print(f"resumed run failed with exit code {second.returncode}", file=sys.stderr)
        return second.returncode
    report = _report(work, inputs, paid_first, at_kill, killed)
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"resumed run: finished (resumed at {report['resumed_at']}); "
          f"{report['mid_chain']} orders were mid-chain at the kill (first action done, "
          "second not)\n")
    rows = [("", "calls", "tokens"),
            ("paid by the killed run", *report["killed_run_paid"]),
            ("replayed by the resumed run: saved", *report["replayed"]),
            ("paid by the resumed run", *report["resumed_run_paid"]),
            ("  paid twice: recorded before the kill", *report["paid_twice"]),
            ("  paid again: in flight at the kill", *report["in_flight_at_kill"]),
            ("    (answered, not yet recorded)", "", ""),
            ("refunds issued twice", report["refunds_twice"], "")]
    for name, calls, tokens in rows:
        print(f"  {name:<40} {_n(calls):>7} {_n(tokens):>8}".rstrip())
    print(f"\n  outputs: {report['outputs']} of {inputs}, {report['duplicate_outputs']} "
          f"duplicates, {report['missing_outputs']} missing")
    print("\nNo call whose result was recorded is paid again. A call is paid again only "
          "if the kill fell between its answer and its record; refunds have a reconciler "
          "and are never issued twice.")
    if not killed:
        print("the first run finished before it could be killed, so nothing was shown: "
              "run the demo again with more --inputs", file=sys.stderr)
    ok = (killed and report["outputs"] == inputs and report["duplicate_outputs"] == 0
          and report["paid_twice"][0] == 0 and report["refunds_twice"] == 0)
    return 0 if ok else 1


def _n(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _calls(work: Path) -> list[dict[str, Any]]:
    path = work / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _at_kill(work: Path, state: Path) -> dict[str, Any]:
    """What the killed run left: the ids of the calls whose results were recorded
    (the store's states after the last checkpoint, plus every call of an order whose
    output was written, so done before it), and the orders mid-chain: first action
    completed, second not."""
    import actionstate.demo.agent  # noqa: F401 - the store holds its Assessed events
    from actionstate.inspection import held_states
    from actionstate.records.state import CallStatus

    held = held_states(state)
    recorded = {call.result["id"] for _, s in held for call in s.calls.values()
                if call.status is CallStatus.SUCCEEDED and isinstance(call.result, dict)
                and "id" in call.result}
    path = work / "outcomes.jsonl"
    done = {json.loads(line)["order_id"] for line in
            (path.read_text().splitlines() if path.exists() else [])}
    recorded |= {c["call_id"] for c in _calls(work) if c["order_id"] in done}
    started = {(sk.key, sk.seq) for sk, s in held if sk.action == "assess_order" and s.completed}
    settled = {(sk.key, sk.seq) for sk, s in held if sk.action == "settle" and s.completed}
    return {"recorded": recorded, "mid_chain": len(started - settled)}


def _report(work: Path, inputs: int, paid_first: list[dict[str, Any]],
            at_kill: dict[str, Any], killed: bool) -> dict[str, Any]:
    """What the demo shows, from its files: the outputs, every call that really ran
    (calls.jsonl), what the store held at the kill and the resumed run's summary."""
    lines = [json.loads(line) for line in (work / "outcomes.jsonl").read_text().splitlines()]
    ids = Counter(line["order_id"] for line in lines)
    calls = _calls(work)
    runs = Counter(call["call_id"] for call in calls)
    again = [c for c in calls[len(paid_first):] if runs[c["call_id"]] > 1]
    twice = [c for c in again if c["call_id"] in at_kill["recorded"]]
    in_flight = [c for c in again if c["call_id"] not in at_kill["recorded"]]
    summary = json.loads((work / "summary.json").read_text())
    replayed = summary["tokens"]["replayed"]
    return {
        "killed": killed, "resumed_at": summary["resumed_at"],
        "mid_chain": at_kill["mid_chain"],
        "outputs": len(lines), "duplicate_outputs": sum(n - 1 for n in ids.values()),
        "missing_outputs": inputs - len(ids),
        "killed_run_paid": [len(paid_first), sum(c["tokens"] for c in paid_first)],
        "replayed": [summary["calls"]["replayed"],
                     replayed["prompt"] + replayed["completion"]],
        "resumed_run_paid": [len(calls) - len(paid_first),
                             sum(c["tokens"] for c in calls[len(paid_first):])],
        "paid_twice": [len(twice), sum(c["tokens"] for c in twice)],
        "in_flight_at_kill": [len(in_flight), sum(c["tokens"] for c in in_flight)],
        "refunds_twice": sum(n - 1 for call_id, n in runs.items() if n > 1 and any(
            c["call_id"] == call_id and c["kind"] == "refund" for c in calls)),
        "calls": len(calls),
    }


def _kill_when(process: subprocess.Popen[bytes], output: Path, calls: Path, lines: int,
               calls_after: int = 20) -> bool:
    """SIGKILL ``process`` once ``output`` has ``lines`` lines and ``calls_after`` calls
    have been answered (logged to ``calls``) since the output last grew; False if it
    ended first. Outputs reach the file when the run flushes them, at a checkpoint: a
    kill right then would find nothing recorded since, so it waits for calls after it."""
    size, answered = -1, 0
    while process.poll() is None:
        now = output.stat().st_size if output.exists() else 0
        count = calls.read_bytes().count(b"\n") if calls.exists() else 0
        if now != size:
            size, answered = now, count
        elif (count - answered >= calls_after
              and output.read_bytes().count(b"\n") >= lines):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        try:
            process.wait(timeout=0.01)
        except subprocess.TimeoutExpired:
            pass
    return False
