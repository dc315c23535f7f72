"""A stop signal that lands while the final checkpoint is written does not lose it.

The run keeps its stop handlers until the final checkpoint is written: a SIGTERM or
Ctrl-C that arrives meanwhile finds nothing left to stop, and the checkpoint is
written whole. (With the handlers removed first, Ctrl-C raised KeyboardInterrupt in
the middle of it and SIGTERM killed the process: the state dir kept the first
checkpoint, and the rerun started the job over.) The signal is sent by the output
file's sink from inside the final checkpoint (tests/agents/late_signal.py): no timing.

The stopped case also checks that a stop starts no input read ahead: one input at a
time, the workers of other keys waiting for the slot used to start theirs after it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from actionstate.runners.statedir import StateDir
from tests.agents import late_signal

SCRIPT = late_signal.__file__
INPUTS = 12


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SCRIPT, str(folder), *args], capture_output=True,
                          text=True, env=dict(os.environ), timeout=120, check=False)


def _ids(path: Path) -> list[int]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("sig", "stop_at"), [
    (signal.SIGINT, None), (signal.SIGTERM, None),
    (signal.SIGINT, 4),  # SIGTERM stops the run at input 4; Ctrl-C lands in its checkpoint
], ids=["ctrl-c", "sigterm", "ctrl-c after a stop"])
def test_a_signal_during_the_final_checkpoint_leaves_it_written_and_the_rerun_resumes(
        tmp_path: Path, sig: signal.Signals, stop_at: int | None) -> None:
    (tmp_path / "in.jsonl").write_text("".join(
        json.dumps({"id": n, "k": f"k{n % 3}"}) + "\n" for n in range(INPUTS)))
    first = _run(tmp_path, sig.name, *([] if stop_at is None else [str(stop_at)]))
    outputs = _ids(tmp_path / "out.jsonl")
    if stop_at is None:
        assert sorted(outputs) == list(range(INPUTS))
    else:
        # One input at a time, in order: the stop's input finishes, and the inputs read
        # ahead (of other keys, waiting for the one slot) do not start once stopped.
        assert sorted(outputs) == list(range(stop_at + 1)), outputs
    final = StateDir(tmp_path / "state").load_checkpoint()
    assert final is not None
    assert final.sink["offset"] == (tmp_path / "out.jsonl").stat().st_size, (
        "the final checkpoint, not the first one, holds every output written")
    assert final.stats["outputs"] == final.stats["inputs"] == len(outputs)
    assert final.source["line"] == len(outputs) + len(final.pending)
    assert first.returncode == 0, (first.returncode, first.stderr)
    assert "Traceback" not in first.stderr, first.stderr
    ran = json.loads(first.stdout)
    assert ran["prepares"] == 2, "the signal was sent from the final checkpoint"
    assert ran["stopped_by"] == (None if stop_at is None else "SIGTERM")
    assert ran["outputs"] == len(outputs)

    rerun = _run(tmp_path, "-")
    assert rerun.returncode == 0, rerun.stderr
    again = json.loads(rerun.stdout)
    assert again["inputs"] == INPUTS - len(outputs), "the rerun read on from the final one"
    assert again["calls_replayed"] == 0, "nothing recorded was in flight"
    assert sorted(_ids(tmp_path / "out.jsonl")) == list(range(INPUTS)), "each output once"
    calls = [int(n) for n in (tmp_path / late_signal.CALLS).read_text().split()]
    assert sorted(calls) == list(range(INPUTS)), "no call ran twice"
