"""What a run records stays private: the state dir is 0700 and each file in it 0600,
whatever the umask, from the first moment (also after kill -9, with SQLite's
``-wal`` and ``-shm`` files left behind); outputs follow the user's umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from actionstate.runners.statedir import StateDir
from actionstate.testing.crash import Streams, killed_run, make_tickets, run_to_end
from actionstate.testing.fake_llm import FakeLLMServer


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 0 (every bit a file may get), as a careless shell profile would."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _modes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory.parent)): stat.S_IMODE(p.lstat().st_mode)
            for p in [directory, *directory.rglob("*")]}


def test_a_fresh_state_dir_is_private_under_umask_0(tmp_path: Path, open_umask: None) -> None:
    make_tickets(tmp_path / "tickets.jsonl", 40, 4)
    streams = Streams(str(tmp_path / "tickets.jsonl"), str(tmp_path / "labels.jsonl"),
                      extra=("--event-log", str(tmp_path / "events.jsonl")))
    with FakeLLMServer(latency=0.01) as server:
        killed_run(tmp_path, server, 8, streams)
        killed = _modes(tmp_path / "state")  # as kill -9 left it
        assert run_to_end(tmp_path, server, None, "sync", [], [], streams) == 0
    finished = _modes(tmp_path / "state")
    for modes in (killed, finished):
        assert modes.pop("state") == 0o700
        assert {name for name in modes} >= {"state/checkpoint.db", "state/state.db",
                                            "state/lock", "state/actionstate.json"}
        assert {name: mode for name, mode in modes.items() if mode != 0o600} == {}
    assert any(name.endswith("-wal") for name in killed), "the kill left WAL files to check"
    # the user's own files follow the user's umask (0 here)
    assert stat.S_IMODE((tmp_path / "labels.jsonl").stat().st_mode) == 0o666
    assert stat.S_IMODE((tmp_path / "events.jsonl").stat().st_mode) == 0o666


def test_a_reused_state_dir_others_can_read_gets_a_warning_naming_the_fix(
        tmp_path: Path, open_umask: None, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    (state / "notes.txt").write_text("left here by hand")
    with caplog.at_level("WARNING", logger="actionstate"):
        made = StateDir(state)
        made.lock()
        made.unlock()
    warning = caplog.text
    assert f"state dir {state} is readable by other users" in warning
    assert f"{state} (mode 0755)" in warning and "notes.txt (mode 0666)" in warning
    assert f"chmod -R go-rwx {state}" in warning
    # what actionstate itself writes into it is private even so
    assert stat.S_IMODE((state / "lock").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "actionstate.json").stat().st_mode) == 0o600

    caplog.clear()
    os.chmod(state, 0o700)
    os.chmod(state / "notes.txt", 0o600)
    with caplog.at_level("WARNING", logger="actionstate"):
        StateDir(state)
    assert "readable by other users" not in caplog.text


def _files(directory: Path) -> dict[str, int]:
    return {name: mode for name, mode in _modes(directory).items()
            if name != directory.name}


def test_a_state_dir_made_by_the_cli_warns_on_stderr_when_reused_open(
        tmp_path: Path, open_umask: None) -> None:
    """Through the CLI, the warning reaches stderr (one line, no traceback); every file
    the runs leave in the reused dir (after a kill -9, and after the end) is 0600."""
    make_tickets(tmp_path / "tickets.jsonl", 40, 4)
    (tmp_path / "state").mkdir()
    os.chmod(tmp_path / "state", 0o755)
    with FakeLLMServer(latency=0.01) as server:
        killed_run(tmp_path, server, 8, stderr=tmp_path / "stderr-killed.txt")
        killed = _files(tmp_path / "state")
        assert run_to_end(tmp_path, server, None, "sync", [], []) == 0
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "readable by other users" in stderr and "chmod -R go-rwx" in stderr
    assert "Traceback" not in stderr
    assert "readable by other users" in (tmp_path / "stderr-killed.txt").read_text()
    assert {"state/checkpoint.db-wal", "state/state.db-wal", "state/state.db-shm"} <= set(
        killed), "the kill left SQLite's -wal and -shm files to check"
    for modes in (killed, _files(tmp_path / "state")):
        assert {"state/checkpoint.db", "state/state.db", "state/lock"} <= set(modes)
        assert {name: oct(mode) for name, mode in modes.items() if mode != 0o600} == {}
    assert stat.S_IMODE((tmp_path / "labels.jsonl").stat().st_mode) == 0o666, "umask 0 held"


def test_a_sqlite_store_elsewhere_is_private_under_umask_0(
        tmp_path: Path, open_umask: None) -> None:
    make_tickets(tmp_path / "tickets.jsonl", 40, 4)
    other = tmp_path / "other" / "path"
    other.mkdir(parents=True)
    url = f"sqlite://{other}/store.db"
    with FakeLLMServer(latency=0.01) as server:
        killed_run(tmp_path, server, 8, Streams(
            str(tmp_path / "tickets.jsonl"), str(tmp_path / "labels.jsonl"),
            extra=("--store", url)))
        killed = _files(other)
        assert run_to_end(tmp_path, server, url, "sync", [], []) == 0
    assert {"path/store.db", "path/store.db-wal", "path/store.db-shm"} <= set(killed)
    for modes in (killed, _files(other)):
        assert "path/store.db" in modes
        assert {name: oct(mode) for name, mode in modes.items() if mode != 0o600} == {}
    assert "state/state.db" not in _modes(tmp_path / "state"), "the store was elsewhere"
    assert stat.S_IMODE((tmp_path / "labels.jsonl").stat().st_mode) == 0o666, "umask 0 held"
