"""The CLI on bad input: a clear error, no traceback, exit code != 0, nothing recorded lost."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actionstate.checkpoint import Checkpoint, Marker
from actionstate.runners.statedir import StateDir
from actionstate.testing import FakeLLMServer
from actionstate.testing.cli import actionstate, assert_clean_error, run_args, write_lines
from actionstate.testing.crash import command, make_tickets
from actionstate.testing.recovery import Job
from actionstate.testing.services import CHECKOUT
from tests.agents.counter import AGENT, input_line
from tests.agents.recovery import STEPS

_FILE_IN = {"path": "in", "offset": 0, "line": 0}
_FILE_OUT = {"path": "out", "offset": 0}


def test_malformed_line_is_named_and_a_rerun_after_the_fix_repeats_nothing(
        tmp_path: Path) -> None:
    lines = [input_line(i) for i in range(10)]
    lines[6] = '{"id": 6, "k": "k0", "n": 6'
    write_lines(tmp_path / "in.jsonl", lines)
    calls = tmp_path / "calls.log"
    env = {"COUNTER_CALL_LOG": str(calls)}
    result = actionstate(*run_args(tmp_path, AGENT), env=env)
    assert_clean_error(result, f"{tmp_path / 'in.jsonl'}:7", "not a JSON object")
    assert len(calls.read_text().splitlines()) == 6
    lines[6] = input_line(6)
    write_lines(tmp_path / "in.jsonl", lines)
    result = actionstate(*run_args(tmp_path, AGENT), env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(x) for x in calls.read_text().splitlines()) == list(range(10))
    outputs = [json.loads(x)["id"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(outputs) == list(range(10))


def test_record_without_the_key_field_is_named(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(0), json.dumps({"id": 1})])
    assert_clean_error(actionstate(*run_args(tmp_path, AGENT)), ":2", "no key field 'k'", "--key")


def test_unknown_store_url(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(0)])
    result = actionstate(*run_args(tmp_path, AGENT, "--store", "postgres://db/x"))
    assert_clean_error(result, "unknown store URL 'postgres://db/x'", "sqlite:///")


@pytest.mark.parametrize("source, phrase", [
    ("import not_a_module_anywhere\n", "No module named 'not_a_module_anywhere'"),
    ("def broken(:\n", "SyntaxError"),
])
def test_agent_that_does_not_import(tmp_path: Path, source: str, phrase: str) -> None:
    (tmp_path / "bad_agent.py").write_text(source)
    write_lines(tmp_path / "in.jsonl", [input_line(0)])
    args = run_args(tmp_path, AGENT)
    args[1] = f"{tmp_path / 'bad_agent.py'}:Agent"
    assert_clean_error(actionstate(*args), "cannot import agent module", phrase)


def test_agent_spec_without_class_and_missing_file(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(0)])
    args = run_args(tmp_path, AGENT)
    args[1] = "tests/agents/counter.py"
    assert_clean_error(actionstate(*args), "path/to/file.py:ClassName")
    args[1] = f"{tmp_path}/nope.py:Agent"
    assert_clean_error(actionstate(*args), "does not exist")


def test_state_dir_from_an_incompatible_version(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(0)])
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "actionstate.json").write_text('{"format": 999}')
    assert_clean_error(actionstate(*run_args(tmp_path, AGENT)), "format 999", "new --state")


def test_second_run_on_a_state_dir_held_by_a_live_run(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(0)])
    holder = StateDir(tmp_path / "state")
    holder.lock()
    try:
        result = actionstate(*run_args(tmp_path, AGENT))
    finally:
        holder.unlock()
    assert_clean_error(result, "in use by a live run", f"pid {os.getpid()}")
    assert actionstate(*run_args(tmp_path, AGENT)).returncode == 0


def test_corrupted_store_record_is_named_on_restore(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(i) for i in range(3)])
    state = tmp_path / "state"
    StateDir(state)
    checkpoint = Checkpoint(
        job="counter:Counter", marker=Marker("ns", {0: 0}, {0: 0}),
        store=f"sqlite://{state / 'state.db'}",
        source={"path": str((tmp_path / "in.jsonl").resolve()), "offset": 0, "line": 0},
        sink={"path": str((tmp_path / "out.jsonl").resolve()), "offset": 0})
    StateDir(state).save_checkpoint(checkpoint)
    (tmp_path / "out.jsonl").write_text("")
    db = sqlite3.connect(state / "state.db")
    db.executescript("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
                     "INSERT INTO meta VALUES ('schema', '1');"
                     "CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, namespace "
                     "TEXT NOT NULL, agent_key TEXT, payload BLOB NOT NULL);"
                     "INSERT INTO records (namespace, agent_key, payload) "
                     "VALUES ('ns', 'k0', x'00ff');")
    db.commit()
    db.close()
    result = actionstate(*run_args(tmp_path, AGENT))
    assert_clean_error(result, "records.id=1", "not valid JSON")


def _triage(tmp: Path, server: FakeLLMServer) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, ACTIONSTATE_MODEL_BASE_URL=server.base_url,
               ACTIONSTATE_REFUND_LEDGER=str(tmp / "refunds.jsonl"))
    return command(tmp, None, "sync"), env


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_finishes_the_inputs_in_flight_checkpoints_and_exits_0(
        tmp_path: Path, sig: signal.Signals) -> None:
    make_tickets(tmp_path / "tickets.jsonl", 120, 12)
    with FakeLLMServer() as server:
        cmd, env = _triage(tmp_path, server)
        cmd = [*cmd[:cmd.index("--checkpoint-interval") + 1], "60",
               *cmd[cmd.index("--checkpoint-interval") + 2:]]  # only the stop checkpoints
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        server.on_call = lambda total: proc.send_signal(sig) if total == 30 else None
        _, stderr = proc.communicate(timeout=120)
        server.on_call = None
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert f"stopped by {sig.name} after" in stderr and "run the same command" in stderr
        labels = tmp_path / "labels.jsonl"
        done = len(labels.read_text().splitlines())
        assert 30 <= done < 120, "the inputs in flight finished; reading stopped"
        # The checkpoint the stop wrote (the interval is 60 s: no other since the first,
        # before any input; read by the state dir's typed reader) holds every input read
        # as written or pending: the source position just after them, the sink's at the
        # end of what was written.
        stop = StateDir(tmp_path / "state").load_checkpoint()
        assert stop is not None
        pending = {str(p.record["id"]) for p in stop.pending}
        assert stop.stats["inputs"] == stop.stats["outputs"] == done
        assert stop.source["line"] == done + len(pending) and stop.sink["offset"] == (
            labels.stat().st_size), "every input read is written or pending"
        # Read ahead but never started (the workers start no input once stopped): no
        # call of a pending input was made.
        started = [prompt for prompt in server.calls
                   if prompt.removeprefix("[").split("]")[0] in pending]
        assert pending and not started, (len(pending), started)
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        calls = server.calls
    ids = [json.loads(line)["id"] for line in labels.read_text().splitlines()]
    assert sorted(ids) == sorted(f"T{i}" for i in range(120)), "one output per input"
    assert set(calls.values()) == {1}, "a graceful stop re-runs no call"
    resumed = StateDir(tmp_path / "state").load_checkpoint()
    assert resumed is not None and resumed.pending == []
    assert resumed.stats["calls_replayed"] == 0, "nothing was left to replay"
    assert resumed.stats["inputs"] == 120 - done, "the rerun read on from the stop"


GRACE = 3.0


@pytest.mark.slow
@pytest.mark.parametrize("how", ["second signal", "grace timeout"])
def test_a_stop_abandons_what_is_still_in_flight_on_a_second_signal_or_after_the_grace(
        tmp_path: Path, how: str) -> None:
    """One input at a time (``--concurrency 1``), and a call the model never answers:
    after SIGTERM that input stays in flight; a second signal (Ctrl-C) abandons it at
    once, or the grace (``--stop-grace 3``) runs out. Either way the run exits 0 with a checkpoint
    that has it pending, and the rerun pays again only the call that was never
    answered, not the one recorded before it."""
    items = [{"id": f"s{i:02d}", "key": f"k{i % 4}", "calls": 2} for i in range(40)]
    held = "s05 call 2"  # s05's first call is answered and recorded; its second hangs
    with FakeLLMServer(latency=0.01) as server:
        job = Job(tmp_path, STEPS, server, items, concurrency=1, checkpoint_interval=60,
                  extra=("--stop-grace", str(GRACE)))
        server.hold(held)
        proc = job.start()
        job.wait_for(proc, lambda: server.calls[held] > 0, f"the call {held!r}")
        stopped = time.monotonic()
        job.signal(proc, signal.SIGTERM)
        if how == "second signal":
            job.signal(proc, signal.SIGINT)
        job.finish(proc, timeout=60)
        elapsed = time.monotonic() - stopped
        stderr = job.stderr(0)
        assert "stopped by SIGTERM after" in stderr and "run the same command" in stderr
        if how == "second signal":
            assert elapsed < GRACE, f"the second signal abandoned s05 at once, not {elapsed:.1f} s"
        else:
            assert elapsed >= GRACE, f"the grace is {GRACE} s; the run ended after {elapsed:.1f} s"
        outputs = {str(o["id"]) for o in job.outputs()}
        stop = StateDir(tmp_path / "state").load_checkpoint()
        assert stop is not None
        pending = {str(p.record["id"]) for p in stop.pending}
        assert "s05" in pending and not pending & outputs, (pending, outputs)
        assert stop.source["line"] == len(outputs) + len(pending) == stop.stats["inputs"] + len(
            pending), "every input read is either written or pending"
        server.release(held)
        job.finish()  # the rerun
        calls = server.calls
    assert sorted(str(o["id"]) for o in job.outputs()) == [str(i["id"]) for i in items]
    again = {prompt for prompt, count in calls.items() if count > 1}
    assert again == {held}, f"only the call never answered runs again, not {again}"
    resumed = StateDir(tmp_path / "state").load_checkpoint()
    assert resumed is not None
    assert resumed.stats["calls_replayed"] == 1, ("the rerun replays s05's first call",
                                                  resumed.stats)


@pytest.mark.slow
def test_a_store_that_fails_mid_run_is_reported_as_the_store_and_the_rerun_resumes(
        tmp_path: Path) -> None:
    make_tickets(tmp_path / "tickets.jsonl", 60, 6)
    holders: list[sqlite3.Connection] = []

    def lock_the_store(total: int) -> None:
        if total == 20:  # another process takes the database while a call is in flight
            holders.append(sqlite3.connect(tmp_path / "state" / "state.db",
                                           isolation_level=None, check_same_thread=False))
            holders[0].execute("BEGIN EXCLUSIVE")

    with FakeLLMServer() as server:
        cmd, env = _triage(tmp_path, server)
        server.on_call = lock_the_store
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        server.on_call = None
        holders[0].execute("ROLLBACK")
        holders[0].close()
        assert result.returncode == 2, result.stderr
        assert_clean_error(result, "cannot write to SQLite store", "state.db",
                           "database is locked", "another process holds the database file",
                           "run the same command again")
        assert "action failed" not in result.stderr and "fix the action" not in result.stderr
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        calls = server.calls
    ids = [json.loads(line)["id"] for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(f"T{i}" for i in range(60))
    # The calls in flight when the store failed (at most one per key: 6) were paid but
    # could not be recorded; they alone run again.
    assert sum(calls.values()) - 60 <= 6, "only the calls whose records were refused run again"


def test_a_fresh_start_writes_its_first_checkpoint_before_any_input(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [])
    assert actionstate(*run_args(tmp_path, AGENT)).returncode == 0
    checkpoint = StateDir(tmp_path / "state").load_checkpoint()
    assert checkpoint is not None and checkpoint.marker.epoch > 0
    db = tmp_path / "state" / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO records (namespace, agent_key, payload) VALUES ('old', 'k', x'00')")
    conn.commit()
    conn.close()
    for name in ("checkpoint.db", "checkpoint.db-wal", "checkpoint.db-shm"):
        (tmp_path / "state" / name).unlink(missing_ok=True)  # a fresh start, same state dir
    assert actionstate(*run_args(tmp_path, AGENT)).returncode == 0
    conn = sqlite3.connect(db)
    namespaces = {row[0] for row in conn.execute("SELECT namespace FROM records")}
    conn.close()
    fresh = StateDir(tmp_path / "state").load_checkpoint()
    assert fresh is not None and namespaces <= {fresh.marker.namespace}, (
        "a fresh start deletes the abandoned runs of its own state dir's store")


def test_version() -> None:
    result = actionstate("--version")
    assert result.returncode == 0 and result.stdout.startswith("actionstate ")


def test_inspect_reads_the_agent_s_own_events_when_given_the_agent(tmp_path: Path) -> None:
    from actionstate.events import InputEvent
    from actionstate.loader import load_agent_class
    from actionstate.records.state import CompleteRecord, StateKey
    from actionstate.stores import open_store

    triage = str(CHECKOUT / "examples" / "triage.py") + ":Triage"
    classified = load_agent_class(triage).__module__
    event_cls = sys.modules[classified].Classified
    state = StateDir(tmp_path / "state")
    store = open_store(state.default_store_url)
    store.rebuild(None)
    key = StateKey("c1", 0, "classify", "e" * 64)
    store.put(CompleteRecord(key, InputEvent(input={"id": "T1"}), (event_cls(
        ticket_id="T1", customer="c1", label="refund", confidence=90, amount=5.0),), ()))
    state.save_checkpoint(Checkpoint(job="triage:Triage", marker=store.recovery_marker(),
                                     store=store.url, source=_FILE_IN, sink=_FILE_OUT))
    store.close()
    bare = actionstate("inspect", "--state", str(tmp_path / "state"))
    assert_clean_error(bare, "unknown event type", "--agent path/to/file.py:Class")
    given = actionstate("inspect", "--state", str(tmp_path / "state"), "--agent", triage)
    assert given.returncode == 0, given.stderr
    assert "seq 0 action classify (completed)" in given.stdout


def test_inspect_remembers_the_agent_of_the_run(tmp_path: Path) -> None:
    """A checkpoint taken by a run names its agent's file: inspect reads the agent's own
    events without --agent (the README's triage example, whose Classified event is its
    own), in text and JSON, while the agent's file is there. The run is killed with
    its states held (no checkpoint but the first), so the events must be decoded."""
    import shutil

    from actionstate.testing.crash import TRIAGE, Streams, killed_run

    agent = tmp_path / "agent" / "triage.py"
    agent.parent.mkdir()
    shutil.copy(TRIAGE, agent)
    make_tickets(tmp_path / "tickets.jsonl", 12, 3)
    streams = Streams(str(tmp_path / "tickets.jsonl"), str(tmp_path / "labels.jsonl"),
                      extra=("--checkpoint-interval", "600"))
    with FakeLLMServer() as server:
        killed_run(tmp_path, server, 6, streams, agent=agent)
    checkpoint = StateDir(tmp_path / "state").load_checkpoint()
    assert checkpoint is not None and checkpoint.agent == f"{agent.resolve()}:Triage"
    state = str(tmp_path / "state")

    text = actionstate("inspect", "--state", state)
    assert text.returncode == 0, text.stderr
    assert "action classify (completed)" in text.stdout
    sent = [line for line in text.stdout.splitlines() if ".Classified {" in line]
    assert sent and all('"ticket_id": "T' in line and '"label": ' in line for line in sent)
    bare = actionstate("inspect", "--state", state, "--json")
    assert bare.returncode == 0, bare.stderr
    events = [event for entry in json.loads(bare.stdout)["keys"] for s in entry["states"]
              for event in s["sent"] if event["type"].endswith(".Classified")]
    assert len(events) == len(sent) > 0
    assert all(set(e["data"]) == {"ticket_id", "customer", "label", "confidence", "amount"}
               for e in events)

    agent.rename(agent.with_suffix(".moved"))  # the control: the agent's file is gone
    for extra in ((), ("--json",)):
        gone = actionstate("inspect", "--state", state, *extra)
        assert_clean_error(gone, "unknown event type", "Classified", "--agent")


def test_a_first_run_refuses_an_output_file_that_holds_data_unless_overwrite(
        tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(i) for i in range(3)])
    out = tmp_path / "out.jsonl"
    out.write_text('{"kept": true}\n')
    result = actionstate(*run_args(tmp_path, AGENT))
    assert_clean_error(result, str(out), "already holds 15 bytes", "--overwrite")
    assert out.read_text() == '{"kept": true}\n', "nothing of the user's file is lost"
    assert not (tmp_path / "state" / "checkpoint.db").exists(), "no checkpoint taken"

    result = actionstate(*run_args(tmp_path, AGENT, "--overwrite"))
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == 3, "replaced by this run's outputs"
    assert (tmp_path / "state" / "checkpoint.db").exists(), "where a checkpoint goes"
    again = actionstate(*run_args(tmp_path, AGENT))  # a resumed run: its own output
    assert again.returncode == 0, again.stderr
    assert len(out.read_text().splitlines()) == 3


def test_progress_off_a_terminal_prints_a_line_every_few_seconds_with_share_and_eta() -> None:
    import io

    from actionstate.cli.progress import Progress
    from actionstate.durable.stats import RunStats

    now = [0.0]
    out = io.StringIO()
    progress = Progress(out, every=5.0, clock=lambda: now[0])
    stats = RunStats(resumed_at="line 1201 of tickets.jsonl")
    for second in range(1, 12):  # a report per checkpoint, every second
        now[0] = float(second)
        stats.inputs, stats.outputs, stats.calls_executed = 3 * second, 3 * second, second
        stats.done_fraction = 0.5 + 0.04 * second
        progress(stats, float(second))
    progress.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == "resuming at line 1201 of tickets.jsonl"
    assert len(lines) == 1 + 3, "at 1 s, 6 s and 11 s; the last one is not printed again"
    assert lines[2] == ("18 inputs done (74% of the input), 18 outputs | calls: 6 executed, "
                        "0 replayed | 3.0 inputs/s | ETA 7s")  # 20% in 5 s: 26% left
    assert lines[-1].startswith("33 inputs done (94% of the input)")


def test_rerunning_a_finished_job_says_it_is_complete(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [input_line(i) for i in range(3)])
    first = actionstate(*run_args(tmp_path, AGENT))
    assert first.returncode == 0, first.stderr
    assert "3 inputs done (100% of the input), 3 outputs" in first.stderr
    again = actionstate(*run_args(tmp_path, AGENT))
    assert again.returncode == 0, again.stderr
    assert "resuming at line 4 of in.jsonl" in again.stderr
    assert "already complete: every input was done by an earlier run" in again.stderr
    assert "0 inputs done" not in again.stderr, again.stderr


def test_progress_gives_a_slow_rate_per_minute_not_as_zero() -> None:
    import io

    from actionstate.cli.progress import Progress
    from actionstate.durable.stats import RunStats

    out = io.StringIO()
    progress = Progress(out, every=5.0, clock=lambda: 0.0)
    progress(RunStats(inputs=2), 60.0)  # one input every 30 s: 0.03 inputs/s
    assert "2.0 inputs/min" in out.getvalue() and "0.0 inputs/s" not in out.getvalue()


def test_a_failed_run_still_writes_its_summary(tmp_path: Path) -> None:
    lines = [input_line(i) for i in range(10)]
    lines[6] = '{"id": 6, "k": "k0", "n": 6'
    write_lines(tmp_path / "in.jsonl", lines)
    summary = tmp_path / "summary.json"
    result = actionstate(*run_args(tmp_path, AGENT, "--summary", str(summary)))
    assert_clean_error(result, f"{tmp_path / 'in.jsonl'}:7")
    written = json.loads(summary.read_text())
    assert written["complete"] is False and "InputError" in written["failed"], written
    assert written["calls"]["executed"] == 6 and written["inputs"] == 6, written


def test_a_malformed_option_or_env_pair_is_not_echoed(tmp_path: Path) -> None:
    """``--option sasl.password:secret`` / ``--env OPENAI_API_KEY:sk-...`` (a ':' for the
    '='): the error names the flag, the pair's number and the expected form, never the
    text given."""
    from actionstate.cli.run import named_values
    from actionstate.errors import ConfigError

    secret = "sk-CANARY-" + os.urandom(8).hex()
    write_lines(tmp_path / "in.jsonl", [input_line(0)])
    result = actionstate(*run_args(tmp_path, AGENT, "--option", f"sasl.password:{secret}"))
    assert_clean_error(result, "--option number 1 must look like NAME=VALUE")
    assert secret not in result.stderr + result.stdout
    with pytest.raises(ConfigError, match="--env number 2 must look like NAME=VALUE") as info:
        named_values(["A=1", f"OPENAI_API_KEY:{secret}"], "--env")
    assert secret not in str(info.value)


def test_every_option_of_every_command_has_help_text_and_shows_its_default() -> None:
    import argparse

    from actionstate.cli.parser import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for act in parser._actions:
            if isinstance(act, argparse._SubParsersAction):
                for name, sub in act.choices.items():
                    walk(sub, f"{path} {name}")
            elif act.help in (None, "") and act.dest != "help":
                missing.append(f"{path} {act.option_strings or act.dest}")
            elif act.default not in (None, False, [], argparse.SUPPRESS) \
                    and "default" not in (act.help or ""):
                missing.append(f"{path} {act.option_strings}: its default {act.default!r}")

    walk(build_parser(), "actionstate")
    assert not missing, f"options without help or a shown default: {missing}"
