"""A job's totals across its runs in the checkpoint, a failed run's summary, slow rates.

The checkpoint keeps every run's counters added up (``job_stats``) and ``inspect``
shows them beside the last run's; a summary says when the run failed; a rate under
0.05 inputs/s is shown per minute or hour instead of as 0.0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actionstate.checkpoint import Checkpoint, Marker
from actionstate.durable.stats import RunStats, add_counters, rate_text
from actionstate.errors import IncompatibleStateError
from actionstate.inspection import describe_state, render_text
from actionstate.runners.statedir import StateDir
from actionstate.testing import FakeLLMServer
from actionstate.testing.cli import actionstate
from actionstate.testing.recovery import Job, run_of
from tests.agents.recovery import STEPS

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


@pytest.mark.slow
def test_inspect_shows_the_job_s_totals_across_a_crash_a_resume_and_a_no_op_rerun(
        tmp_path: Path) -> None:
    """A run killed (-9) while a model call is held, after a checkpoint taken since the
    call was sent; the resumed run to the end; a rerun with nothing left to do. After
    each, ``inspect`` (text and --json) shows as the job's executed calls exactly the
    requests the model received from all runs (a call counts as executed when it is
    sent: the held one twice, since the killed run never got its answer), and the
    no-op rerun's zeros do not replace the totals."""
    items = [{"id": f"s{i:02d}", "key": f"k{i % 4}", "calls": 2} for i in range(16)]
    held = "s05 call 2"  # one input at a time: s00-s04 and s05's first call before it

    def inspect(job_totals: dict[str, int], last_run: dict[str, int]) -> None:
        result = actionstate("inspect", "--state", str(tmp_path / "state"), "--json")
        assert result.returncode == 0, result.stderr
        checkpoint = json.loads(result.stdout)["checkpoint"]
        assert {k: checkpoint["job_stats"][k] for k in job_totals} == job_totals
        assert {k: checkpoint["stats"][k] for k in last_run} == last_run
        text = actionstate("inspect", "--state", str(tmp_path / "state")).stdout
        assert (f"the job so far (every run, each up to its last checkpoint): "
                f"{job_totals['inputs']} inputs, {job_totals['outputs']} outputs; durable "
                f"calls {job_totals['calls_executed']} executed, "
                f"{job_totals['calls_replayed']} replayed (not paid again)") in text, text

    with FakeLLMServer() as server:
        def sent(*runs: int) -> int:
            """The model requests of ``runs``."""
            return sum(1 for request in server.requests if run_of(request) in runs)

        job = Job(tmp_path, STEPS, server, items, concurrency=1)
        job.kill_during(held)
        assert sent(0) == 5 * 2 + 2
        inspect({"inputs": 5, "outputs": 5, "calls_executed": sent(0), "calls_replayed": 0},
                {"inputs": 5, "calls_executed": sent(0)})
        job.finish()  # resumes: replays s05's first call, sends its second again
        assert sent(1) == 11 * 2 - 1
        totals = {"inputs": 16, "outputs": 16, "calls_executed": sent(0, 1),
                  "calls_replayed": 1}
        inspect(totals, {"inputs": 11, "calls_executed": sent(1), "calls_replayed": 1})
        assert server.calls[held] == 2 and len(server.calls) == 32 == sent(0, 1) - 1
        job.finish()  # the job is complete: nothing to do
        assert sent(2) == 0
        inspect(totals, {"inputs": 0, "calls_executed": 0, "calls_replayed": 0})
