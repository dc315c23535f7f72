"""Input records the Flink runner cannot use, on the real cluster and broker: message
keys read as bytes (UTF-8 decoded by the runner, refused clearly when not UTF-8),
values too; with ``--dead-letter`` such records go to a topic, exactly once, and the
job goes on; without it the job fails at the record with the error naming it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from actionstate.records.crypto import new_key_entry
from actionstate.testing.crash import TEXTS, TRIAGE, make_tickets
from actionstate.testing.fake_llm import FakeLLMServer
from actionstate.testing.flink import Flink
from actionstate.testing.topics import Message, Topics, produce, read_committed

GOOD = 12


def _submit(flink: Flink, servers: str, source: str, output: str, server: FakeLLMServer,
            tmp: Path, *extra: str, store: str = "memory://") -> str:
    cmd = [sys.executable, "-m", "actionstate", "flink", "run", f"{TRIAGE}:Triage",
           "--input", f"kafka://{servers}/{source}", "--key", "@key",
           "--output", f"kafka://{servers}/{output}", "--store", store,
           "--jobmanager", flink.address, "--parallelism", "1", "--checkpoint-interval", "1s",
           "--job", f"inputs-{source}", "--connector-jar", flink.connector_jar,
           "--env", f"ACTIONSTATE_MODEL_BASE_URL={server.base_url}",
           "--env", f"ACTIONSTATE_REFUND_LEDGER={tmp / 'refunds.jsonl'}", *extra]
    if "--until-end" not in extra:
        cmd.append("--detach")  # --until-end: the client returns once it drained the job
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_refused_records_go_to_the_dead_letter_topic_and_keys_are_utf8_bytes(
        cluster: Flink, kafka_servers: str, topics: Topics, tmp_path: Path) -> None:
    make_tickets(tmp_path / "tickets.jsonl", GOOD, 4)
    tickets = [json.loads(line) for line in (tmp_path / "tickets.jsonl").read_text().splitlines()]
    for ticket in tickets[::3]:
        ticket["customer"] = "клиент-" + ticket["customer"]  # non-ASCII keys, as UTF-8 bytes
    good: list[Message] = [(0, t["customer"].encode(),
                            json.dumps(t, ensure_ascii=False).encode()) for t in tickets]
    bad: list[Message] = [(0, b"\xff\xfekey", b'{"id": "B0", "text": "a key that is not UTF-8"}'),
           (0, None, b'{"id": "B1", "text": "no message key"}'),
           (0, b"c_9", b"not json at all"),
           (0, b"c_9", b"\xc3\x28 not UTF-8"),
           (0, b"c_9", b"[1, 2]")]
    source, output, letters = topics.create(1), topics.create(1), topics.create(1)
    produce(kafka_servers, source, good[:6] + bad + good[6:])
    with FakeLLMServer() as server:
        job = _submit(cluster, kafka_servers, source, output, server, tmp_path,
                      "--until-end", "--dead-letter", f"kafka://{kafka_servers}/{letters}")
        cluster.wait_job(job, {"FINISHED"}, timeout=240)
    outputs = [json.loads(v) for k, v in read_committed(kafka_servers, output) if v]
    assert sorted(o["id"] for o in outputs) == sorted(t["id"] for t in tickets)
    keys = {k.decode() for k, v in read_committed(kafka_servers, output) if k is not None}
    assert any(k.startswith("клиент-") for k in keys), keys
    dead = [(k, json.loads(v)) for k, v in read_committed(kafka_servers, letters) if v]
    assert len(dead) == len(bad), "each refused record once, in a committed transaction"
    errors = [letter["error"] for _, letter in dead]
    assert "message key is not valid UTF-8" in errors[0]
    assert "no message key" in errors[1]
    assert "not a JSON object" in errors[2]
    assert "not valid UTF-8" in errors[3] and dead[3][1]["record"] is None
    assert dead[3][1]["record_base64"]
    assert "not a JSON object" in errors[4] or "JSON object" in errors[4]
    assert all(f"{source}[0]@" in e and "--dead-letter" in e for e in errors)
    assert [letter["where"] for _, letter in dead] == [6, 7, 8, 9, 10]
    assert all(letter["source"] == f"input topic kafka://{kafka_servers}/{source}"
               for _, letter in dead)
    assert dead[2][0] == b"c_9"


def test_without_a_dead_letter_topic_a_refused_record_fails_the_job_naming_it(
        cluster: Flink, kafka_servers: str, topics: Topics, tmp_path: Path) -> None:
    source, output = topics.create(1), topics.create(1)
    # The first record is a good ticket: one without a customer failed its action too
    # (KeyError), and that failure, not the refused record's, was at times the job's.
    produce(kafka_servers, source, [(0, b"c_1",
                                     b'{"id": "T0", "text": "hi", "customer": "c_1"}'),
                                    (0, b"\xff", b'{"id": "T1", "text": "bad key"}')])
    with FakeLLMServer() as server:
        job = _submit(cluster, kafka_servers, source, output, server, tmp_path)
        deadline = time.monotonic() + 120
        root = ""
        while "message key is not valid UTF-8" not in root:
            assert time.monotonic() < deadline, f"no failure naming the record: {root[:2000]}"
            time.sleep(0.5)  # the REST API's poll interval
            history = cluster.rest(f"/jobs/{job}/exceptions")
            root = json.dumps(history)
        cluster.cancel(job)
    assert f"{source}[0]@1" in root and "--dead-letter" in root


def test_the_workers_seal_what_they_record_with_the_key_file_the_job_names(
        cluster: Flink, kafka_servers: str, topics: Topics, tmp_path: Path) -> None:
    """Encryption at rest on Flink: ``--env ACTIONSTATE_KEY_FILE=...`` (the file on each
    TaskManager; here the one machine): every payload in the store's topic is sealed,
    and the outputs are exact."""
    keys = tmp_path / "keys"
    keys.write_text(new_key_entry("flink-1") + "\n")
    keys.chmod(0o600)
    make_tickets(tmp_path / "tickets.jsonl", GOOD, 4)
    lines = (tmp_path / "tickets.jsonl").read_text().splitlines()
    source, output, states = topics.create(1), topics.create(1), topics.name()
    produce(kafka_servers, source, [(0, json.loads(line)["customer"].encode(), line.encode())
                                    for line in lines])
    with FakeLLMServer() as server:
        job = _submit(cluster, kafka_servers, source, output, server, tmp_path, "--until-end",
                      "--env", f"ACTIONSTATE_KEY_FILE={keys}",
                      store=f"kafka://{kafka_servers}/{states}?partitions=2")
        cluster.wait_job(job, {"FINISHED"}, timeout=240)
    outputs = [json.loads(v) for k, v in read_committed(kafka_servers, output) if v]
    assert sorted(o["id"] for o in outputs) == sorted(json.loads(x)["id"] for x in lines)
    recorded = b"\n".join(v for _, v in read_committed(kafka_servers, states) if v)
    assert recorded.count(b'"z":["flink-1"') >= 2 * GOOD, "each call and completion sealed"
    assert [t for t in TEXTS if t.encode() in recorded] == []
