"""Inputs through the real CLI: keys that are not strings, bytes that are not UTF-8, an
input file changed under a checkpoint, a damaged checkpoint, paths that cannot be written.

Every refusal exits 2 with one clear line naming the thing (``path:line`` for an input
line) and the fix, and no traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actionstate.checkpoint import Checkpoint, Marker
from actionstate.errors import IncompatibleStateError
from actionstate.testing.cli import actionstate, assert_clean_error, run_args, write_lines
from tests.agents.counter import AGENT, input_line

SLOW_AGENT = '''
import time
from actionstate import Agent, InputEvent, OutputEvent, RunnerContext, action


def double(n):
    return n * 2


class Slow(Agent):
    @action(InputEvent)
    def count(self, event: InputEvent, ctx: RunnerContext) -> None:
        time.sleep(0.01)
        doubled = ctx.durable_execute(double, event.input["n"])
        ctx.send_event(OutputEvent(output={"id": event.input["id"], "doubled": doubled}))
'''


def _refused(tmp: Path, *phrases: str, env: dict[str, str] | None = None) -> None:
    result = actionstate(*run_args(tmp, AGENT), env=env)
    assert result.returncode == 2, result.stderr
    assert_clean_error(result, *phrases)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _calls(path: Path) -> list[int]:
    return sorted(json.loads(x) for x in path.read_text().splitlines()) if path.exists() else []


def _output_ids(tmp: Path) -> list[int]:
    return sorted(json.loads(x)["id"] for x in (tmp / "out.jsonl").read_text().splitlines())


def _checkpoint(tmp: Path) -> dict[str, Any]:
    """The head of the state dir's last checkpoint, as JSON."""
    db = sqlite3.connect(f"file:{tmp / 'state' / 'checkpoint.db'}?mode=ro", uri=True)
    try:
        data: dict[str, Any] = json.loads(db.execute("SELECT body FROM head").fetchone()[0])
    finally:
        db.close()
    return data


def _rewrite(tmp: Path, sql: str, *args: Any) -> None:
    """Change the state dir's checkpoint behind actionstate's back."""
    db = sqlite3.connect(tmp / "state" / "checkpoint.db")
    with db:
        db.execute(sql, args)
    db.close()


# -- keys ----------------------------------------------------------------------


@pytest.mark.parametrize("key, found", [
    (5, "a number (5)"),
    (1.5, "a number (1.5)"),
    (True, "a boolean (true)"),
    (None, "null"),
    ({"a": 1}, 'an object ({"a": 1})'),
    ([1, 2], "an array ([1, 2])"),
])
def test_a_key_that_is_not_a_string_is_refused_naming_the_line(
        tmp_path: Path, key: Any, found: str) -> None:
    lines = [input_line(0), json.dumps({"id": 1, "k": key, "n": 1}), input_line(2)]
    write_lines(tmp_path / "in.jsonl", lines)
    calls = tmp_path / "calls.log"
    _refused(tmp_path, f"{tmp_path / 'in.jsonl'}:2", f"key field 'k' is {found}, not a string",
             "--key", env={"COUNTER_CALL_LOG": str(calls)})
    assert _calls(calls) == [0], "the line before ran; nothing after the bad line did"


def test_5_and_the_string_5_are_never_one_key(tmp_path: Path) -> None:
    """Before: str(5) == "5", so both lines shared key "5" (its memory, its seqs)."""
    write_lines(tmp_path / "in.jsonl", [json.dumps({"id": 0, "k": "5", "n": 0}),
                                        json.dumps({"id": 1, "k": 5, "n": 1})])
    _refused(tmp_path, f"{tmp_path / 'in.jsonl'}:2", "key field 'k' is a number (5)")
    outputs = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(o["id"], o["key"]) for o in outputs] == [(0, "5")], "a string key is unchanged"


def test_a_missing_key_is_refused_naming_the_line(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(0), input_line(1), json.dumps({"id": 2})])
    _refused(tmp_path, f"{tmp_path / 'in.jsonl'}:3", "no key field 'k'", "--key")


def test_a_line_that_is_not_an_object_is_refused_naming_the_line(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(0), "[1, 2]"])
    _refused(tmp_path, f"{tmp_path / 'in.jsonl'}:2", "not a JSON object (an array)")


def test_a_key_with_an_unpaired_surrogate_is_refused_naming_the_line(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(0), '{"id": 1, "k": "a\\ud800", "n": 1}'])
    _refused(tmp_path, f"{tmp_path / 'in.jsonl'}:2", "unpaired surrogate")


# -- bytes ---------------------------------------------------------------------


def test_a_line_that_is_not_utf8_is_refused_naming_the_line(tmp_path: Path) -> None:
    """Before: both keys below decoded to "k\\ufffd" and were merged into one."""
    (tmp_path / "in.jsonl").write_bytes(
        input_line(0).encode() + b"\n"
        + b'{"id": 1, "k": "k\xff", "n": 1}\n' + b'{"id": 2, "k": "k\xfe", "n": 2}\n')
    _refused(tmp_path, f"{tmp_path / 'in.jsonl'}:2", "not valid UTF-8", "byte 0xff")
    assert _output_ids(tmp_path) == [0]


# -- an input file changed under a checkpoint ----------------------------------


def _stop_at_a_bad_line(tmp: Path, good: int) -> tuple[list[str], Path]:
    """Run over ``good`` lines and a bad one: the run checkpoints after the good ones and
    exits 2. Returns the lines and the call log."""
    lines = [input_line(i) for i in range(good)] + ['{"id": "bad"']
    write_lines(tmp / "in.jsonl", lines)
    calls = tmp / "calls.log"
    result = actionstate(*run_args(tmp, AGENT), env={"COUNTER_CALL_LOG": str(calls)})
    assert_clean_error(result, f"{tmp / 'in.jsonl'}:{good + 1}", "not a JSON object")
    source = _checkpoint(tmp)["source"]
    prefix = (tmp / "in.jsonl").read_bytes()[:source["offset"]]
    assert source["line"] == good and prefix.count(b"\n") == good
    assert source["sha256"] == hashlib.sha256(prefix).hexdigest()
    return lines, calls


def _edit(lines: list[str]) -> list[str]:
    return [lines[0], lines[1].replace('"n": 1', '"n": 7'), *lines[2:]]


def _insert(lines: list[str]) -> list[str]:
    return [lines[0], input_line(99), *lines[1:]]


def _remove(lines: list[str]) -> list[str]:
    return [lines[0], *lines[2:]]


def _same_length_edit(lines: list[str]) -> list[str]:
    edited = lines[4].replace('"k1"', '"k2"')
    assert len(edited) == len(lines[4]) and edited != lines[4]
    return [*lines[:4], edited, *lines[5:]]


@pytest.mark.parametrize("change", [_edit, _insert, _remove, _same_length_edit])
def test_a_line_changed_before_the_checkpoint_is_refused_then_the_same_file_resumes(
        tmp_path: Path, change: Callable[[list[str]], list[str]]) -> None:
    lines, calls = _stop_at_a_bad_line(tmp_path, 10)
    write_lines(tmp_path / "in.jsonl", [*change(lines), *(input_line(i) for i in range(10, 15))])
    env = {"COUNTER_CALL_LOG": str(calls)}
    _refused(tmp_path, f"input file {tmp_path / 'in.jsonl'} changed before the checkpoint's "
             "position", "after line 10", "new --state", "lines may only be appended",
             env=env)
    # The refusal changed nothing: the original file, fixed and with lines appended
    # after the checkpoint's position, resumes where the first run stopped.
    write_lines(tmp_path / "in.jsonl", [input_line(i) for i in range(15)])
    result = actionstate(*run_args(tmp_path, AGENT), env=env)
    assert result.returncode == 0, result.stderr
    assert _calls(calls) == list(range(15)), "each call ran once"
    assert _output_ids(tmp_path) == list(range(15)), "one output per input"


def test_a_truncated_input_is_refused(tmp_path: Path) -> None:
    lines, calls = _stop_at_a_bad_line(tmp_path, 10)
    write_lines(tmp_path / "in.jsonl", lines[:5])
    _refused(tmp_path, f"input file {tmp_path / 'in.jsonl'} is shorter", "after line 10",
             "truncated", "new --state")
    write_lines(tmp_path / "in.jsonl", [])
    _refused(tmp_path, "is shorter (0 bytes)")
    result = actionstate(*run_args(tmp_path, AGENT)[:6], "--state", str(tmp_path / "new"),
                         "--output", str(tmp_path / "new.jsonl"))
    assert result.returncode == 0, "a new --state takes the file as it is now"


def test_lines_appended_after_the_checkpoint_are_read_on_resume(tmp_path: Path) -> None:
    lines, calls = _stop_at_a_bad_line(tmp_path, 6)
    write_lines(tmp_path / "in.jsonl", [*lines[:6], *(input_line(i) for i in range(6, 12))])
    result = actionstate(*run_args(tmp_path, AGENT), env={"COUNTER_CALL_LOG": str(calls)})
    assert result.returncode == 0, result.stderr
    assert _calls(calls) == list(range(12))
    assert _output_ids(tmp_path) == list(range(12))
    with open(tmp_path / "in.jsonl", "a") as f:  # and again after a finished run
        f.write("\n" + input_line(12) + "\n")
    result = actionstate(*run_args(tmp_path, AGENT), env={"COUNTER_CALL_LOG": str(calls)})
    assert result.returncode == 0, result.stderr
    assert _calls(calls) == list(range(13))


def test_a_checkpoint_without_a_digest_is_not_checked(tmp_path: Path) -> None:
    """Checkpoints written before the digest existed restore as before."""
    lines, calls = _stop_at_a_bad_line(tmp_path, 10)
    data = _checkpoint(tmp_path)
    del data["source"]["sha256"]
    _rewrite(tmp_path, "UPDATE head SET body = ?", json.dumps(data))
    write_lines(tmp_path / "in.jsonl", [*_same_length_edit(lines)[:10], input_line(10)])
    result = actionstate(*run_args(tmp_path, AGENT), env={"COUNTER_CALL_LOG": str(calls)})
    assert result.returncode == 0, result.stderr
    assert _calls(calls) == list(range(11))
    assert "sha256" in _checkpoint(tmp_path)["source"], "the next checkpoint has one"


def _slow_run(tmp: Path, n: int) -> subprocess.Popen[str]:
    (tmp / "slow.py").write_text(SLOW_AGENT)
    write_lines(tmp / "in.jsonl", [input_line(i) for i in range(n)])
    args = run_args(tmp, f"{tmp / 'slow.py'}:Slow", "--checkpoint-interval", "0.05",
                    "--concurrency", "1", "--quiet")
    return subprocess.Popen([sys.executable, "-m", "actionstate", *args],
                            stderr=subprocess.PIPE, text=True)


def _wait_for_a_checkpoint_past_line(tmp: Path, line: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if _checkpoint(tmp)["source"]["line"] >= line:
                return
        except (sqlite3.Error, TypeError):  # no checkpoint yet
            pass
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint past line {line}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "SIGTERM"])
def test_after_a_kill_or_a_stop_a_changed_input_is_refused_and_appending_resumes(
        tmp_path: Path, sig: signal.Signals) -> None:
    n = 200
    proc = _slow_run(tmp_path, n)
    _wait_for_a_checkpoint_past_line(tmp_path, 20)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == (-9 if sig == signal.SIGKILL else 0), stderr
    line = _checkpoint(tmp_path)["source"]["line"]
    assert 20 <= line < n, "stopped mid-run"
    agent = f"{tmp_path / 'slow.py'}:Slow"
    original = (tmp_path / "in.jsonl").read_text().splitlines()
    write_lines(tmp_path / "in.jsonl", _edit(original))
    result = actionstate(*run_args(tmp_path, agent))
    assert result.returncode == 2, result.stderr
    assert_clean_error(result, f"input file {tmp_path / 'in.jsonl'} changed before",
                       f"after line {line}", "new --state")
    write_lines(tmp_path / "in.jsonl", [*original, *(input_line(i) for i in range(n, n + 5))])
    result = actionstate(*run_args(tmp_path, agent))
    assert result.returncode == 0, result.stderr
    assert _output_ids(tmp_path) == list(range(n + 5)), "one output per input"


# -- a damaged checkpoint ------------------------------------------------------


def _set(*path: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def change(data: dict[str, Any]) -> Any:
        target = data
        for name in path[:-1]:
            target = target[name]
        target[path[-1]] = value
        return data
    return change


def _drop(*path: str) -> Callable[[dict[str, Any]], Any]:
    def change(data: dict[str, Any]) -> Any:
        target = data
        for name in path[:-1]:
            target = target[name]
        del target[path[-1]]
        return data
    return change


@pytest.mark.parametrize("change, phrase", [
    (_drop("source"), "'source'"),
    (_drop("source", "offset"), "'source.offset'"),
    (_set("source", "offset", value="12"), "'source.offset'"),
    (_set("source", "offset", value=-1), "'source.offset'"),
    (_set("source", "line", value=True), "'source.line'"),
    (_set("source", "sha256", value="not hex"), "'source.sha256'"),
    (_set("sink", value=[]), "'sink'"),
    (_set("pending", value=[["k0", 0]]), "'pending[0]'"),
    (_set("marker", value=5), "'marker'"),
    (_drop("job"), "'job'"),
    (lambda data: [data], "not a JSON object with a 'format' field"),
    (_drop("format"), "not a JSON object with a 'format' field"),
])
def test_a_checkpoint_with_a_missing_or_ill_typed_field_is_named(
        tmp_path: Path, change: Callable[[dict[str, Any]], Any], phrase: str) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(i) for i in range(3)])
    assert actionstate(*run_args(tmp_path, AGENT)).returncode == 0
    _rewrite(tmp_path, "UPDATE head SET body = ?", json.dumps(change(_checkpoint(tmp_path))))
    _refused(tmp_path, f"checkpoint {tmp_path / 'state' / 'checkpoint.db'}", phrase,
             "new --state")


@pytest.mark.parametrize("column, value, phrase", [
    ("next_seq", "x", "no next seq"),
    ("next_seq", -1, "no next seq"),
    ("memory", "5", "no short-term memory object"),
    ("memory", "{not json", "no short-term memory object"),
])
def test_a_damaged_key_row_is_named(tmp_path: Path, column: str, value: Any,
                                    phrase: str) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(i) for i in range(3)])
    assert actionstate(*run_args(tmp_path, AGENT)).returncode == 0
    key = "k0"
    _rewrite(tmp_path, f"UPDATE keys SET {column} = ? WHERE key = ?", value, key)
    with open(tmp_path / "in.jsonl", "a") as f:  # the key shows up again
        f.write(input_line(3) + "\n")
    _refused(tmp_path, f"checkpoint {tmp_path / 'state' / 'checkpoint.db'}", phrase,
             repr(key), "new --state")


def test_a_checkpoint_that_is_a_directory_is_named(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(0)])
    (tmp_path / "state").mkdir(mode=0o700)  # private, as actionstate makes it
    (tmp_path / "state" / "checkpoint.db").mkdir(mode=0o700)
    _refused(tmp_path, f"checkpoint {tmp_path / 'state' / 'checkpoint.db'} cannot be read",
             "new --state")


def test_checkpoint_reads_versions_1_to_3_and_writes_version_4() -> None:
    checkpoint = Checkpoint(job="j", marker=Marker("ns", {0: 3}, {0: 1}), store="memory://",
                            source={"path": "/in", "offset": 10, "line": 2,
                                    "sha256": "ab" * 32},
                            sink={"path": "/out", "offset": 0})
    data = checkpoint.to_json()
    assert data["version"] == 4 and data["source"]["sha256"] == "ab" * 32
    assert "next_seq" not in data and "short_term" not in data, "kept per key, beside it"
    assert Checkpoint.from_json(data, "x").source["sha256"] == "ab" * 32
    assert Checkpoint.from_json({**data, "version": 3}, "x").source == checkpoint.source
    version_1 = {"job": "j", "marker": {"namespace": "ns", "offsets": {"0": 3}, "epoch": 1},
                 "source": {"path": "/in", "offset": 10, "line": 2},
                 "sink": {"path": "/out", "offset": 0}, "next_seq": {"k": 2},
                 "short_term": {"k": {"n": 1}}, "pending": []}
    read = Checkpoint.from_json(version_1, "x")
    assert "sha256" not in read.source and read.source["offset"] == 10
    assert read.marker.fences == {0: 1}
    assert read.next_seq == {"k": 2} and read.short_term == {"k": {"n": 1}}
    version_2 = {**version_1, "version": 2, "next_seq": {"k0": "x"}}
    with pytest.raises(IncompatibleStateError, match="'next_seq'"):
        Checkpoint.from_json(version_2, "x")


# -- paths that cannot be written ----------------------------------------------
# The tests run as root, which ignores permission bits: these paths fail for root
# too (a directory cannot be made inside a regular file; a directory is not a file).


def test_an_output_inside_a_regular_file_is_refused(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(0)])
    (tmp_path / "file").write_text("")
    args = run_args(tmp_path, AGENT)
    args[args.index("--output") + 1] = str(tmp_path / "file" / "sub" / "out.jsonl")
    result = actionstate(*args)
    assert result.returncode == 2, result.stderr
    assert_clean_error(result, f"--output {tmp_path / 'file' / 'sub' / 'out.jsonl'} cannot be "
                       "opened for writing", f"{tmp_path / 'file'} is a file, not a directory",
                       "can be created and written")
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_output_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(0)])
    (tmp_path / "out.jsonl").mkdir()
    _refused(tmp_path, f"--output {tmp_path / 'out.jsonl'} cannot be opened for writing",
             "Is a directory")


def test_a_state_dir_inside_a_regular_file_is_refused(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(0)])
    (tmp_path / "file").write_text("")
    args = run_args(tmp_path, AGENT)
    args[args.index("--state") + 1] = str(tmp_path / "file" / "state")
    result = actionstate(*args)
    assert result.returncode == 2, result.stderr
    assert_clean_error(result, f"--state {tmp_path / 'file' / 'state'} cannot be written",
                       f"{tmp_path / 'file'} is a file, not a directory",
                       "can be created and written")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(0)])
    (tmp_path / "state").write_text("")
    _refused(tmp_path, f"--state {tmp_path / 'state'} is a file, not a directory")


def test_an_input_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").mkdir()
    _refused(tmp_path, f"input {tmp_path / 'in.jsonl'} is not a regular file", "--input")


# -- paths the permissions refuse ---------------------------------------------------------
# /sys refuses new entries to root too; an immutable file or directory (chattr +i)
# refuses writes to root too (as root; another user gets read-only permission bits).


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], None]]:
    """Makes a path unwritable for this user (undone after the test)."""
    made: list[Path] = []

    def make(path: Path) -> None:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
        else:
            path.chmod(0o500 if path.is_dir() else 0o400)
        made.append(path)

    yield make
    for path in reversed(made):
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True, capture_output=True)
        else:
            path.chmod(0o700 if path.is_dir() else 0o600)


def _refused_path(tmp: Path, flag: str, path: Path, *phrases: str) -> None:
    write_lines(tmp / "in.jsonl", [input_line(0)])
    args = run_args(tmp, AGENT)
    args[args.index(flag) + 1] = str(path)
    result = actionstate(*args)
    assert result.returncode == 2, result.stderr
    assert_clean_error(result, *phrases)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp / "out.jsonl").exists() or not (tmp / "out.jsonl").read_text(), "ran nothing"


def test_a_state_dir_that_may_not_be_created_is_refused(tmp_path: Path) -> None:
    state = Path("/sys/actionstate-test-state")
    _refused_path(tmp_path, "--state", state, f"--state {state} cannot be written: "
                  "Operation not permitted", "give a directory that can be created and written")
    assert not state.exists()


def test_a_state_dir_that_may_not_be_written_is_refused(
        tmp_path: Path, read_only: Callable[[Path], None]) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    read_only(state)
    _refused_path(tmp_path, "--state", state, f"--state {state} cannot be written: ",
                  "give a directory that can be created and written")
    assert list(state.iterdir()) == []


def test_an_output_that_may_not_be_created_is_refused(tmp_path: Path) -> None:
    output = Path("/sys/actionstate-test-out.jsonl")
    _refused_path(tmp_path, "--output", output, f"--output {output} cannot be opened for "
                  "writing: Permission denied",
                  "give a file path in a directory that can be created and written")


@pytest.mark.parametrize("locked", ["the directory", "the file"])
def test_an_output_that_may_not_be_written_is_refused(
        tmp_path: Path, read_only: Callable[[Path], None], locked: str) -> None:
    output = tmp_path / "outputs" / "out.jsonl"
    output.parent.mkdir()
    if locked == "the file":
        output.write_text("")
    read_only(output.parent if locked == "the directory" else output)
    _refused_path(tmp_path, "--output", output, f"--output {output} cannot be opened for "
                  "writing: ", "give a file path in a directory that can be created and written")
    assert output.exists() == (locked == "the file")
