"""The state dir's checkpoint under encryption keys: what it seals, and what a resume
does when the key that sealed it is missing, wrong, or rotated.

A missing or wrong key must stop the run before anything runs again (exit 2, an
error naming the key id, no model call made); a rotated keyring (new key first,
old key kept) must resume as if nothing changed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from actionstate.checkpoint import Checkpoint, Marker
from actionstate.errors import EncryptionKeyError
from actionstate.records.crypto import KEY_FILE_ENV, KEYS_ENV, Keyring, new_key_entry
from actionstate.runners.statedir import StateDir
from actionstate.testing.crash import command, make_tickets
from actionstate.testing.fake_llm import FakeLLMServer

K1, K2 = new_key_entry("k1"), new_key_entry("k2")
WRONG_K1 = new_key_entry("k1")  # the right id, another key
CANARY = "held-CANARY-refund 120 EUR"


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (KEYS_ENV, KEY_FILE_ENV):
        monkeypatch.delenv(name, raising=False)


def _checkpoint(**states: dict[str, Any]) -> Checkpoint:
    return Checkpoint(job="j", marker=Marker("ns", {0: 1}, {0: 1}), store="",
                      source={"path": "in", "offset": 0, "line": 0},
                      sink=states.get("sink", {"path": "out", "offset": 0}),
                      dead_letter=states.get("dead_letter"))


def _raw(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in state.iterdir() if p.name.startswith("checkpoint"))


def _kafka_state(record: str) -> dict[str, Any]:
    return {"kind": "kafka", "servers": "h:1", "topic": "t", "transactional_id": "x",
            "txn": 2, "records": [["c_1", record]]}


def test_every_connector_state_s_held_records_are_sealed_and_read_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEYS_ENV, K1)
    sink, dead = _kafka_state(CANARY + " output"), _kafka_state(CANARY + " refused")
    state = StateDir(tmp_path / "state")
    state.save_checkpoint(_checkpoint(sink=sink, dead_letter=dead), {"c_1": (1, {"m": CANARY})})
    state.close()
    assert CANARY.encode() not in _raw(tmp_path / "state")
    again = StateDir(tmp_path / "state")
    loaded = again.load_checkpoint()
    assert loaded is not None and loaded.sink == sink and loaded.dead_letter == dead
    assert again.key_state("c_1") == (1, {"m": CANARY})


def test_a_head_sealed_before_dead_letters_were_sealed_still_opens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Heads sealed by the previous version keep a sink's records as ``sink_records``."""
    monkeypatch.setenv(KEYS_ENV, K1)
    state = StateDir(tmp_path / "state")
    state.save_checkpoint(_checkpoint(sink={k: v for k, v in _kafka_state("").items()
                                            if k != "records"}))
    state.close()
    db = sqlite3.connect(tmp_path / "state" / "checkpoint.db")
    head = json.loads(db.execute("SELECT body FROM head").fetchone()[0])
    secret = {"pending": [], "sink_records": [["c_1", CANARY]]}
    ring = Keyring.parse(K1, KEYS_ENV)
    head["sealed"] = ring.seal(json.dumps(secret).encode(), b"checkpoint head")
    with db:
        db.execute("UPDATE head SET body = ?", (json.dumps(head),))
    db.close()
    loaded = StateDir(tmp_path / "state").load_checkpoint()
    assert loaded is not None and loaded.sink["records"] == [["c_1", CANARY]]


@pytest.mark.parametrize("keys", ["", WRONG_K1, K2], ids=["missing", "wrong", "other-id"])
def test_a_sealed_checkpoint_without_its_key_is_an_error_naming_the_key_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: str) -> None:
    monkeypatch.setenv(KEYS_ENV, K1)
    state = StateDir(tmp_path / "state")
    state.save_checkpoint(_checkpoint(), {"c_1": (1, {"m": CANARY})})
    state.close()
    monkeypatch.setenv(KEYS_ENV, keys)
    message = ("does not decrypt with the configured key 'k1'" if keys == WRONG_K1
               else "is encrypted with key 'k1'")
    with pytest.raises(EncryptionKeyError, match=message):
        StateDir(tmp_path / "state").load_checkpoint()
    with pytest.raises(EncryptionKeyError, match=message):  # a key's memory row, too
        StateDir(tmp_path / "state").key_state("c_1")


def test_a_rotated_keyring_reads_the_old_key_and_seals_with_the_new(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEYS_ENV, K1)
    state = StateDir(tmp_path / "state")
    state.save_checkpoint(_checkpoint(), {"c_1": (1, {"m": "old"})})
    state.close()
    monkeypatch.setenv(KEYS_ENV, f"{K2},{K1}")
    rotated = StateDir(tmp_path / "state")
    assert rotated.load_checkpoint() is not None
    assert rotated.key_state("c_1") == (1, {"m": "old"})
    rotated.save_checkpoint(_checkpoint(), {"c_2": (1, {"m": "new"})})
    rotated.close()
    db = sqlite3.connect(tmp_path / "state" / "checkpoint.db")
    rows = dict(db.execute("SELECT key, memory FROM keys").fetchall())
    head = json.loads(db.execute("SELECT body FROM head").fetchone()[0])
    db.close()
    assert rows["c_1"].startswith("sealed:k1:") and rows["c_2"].startswith("sealed:k2:")
    assert head["sealed"][0] == "k2"


# -- through the CLI: a run resumed under each keyring ---------------------------------


def _run(tmp: Path, server: FakeLLMServer, keys: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (KEYS_ENV, KEY_FILE_ENV)}
    env.update(ACTIONSTATE_MODEL_BASE_URL=server.base_url,
               ACTIONSTATE_REFUND_LEDGER=str(tmp / "refunds.jsonl"))
    if keys is not None:
        env[KEYS_ENV] = keys
    return subprocess.run(command(tmp, None, "sync"), env=env, capture_output=True,
                          text=True, timeout=180, check=False)


def test_resuming_a_sealed_state_dir_needs_its_key_and_survives_rotation(
        tmp_path: Path) -> None:
    """Run 30 tickets under k1 to the end; 30 more tickets arrive. Without k1, or with
    another key under the id k1, the run stops at once (exit 2, the error names k1)
    having called nothing; with ``k2,k1`` it makes exactly the 30 new tickets' calls
    (none of the first run's again) and seals what it writes with k2."""
    make_tickets(tmp_path / "tickets.jsonl", 60, 6)
    lines = (tmp_path / "tickets.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "tickets.jsonl").write_text("".join(lines[:30]))
    with FakeLLMServer() as server:
        first = _run(tmp_path, server, K1)
        assert first.returncode == 0, first.stderr
        done = server.total_calls
        assert done >= 30
        with open(tmp_path / "tickets.jsonl", "a") as f:
            f.write("".join(lines[30:]))
        for keys, message in ((None, "is encrypted with key 'k1', and no key is configured"),
                              (K2, "is encrypted with key 'k1', and the configured keys "
                                   f"({KEYS_ENV}) are k2"),
                              (WRONG_K1, "does not decrypt with the configured key 'k1'")):
            refused = _run(tmp_path, server, keys)
            assert refused.returncode == 2, refused.stderr
            assert message in refused.stderr and "Traceback" not in refused.stderr
            assert server.total_calls == done, "a call ran again without its key"
            for entry in (K1, K2, WRONG_K1):
                assert entry.split(":")[1] not in refused.stderr
        rotated = _run(tmp_path, server, f"{K2},{K1}")
        assert rotated.returncode == 0, rotated.stderr
        assert max(server.calls.values()) == 1, "a call of the first run was made again"
        assert server.total_calls - done >= 30
    outputs = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert sorted(o["id"] for o in outputs) == sorted(f"T{i}" for i in range(60))
    db = sqlite3.connect(tmp_path / "state" / "checkpoint.db")
    memory = [m for (m,) in db.execute("SELECT memory FROM keys")]
    head = json.loads(db.execute("SELECT body FROM head").fetchone()[0])
    db.close()
    assert head["sealed"][0] == "k2" and all(m.startswith("sealed:k2:") for m in memory)
