"""A job's totals across its runs in the checkpoint, a failed run's summary, slow rates.

The parts of these that live outside ``cli.py`` and ``runners/local.py``: the
checkpoint keeps every run's counters (``job_stats``) and ``inspect`` shows them
beside the last run's; a summary says when the run failed; a rate under 0.05
inputs/s is shown per minute or hour instead of as 0.0.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actionstate.checkpoint import Checkpoint, Marker
from actionstate.durable.stats import RunStats, add_counters, rate_text
from actionstate.errors import IncompatibleStateError
from actionstate.inspection import describe_state, render_text
from actionstate.runners.statedir import StateDir

_FILE_IN = {"path": "in", "offset": 0, "line": 0}
_FILE_OUT = {"path": "out", "offset": 0}


def _checkpoint(stats: RunStats, job_stats: dict[str, int]) -> Checkpoint:
    return Checkpoint(job="j", marker=Marker("ns", {0: 0}, {0: 0}), store="memory://",
                      source=_FILE_IN, sink=_FILE_OUT, stats=stats.counters(),
                      job_stats=job_stats)


def test_the_checkpoint_keeps_the_job_s_totals_and_inspect_shows_them(tmp_path: Path) -> None:
    first = RunStats(inputs=7, outputs=7, calls_executed=12, prompt_tokens_executed=300)
    resumed = RunStats(inputs=3, outputs=3, calls_executed=2, calls_replayed=4,
                       prompt_tokens_replayed=80)
    job = add_counters(first.counters(), resumed.counters())
    assert job["inputs"] == 10 and job["calls_executed"] == 14 and job["calls_replayed"] == 4
    noop = RunStats()  # a rerun of the finished job: nothing to do
    job = add_counters(job, noop.counters())
    state = StateDir(tmp_path / "state")
    state.save_checkpoint(_checkpoint(noop, job), {}, fresh=True)
    report = describe_state(tmp_path / "state")
    assert report["checkpoint"]["stats"]["inputs"] == 0, "the last run's own"
    assert report["checkpoint"]["job_stats"] == job
    text = render_text(report)
    assert "the run that took it: 0 inputs, 0 outputs; durable calls 0 executed" in text
    assert ("the job so far (every run, each up to its last checkpoint): 10 inputs, "
            "10 outputs; durable calls 14 executed, 4 replayed (not paid again)") in text
    assert "model tokens 300 paid, 80 replayed (saved)" in text

    read = Checkpoint.from_json(_checkpoint(noop, job).to_json(), "x")
    assert read.job_totals() == job
    older = _checkpoint(first, {}).to_json()  # written before job_stats was kept
    assert "job_stats" not in older
    assert Checkpoint.from_json(older, "x").job_totals() == first.counters()
    with pytest.raises(IncompatibleStateError, match="'job_stats'"):
        Checkpoint.from_json({**older, "job_stats": {"inputs": "7"}}, "x")


def test_a_failed_run_s_summary_is_not_complete_and_says_why() -> None:
    stats = RunStats(inputs=4, calls_executed=3)
    assert stats.summary(1.0)["complete"] is True and stats.summary(1.0)["failed"] is None
    stats.failed = "ActionFailedError: key 'k' seq 3 action 'act' failed"
    summary = stats.summary(1.0)
    assert summary["complete"] is False and summary["failed"].startswith("ActionFailedError")
    assert summary["calls"]["executed"] == 3, "what it did before it failed"


@pytest.mark.parametrize(("per_second", "shown"), [
    (1234.5, "1,234.5 inputs/s"), (3.0, "3.0 inputs/s"), (0.05, "0.1 inputs/s"),
    (0.049, "2.9 inputs/min"), (0.02, "1.2 inputs/min"), (0.0005, "1.8 inputs/h"),
    (0.0, "0.0 inputs/s"),
])
def test_a_slow_rate_is_shown_per_minute_or_hour_not_as_zero(per_second: float,
                                                             shown: str) -> None:
    assert rate_text(per_second) == shown


def test_a_run_that_raises_leaves_its_counts_in_the_stats_passed_in(tmp_path: Path) -> None:
    """What ``actionstate run --summary`` needs to write a failed run's summary."""
    import json

    import actionstate
    from actionstate import ActionFailedError
    from tests.agents.orders import FAIL_ON, Orders

    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"n": n, "k": f"k{n % 3}"}) + "\n" for n in range(12)))
    stats = RunStats()
    FAIL_ON["armed"] = True
    try:
        with pytest.raises(ActionFailedError):
            actionstate.run(Orders, source=str(inputs), key="k",
                            sink=str(tmp_path / "out.jsonl"), state=tmp_path / "state",
                            concurrency=1, stats=stats)
    finally:
        FAIL_ON["armed"] = False
    summary = stats.summary(1.0)
    assert summary["complete"] is False
    assert summary["failed"].startswith("ActionFailedError: ") and "payments API" in summary[
        "failed"]
    assert summary["functions"]["tests.agents.orders.pay"]["executed"] >= 1, "7's call too"
    assert summary["calls"]["executed"] == stats.calls_executed >= 2
