"""Issue 7: recovery keeps every recorded call, at any moment, after several crashes.

Each test drives the real command (``python -m actionstate run``) as a
subprocess, kills it with SIGKILL and runs it again, on the default SQLite
store, on Kafka and on Fluss. The agents (tests/agents/recovery.py) call a
:class:`FakeLLMServer` in this process with a prompt unique to each call, so the
server's counts show every call that ran again. Expected results come from an
uninterrupted run. The harness is :mod:`actionstate.testing.recovery`.

This module holds the scripted crashes; the random kills are in
tests/test_recovery_random.py.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from actionstate.testing import FakeLLMServer
from actionstate.testing.recovery import STORES, Job, Reference, by_id, reference, store_url
from tests.agents.recovery import FAIL_ON, STEPS, TALLY


def check_calls(calls: dict[str, int], expected: Reference, in_flight: list[str],
                hint: str = "") -> None:
    """Every call of the uninterrupted run ran once, but for each call in flight at a
    kill (``in_flight``, one entry per kill), which ran once more."""
    unexpected = sorted(set(calls) - expected.prompts)
    assert not unexpected, f"calls an uninterrupted run never makes: {unexpected}{hint}"
    allowed = Counter(expected.prompts) + Counter(in_flight)
    again = {prompt: n for prompt, n in sorted(calls.items()) if n > allowed[prompt]}
    assert not again, (f"recorded calls ran again: {again}; only {in_flight} were in "
                       "flight at a kill")
    assert calls == dict(allowed), f"calls made {calls}, not {dict(allowed)}"


# -- two crashes with one input in flight --------------------------------------------

SOLO = [{"id": "solo", "key": "k", "calls": 4}]


def two_crashes(tmp: Path, server: FakeLLMServer, store: str | None) -> Job:
    """One input making 4 sequential calls: killed while call 2 is in flight (after a
    checkpoint), restarted, killed while call 3 is in flight (after a checkpoint of
    the second run), restarted again to the end."""
    job = Job(tmp, STEPS, server, SOLO, store)
    job.kill_during("solo call 2")
    job.kill_during("solo call 3")
    job.finish()
    return job


def check_two_crashes(job: Job, server: FakeLLMServer, expected: Reference) -> None:
    assert by_id(job.outputs()) == expected.outputs, "outputs identical to an uninterrupted run"
    check_calls(dict(server.calls), expected, ["solo call 2", "solo call 3"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORES)
def test_two_crashes_with_one_input_in_flight(tmp_path: Path, kind: str,
                                              request: pytest.FixtureRequest,
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    expected = reference(tmp_path_factory, STEPS, SOLO)
    with FakeLLMServer() as server:
        job = two_crashes(tmp_path, server, store_url(kind, request))
        check_two_crashes(job, server, expected)


@pytest.mark.slow
def test_control_memory_store_runs_recorded_calls_again(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """memory:// keeps nothing across processes: the same scenario and the same check
    must see call 1 run in every run (so the counting above can fail)."""
    expected = reference(tmp_path_factory, STEPS, SOLO)
    with FakeLLMServer() as server:
        job = two_crashes(tmp_path, server, "memory://")
        assert server.calls["solo call 1"] == 3, dict(server.calls)
        with pytest.raises(AssertionError, match="'solo call 1': 3"):
            check_two_crashes(job, server, expected)


# -- memory written by an action that has not finished -------------------------------

TALLIES = [{"id": "a1", "key": "a", "calls": 2}, {"id": "b1", "key": "b", "calls": 2},
           {"id": "a2", "key": "a", "calls": 2}, {"id": "b2", "key": "b", "calls": 2},
           {"id": "a3", "key": "a", "calls": 2}]
HALF_DONE = "a2 count 2 call 1"
"""a2's first call, made after a2 wrote count 2 to its key's memory."""


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORES)
def test_memory_of_an_unfinished_action_is_not_checkpointed(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    expected = reference(tmp_path_factory, TALLY, TALLIES)
    with FakeLLMServer() as server:
        job = Job(tmp_path, TALLY, server, TALLIES, store_url(kind, request))
        job.kill_during(HALF_DONE)
        job.finish()
        calls = dict(server.calls)
    check_calls(calls, expected, [HALF_DONE], hint=(
        "; the restarted action counted again on top of its own unfinished memory write, "
        "which the checkpoint had saved"))
    assert by_id(job.outputs()) == expected.outputs, "outputs identical to an uninterrupted run"


# -- before the first checkpoint -----------------------------------------------------

FAILING = [{"id": f"f{i}", "key": f"k{i % 3}", "calls": 2} for i in range(6)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORES)
def test_crash_before_the_first_checkpoint_keeps_recorded_calls(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Killed while f3's second call is in flight, long before the first checkpoint is
    due; one input at a time, so that call is the only one not recorded."""
    expected = reference(tmp_path_factory, STEPS, FAILING)
    with FakeLLMServer() as server:
        job = Job(tmp_path, STEPS, server, FAILING, store_url(kind, request),
                  concurrency=1, checkpoint_interval=60)
        job.kill_during("f3 call 2", after_checkpoint=False)
        job.finish()
        calls = dict(server.calls)
    check_calls(calls, expected, ["f3 call 2"])
    assert by_id(job.outputs()) == expected.outputs, "outputs identical to an uninterrupted run"


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORES)
def test_failed_action_fixed_and_rerun_keeps_recorded_calls(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """f3's action raises after its calls, long before the first checkpoint (exit 1);
    the user "fixes" it and runs the same command again."""
    expected = reference(tmp_path_factory, STEPS, FAILING)
    with FakeLLMServer() as server:
        job = Job(tmp_path, STEPS, server, FAILING, store_url(kind, request),
                  concurrency=1, checkpoint_interval=60)
        job.finish(exit_code=1, env={FAIL_ON: "f3"})
        assert f"{FAIL_ON}=f3 is set" in job.stderr(0)
        failed_run = server.requests
        job.finish()
        calls = dict(server.calls)
    # One input at a time, sync durability: every call that started before f3's last
    # answer (f3 raised right after it) was recorded. A call that another input
    # started in the slot f3 freed, before the run stopped, was abandoned unrecorded.
    failed_at = [r.answered for r in failed_run if r.prompt == "f3 call 2"]
    assert len(failed_at) == 1 and failed_at[0] is not None, "f3 fails after its calls"
    recorded = sorted(r.prompt for r in failed_run if r.received < failed_at[0])
    again = [prompt for prompt in recorded if calls[prompt] > 1]
    assert not again, (f"calls recorded before the failure ran again on the rerun: {again} "
                       f"(recorded: {recorded})")
    assert set(calls) == expected.prompts and max(calls.values()) <= 2, calls
    assert by_id(job.outputs()) == expected.outputs, "outputs identical to an uninterrupted run"
