"""``actionstate demo``: run the demo agent, SIGKILL it mid-run, resume, and report."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from actionstate.runners.statedir import StateDir

__all__ = ["run_demo"]

NOTES = ["please refund, it arrived broken", "where is my parcel?", "charged twice, refund",
         "login error on checkout", "love it", "wrong size, refund please"]


def run_demo(directory: str | None, inputs: int) -> int:
    """Run the demo in ``directory`` (a new temp dir if None); returns an exit code."""
    work = Path(directory or tempfile.mkdtemp(prefix="actionstate-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    orders, output, state = work / "orders.jsonl", work / "outcomes.jsonl", work / "state"
    rng = random.Random(42)
    with open(orders, "w", encoding="utf-8") as f:
        for i in range(inputs):
            f.write(json.dumps({"order_id": f"o{i:05d}", "customer": f"c{rng.randrange(20)}",
                                "note": rng.choice(NOTES),
                                "amount": round(rng.uniform(5, 200), 2)}) + "\n")
    command = [sys.executable, "-m", "actionstate", "run", "actionstate.demo.agent:OrderDesk",
               "--input", str(orders), "--key", "customer", "--state", str(state),
               "--output", str(output), "--checkpoint-interval", "0.2", "--quiet"]
    env = dict(os.environ, ACTIONSTATE_DEMO_DIR=str(work))
    print(f"demo in {work}: {inputs} orders, agent actionstate.demo.agent:OrderDesk")
    first = subprocess.Popen(command, env=env)
    killed = _kill_when(first, output, inputs // 3)
    print("first run: " + ("killed with SIGKILL mid-run" if killed else "finished before kill"))
    second = subprocess.run(command, env=env, check=False)
    if second.returncode != 0:
        print(f"resumed run failed with exit code {second.returncode}", file=sys.stderr)
        return second.returncode
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    ids = Counter(line["order_id"] for line in lines)
    calls = [json.loads(line) for line in (work / "calls.jsonl").read_text().splitlines()]
    executed = Counter(call["call_id"] for call in calls)
    checkpoint = StateDir(state).load_checkpoint()
    assert checkpoint is not None, "the resumed run finished, so it wrote a checkpoint"
    rows = [
        ("inputs", inputs),
        ("outputs", len(lines)),
        ("duplicate outputs", sum(n - 1 for n in ids.values())),
        ("missing outputs", inputs - len(ids)),
        ("calls executed (both runs)", len(calls)),
        ("calls replayed (resumed run)", checkpoint.stats["calls_replayed"]),
        ("calls executed twice", sum(1 for n in executed.values() if n > 1)),
        ("refunds executed twice", sum(1 for c, n in executed.items() if n > 1 and any(
            x["call_id"] == c and x["kind"] == "refund" for x in calls))),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>6}")
    print("\ncalls executed twice can only be model calls in flight at the kill "
          "(at most one per key); refunds have a reconciler and never repeat.")
    if not killed:
        print("the first run finished before it could be killed, so nothing was shown: "
              "run the demo again with more --inputs", file=sys.stderr)
    ok = killed and len(lines) == inputs and len(ids) == inputs
    return 0 if ok else 1


def _kill_when(process: subprocess.Popen[bytes], output: Path, lines: int) -> bool:
    """SIGKILL ``process`` once ``output`` has ``lines`` lines; False if it ended first."""
    while process.poll() is None:
        if output.exists() and output.read_bytes().count(b"\n") >= lines:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        try:
            process.wait(timeout=0.01)
        except subprocess.TimeoutExpired:
            pass
    return False
