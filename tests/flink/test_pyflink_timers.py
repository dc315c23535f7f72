"""What the Flink runner's restore rests on: PyFlink keeps, through a savepoint, every
processing-time timer a keyed Python function registered before it, when a bundle is
one element (the runner's setting: its per-key wake timers start the inputs a
checkpoint holds queued). The control, 1000-element bundles of a slow function, loses
the timers registered in the bundle the barrier closed: the reason for that setting.

Run with the Flink venv: ``.venv-flink/bin/pytest tests/flink`` (scripts/test does).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actionstate.testing.flink import Flink

DUE_MS = 30_000
"""Timers fire this long after they are registered: after the savepoint."""


def logged(log_dir: Path) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """(key, timestamp) of the timers the job's workers registered, and of those fired."""
    registered: set[tuple[str, int]] = set()
    fired: set[tuple[str, int]] = set()
    for log in log_dir.glob("*.log"):
        for line in log.read_text().splitlines():
            kind, key, at = line.split()
            (registered if kind == "reg" else fired).add((key, int(at)))
    return registered, fired


@pytest.fixture
def idle(flink: Flink) -> Iterator[Flink]:
    """The cluster with no job running before and after the test."""
    def cancel_all() -> None:
        for job in flink.rest("/jobs/overview")["jobs"]:
            if job["state"] not in ("FINISHED", "FAILED", "CANCELED"):
                flink.cancel(job["jid"])

    cancel_all()
    yield flink
    cancel_all()


def stop_with_savepoint(flink: Flink, job: str, directory: Path) -> str:
    trigger = flink.rest_post(f"/jobs/{job}/stop", {
        "drain": False, "targetDirectory": str(directory)})["request-id"]
    deadline = time.monotonic() + 180
    while True:
        found = flink.rest(f"/jobs/{job}/savepoints/{trigger}")
        if found["status"]["id"] == "COMPLETED":
            assert "location" in found["operation"], found["operation"]
            return str(found["operation"]["location"])
        assert time.monotonic() < deadline, f"no savepoint within 180 s: {found}"
        time.sleep(0.2)  # the poll interval of the REST API


def savepoint_and_restore(flink: Flink, tmp_path: Path, bundle_size: str,
                          bundle_ms: str = "5"
                          ) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """Run the timers job (bundles closed after ``bundle_size`` elements or
    ``bundle_ms``), stop it with a savepoint once it registered timers, restore it: the
    timers pending at the savepoint, and those of them that did not fire."""
    first, second = tmp_path / "first", tmp_path / "second"
    job = flink.run_py("timers_job.py", str(first), str(DUE_MS), "0.2", bundle_size,
                       bundle_ms)
    deadline = time.monotonic() + 120
    while len(logged(first)[0]) < 60:  # several bundles' worth of registrations
        assert time.monotonic() < deadline, "fewer than 60 timers registered in 120 s"
        time.sleep(0.2)  # the poll interval of the workers' logs
    savepoint = stop_with_savepoint(flink, job, tmp_path / "savepoints")
    registered, fired = logged(first)
    pending = registered - fired
    assert pending

    # The restored job does no slow work: the first one's function (5 elements/s against
    # 8/s in) let its input back up, and with 1000-element bundles a fired timer waits for
    # the bundle in progress, which grows with the backlog (a CI run waited over 180 s).
    restored = flink.run_py("timers_job.py", str(second), str(DUE_MS), "0", bundle_size,
                            savepoint=savepoint)
    # The timer service fires timers in timestamp order: once a timer the restored job
    # registered itself (due after every pending one) has fired, every pending timer that
    # came back has fired too, however long the restore took on a loaded machine.
    last_due = max(at for _key, at in pending)
    deadline = time.monotonic() + 180
    while not any(at > last_due for _key, at in logged(second)[1]):
        state = flink.rest(f"/jobs/{restored}")["state"]
        assert state in ("CREATED", "INITIALIZING", "RUNNING"), \
            f"the restored job is {state}: {flink.rest(f'/jobs/{restored}/exceptions')}"
        assert time.monotonic() < deadline, "the restored job fired no new timer in 180 s"
        time.sleep(0.5)  # the poll interval of the workers' logs
    missing = pending - logged(second)[1]
    flink.cancel(restored)
    print(f"\nbundle size {bundle_size}: {len(pending)} timers pending at the savepoint, "
          f"{len(missing)} did not fire after the restore")
    return pending, missing


@pytest.mark.slow
@pytest.mark.parametrize("bundle_size", ["1", "1000"])
def test_timers_registered_before_a_savepoint_fire_after_the_restore(
        tmp_path: Path, idle: Flink, bundle_size: str) -> None:
    if bundle_size == "1":
        pending, missing = savepoint_and_restore(idle, tmp_path, bundle_size)
        assert not missing, f"{len(missing)} of {len(pending)} timers lost"
        return
    # The control loses timers when the savepoint's barrier closes a bundle that
    # registered some. With the runner's bundle time (5 ms) few bundles are open when
    # the barrier comes: two clean-clone runs (of three) and a run here lost none in
    # two tries on a slow host. Bundles of up to a second (PyFlink's default: about 5
    # elements of the slow function) leave the barrier one that did, nearly always;
    # still two tries.
    for attempt in range(2):
        _, missing = savepoint_and_restore(idle, tmp_path / f"try{attempt}", bundle_size,
                                           "1000")
        if missing:
            return
    raise AssertionError("the control lost no timer in two tries: the reason for "
                         "one-element bundles is gone")
