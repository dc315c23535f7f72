"""Recorded data private at rest, secrets never leaked, sensitive fields kept out of
the event log: checked on what real runs (killed with SIGKILL and resumed) write.

Each end-to-end test has its control: the same run without keys (or without
``--redact``) must show the text the protected run hides, so a search that finds
nothing means the protection worked, not that the search looked in the wrong place.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from actionstate.errors import ConfigError, EncryptionKeyError
from actionstate.eventlog import REDACTED, FieldRedaction
from actionstate.records.crypto import KEY_FILE_ENV, KEYS_ENV, Keyring, Sealed, new_key_entry
from actionstate.stores import open_store
from actionstate.stores.options import redact_url
from actionstate.testing.crash import (
    TEXTS,
    Streams,
    command,
    crash_check,
    killed_run,
    make_tickets,
    run_to_end,
)
from actionstate.testing.fake_llm import FakeLLMServer
from actionstate.testing.services import Tables, delete_topics, start_service

TICKETS, CUSTOMERS = 60, 6
KEY = new_key_entry("k1")
API_KEY = "sk-CANARY-" + uuid.uuid4().hex  # the model client's key: must reach no file


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (KEYS_ENV, KEY_FILE_ENV):
        monkeypatch.delenv(name, raising=False)


def _every_file(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _inspect(tmp: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "actionstate", "inspect", "--state",
                           str(tmp / "state"), *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done.stdout


@pytest.mark.parametrize("encrypted", [True, False], ids=["keys", "control"])
def test_no_payload_at_rest_in_clear_across_kill_and_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypted: bool) -> None:
    _clean_env(monkeypatch)
    if encrypted:
        monkeypatch.setenv(KEYS_ENV, KEY)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    make_tickets(tmp_path / "tickets.jsonl", TICKETS, CUSTOMERS)
    with open(tmp_path / "tickets.jsonl", "a") as f:  # refused (no key): a dead letter
        f.write(json.dumps({"id": "bad", "text": TEXTS[0]}) + "\n")
    streams = Streams(str(tmp_path / "tickets.jsonl"), str(tmp_path / "labels.jsonl"), extra=(
        "--event-log", str(tmp_path / "events.jsonl"), "--summary",
        str(tmp_path / "summary.json"), "--dead-letter", str(tmp_path / "refused.jsonl")))
    killed: list[dict[str, bytes]] = []  # the state dir as each kill -9 left it
    with FakeLLMServer(latency=0.01) as server:
        for at in (5, 25, 45):
            killed_run(tmp_path, server, at, streams, stderr=tmp_path / f"stderr-{at}.txt")
            killed.append(_every_file(tmp_path / "state"))
        assert run_to_end(tmp_path, server, None, "sync", [], [], streams) == 0
        calls = server.total_calls
        authorizations = dict(server.authorizations)
    assert authorizations == {f"Bearer {API_KEY}": calls}, "every request used the canary key"
    assert calls <= TICKETS + 3 * CUSTOMERS, "the resumed runs replayed the recorded calls"
    labels = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == TICKETS
    state = _every_file(tmp_path / "state")
    assert all("state.db" in s and "checkpoint.db" in s for s in killed)
    at_rest = b"".join(data for files in (*killed, state) for data in files.values())
    texts = [t.encode() for t in TEXTS if t.encode() in at_rest]
    if encrypted:
        assert texts == [], "a ticket's text is in the state dir in clear"
        assert b'"z":["k1"' in at_rest
    else:
        assert texts, "control: without keys the tickets are in the state dir"
    written = _every_file(tmp_path)
    assert {"events.jsonl", "summary.json", "refused.jsonl", "stderr-5.txt", "stderr-45.txt",
            "stderr.txt"} <= set(written)
    assert b"record has no key field" in written["refused.jsonl"]
    leaked = [name for name, data in written.items()
              if API_KEY.encode() in data or KEY.split(":")[1].encode() in data]
    assert leaked == [], "a secret reached a file"

    report = _inspect(tmp_path, "--json")
    assert API_KEY not in report
    if encrypted:
        monkeypatch.delenv(KEYS_ENV)
        without_key = _inspect(tmp_path)
        assert "encrypted with key 'k1'" in without_key, without_key
        assert all(t not in without_key for t in TEXTS)


def test_event_log_redaction_holds_for_first_runs_and_replays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The triage agent's ``Classified`` events (sent by ``classify``, replayed from the
    store when a kill came after its completion) and the ``call_retry`` records of
    refused model requests: redacted in every record, replayed or not, across two
    kill -9s; the control run without ``--redact`` shows the fields."""
    _clean_env(monkeypatch)
    redact = ("--redact", "Classified:customer,amount", "--redact", "InputEvent:input.text",
              "--redact", "call_retry:error")
    for name, extra in (("control", ()), ("redacted", redact)):
        run = tmp_path / name
        run.mkdir()
        make_tickets(run / "tickets.jsonl", TICKETS, CUSTOMERS)
        log = run / "events.jsonl"
        streams = Streams(str(run / "tickets.jsonl"), str(run / "labels.jsonl"),
                          extra=("--event-log", str(log), "--retry-wait-interval", "0.01",
                                 *extra))
        with FakeLLMServer(latency=0.01) as server:
            # every fifth ticket's first request is refused: a retry, logged
            server.fail = lambda prompt, n: (
                (500, None) if n == 1 and int(prompt[2:prompt.index("]")]) % 5 == 0 else None)
            assert run_to_end(run, server, None, "sync", [20, 40], [], streams) >= 2
        records = [json.loads(line) for line in log.read_text().splitlines()]
        inputs = [r for r in records if r["context"]["event_type"] == "actionstate.InputEvent"]
        classified = [r for r in records if r["context"]["event_type"].endswith(".Classified")]
        replayed = [r for r in classified if r["context"]["replayed"]]
        retries = [r["call"] for r in records if r["context"]["event_type"] == "call_retry"]
        assert len(inputs) == TICKETS and len(classified) == TICKETS and retries
        assert replayed, "the kills left Classified events that were replayed"
        text = log.read_text()
        if extra:
            for event in (r["event"] for r in classified):  # replayed ones among them
                assert event["customer"] == REDACTED and event["amount"] == REDACTED, event
                assert event["ticket_id"].startswith("T"), "other fields stay"
            assert all(r["event"]["input"]["text"] == REDACTED for r in inputs)
            assert all(r["error"] == REDACTED and r["attempt"] == 1 for r in retries)
            assert all(t not in text for t in TEXTS) and "HTTP 500" not in text
        else:
            assert all(r["event"]["customer"].startswith("c_") for r in classified)
            assert any(r["event"]["customer"].startswith("c_") for r in replayed)
            assert all("500" in r["error"] for r in retries)
            assert any(t in text for t in TEXTS)


def test_a_secret_store_option_is_masked_in_checkpoint_errors_and_reports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kafka_servers: str) -> None:
    _clean_env(monkeypatch)
    password = "pw-CANARY-" + uuid.uuid4().hex
    topic = f"secret-{uuid.uuid4().hex[:8]}"
    url = f"kafka://{kafka_servers}/{topic}?sasl.password={password}&sasl.username=u"
    make_tickets(tmp_path / "tickets.jsonl", 12, 3)
    try:
        with FakeLLMServer() as server:
            assert run_to_end(tmp_path, server, url, "sync", [], []) == 0
        leaked = [name for name, data in _every_file(tmp_path).items()
                  if password.encode() in data]
        assert leaked == []
        report = _inspect(tmp_path, "--store", url)
        assert password not in report and "sasl.password=***" in report
        done = subprocess.run([sys.executable, "-m", "actionstate", "inspect", "--state",
                               str(tmp_path / "state")], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode != 0 and "give the store URL with them" in done.stderr
        assert password not in done.stderr + done.stdout and "Traceback" not in done.stderr
    finally:
        delete_topics(kafka_servers, [topic])
    with pytest.raises(ConfigError) as info:  # a setting given twice, differently
        open_store(url, "sync", **{"sasl.password": "other-" + password})
    assert password not in str(info.value) and "sasl.password=***" in str(info.value)
    with pytest.raises(ConfigError) as info:
        open_store(f"nosuch://h/t?sasl.password={password}")
    assert password not in str(info.value)


@pytest.mark.parametrize("encrypted", [True, False], ids=["keys", "control"])
def test_a_refused_input_held_for_a_kafka_dead_letter_is_sealed_in_the_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kafka_servers: str,
        encrypted: bool) -> None:
    """A Kafka dead letter holds the refused input in its open transaction, which each
    checkpoint saves (to write it again after a crash before the commit): with keys,
    no byte of the state dir (checkpoint.db and its -wal, as kill -9 left them, and
    after the resumed run) shows it."""
    _clean_env(monkeypatch)
    if encrypted:
        monkeypatch.setenv(KEYS_ENV, KEY)
    canary = "refused-CANARY-" + uuid.uuid4().hex
    make_tickets(tmp_path / "tickets.jsonl", TICKETS, CUSTOMERS)
    lines = (tmp_path / "tickets.jsonl").read_text().splitlines(keepends=True)
    lines.insert(3, json.dumps({"id": "bad", "text": canary}) + "\n")  # no key: refused
    (tmp_path / "tickets.jsonl").write_text("".join(lines))
    topic = f"dead-{uuid.uuid4().hex[:8]}"
    streams = Streams(str(tmp_path / "tickets.jsonl"), str(tmp_path / "labels.jsonl"),
                      extra=("--dead-letter", f"kafka://{kafka_servers}/{topic}"))
    try:
        with FakeLLMServer(latency=0.01) as server:
            killed_run(tmp_path, server, 30, streams)
            killed = _every_file(tmp_path / "state")
            assert run_to_end(tmp_path, server, None, "sync", [], [], streams) == 0
    finally:
        delete_topics(kafka_servers, [topic])
    assert any(name.endswith("checkpoint.db-wal") for name in killed)
    at_rest = b"".join([*killed.values(), *_every_file(tmp_path / "state").values()])
    if encrypted:
        assert canary.encode() not in at_rest, "the dead letter's record is in clear"
    else:
        assert canary.encode() in at_rest, "control: without keys the checkpoint holds it"


FLUSS_SASL = {"security.protocol": "SASL", "security.sasl.mechanism": "PLAIN",
              "security.sasl.username": "admin", "security.sasl.password": "admin-secret"}


def _fluss_credentials(password: str, jaas: bool) -> str:
    if not jaas:
        return f"flussSaslUsername=admin&flussSaslPassword={password}"
    config = ('org.apache.fluss.security.auth.sasl.plain.PlainLoginModule required '
              f'username="admin" password="{password}";')
    return "flussSaslJaasConfig=" + quote(config, safe="")


@pytest.mark.parametrize("jaas", [False, True], ids=["password", "jaas"])
def test_a_fluss_sasl_password_reaches_no_file_and_a_wrong_one_no_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jaas: bool) -> None:
    """The SASL Fluss cluster (``scripts/services/fluss start --sasl``, user admin,
    password admin-secret): a run with the password in the store URL, killed -9 and
    resumed; no file written (state dir, outputs, each run's stderr) holds it, and the
    checkpoint holds the URL with it masked. A wrong password (a canary) fails with an
    error that does not show it."""
    _clean_env(monkeypatch)
    password = "admin-secret"
    tables = Tables(start_service("fluss", "--sasl"), **FLUSS_SASL)
    url = tables.url(f"buckets=2&{_fluss_credentials(password, jaas)}")
    make_tickets(tmp_path / "tickets.jsonl", 30, 3)
    try:
        with FakeLLMServer(latency=0.01) as server:
            killed_run(tmp_path, server, 15, Streams(
                str(tmp_path / "tickets.jsonl"), str(tmp_path / "labels.jsonl"),
                extra=("--store", url)), stderr=tmp_path / "stderr-killed.txt")
            assert run_to_end(tmp_path, server, url, "sync", [], []) == 0
    finally:
        tables.drop()
    assert len((tmp_path / "labels.jsonl").read_text().splitlines()) == 30
    written = _every_file(tmp_path)
    assert "stderr-killed.txt" in written and "stderr.txt" in written
    assert [name for name, data in written.items() if password.encode() in data] == []
    masked = b"flussSaslJaasConfig=***" if jaas else b"flussSaslPassword=***"
    assert masked in b"".join(data for name, data in written.items()
                              if name.startswith("state/checkpoint.db")), \
        "the checkpoint keeps the store URL, masked"

    wrong = "wrong-CANARY-" + uuid.uuid4().hex
    bad = tmp_path / "wrong"
    bad.mkdir()
    make_tickets(bad / "tickets.jsonl", 3, 1)
    bad_url = f"fluss://{tables.address}/{tables.database}.never_created?" + \
        _fluss_credentials(wrong, jaas)
    with FakeLLMServer() as server:
        done = subprocess.run(command(bad, bad_url, "sync"), capture_output=True, text=True,
                              timeout=120, check=False,
                              env=dict(os.environ, ACTIONSTATE_MODEL_BASE_URL=server.base_url))
        assert server.total_calls == 0
    assert done.returncode == 2 and "authentication failed" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert wrong not in done.stderr + done.stdout
    assert [name for name, data in _every_file(bad).items() if wrong.encode() in data] == []


# -- units: keys, URLs, redaction --------------------------------------------------


def test_keyring_errors_name_the_entry_never_the_key(tmp_path: Path) -> None:
    secret = KEY.split(":")[1]
    cases = {
        "k1": "entry 1 is not id:base64key",
        "k1:%%%": "the key of entry 1 ('k1') is not base64",
        "k1:" + secret[:24]: "is 18 bytes, AES-256 needs 32",
        f"{KEY},{KEY}": "given twice",
        "bad id:" + secret: "is not 1-64 letters",
        "": "holds no key",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            Keyring.parse(text, KEYS_ENV)
        assert secret not in str(info.value)
    with pytest.raises(ConfigError, match="set one"):
        Keyring.from_env({KEYS_ENV: KEY, KEY_FILE_ENV: str(tmp_path / "keys")})
    with pytest.raises(ConfigError, match="cannot be read"):
        Keyring.from_env({KEY_FILE_ENV: str(tmp_path / "missing")})
    (tmp_path / "keys").write_text(f"# rotated 2026-12\n{new_key_entry('k2')}\n{KEY}\n")
    ring = Keyring.from_env({KEY_FILE_ENV: str(tmp_path / "keys")})
    assert ring is not None and ring.active == "k2" and ring.ids == ["k2", "k1"]
    assert secret not in repr(ring)
    assert Keyring.from_env({}) is None


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o600, 0o400])
def test_a_key_file_others_can_read_gets_a_warning_naming_the_fix(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int) -> None:
    path = tmp_path / f"keys-{mode:o}"
    path.write_text(KEY + "\n")
    os.chmod(path, mode)
    with caplog.at_level("WARNING", logger="actionstate"):
        for _ in range(2):  # once per file
            assert Keyring.from_env({KEY_FILE_ENV: str(path)}) is not None
    warnings = [r.getMessage() for r in caplog.records if "key file" in r.getMessage()]
    if mode & 0o077:
        assert len(warnings) == 1, warnings
        assert f"mode {mode:04o}" in warnings[0] and f"chmod 600 {path}" in warnings[0]
        assert KEY.split(":")[1] not in warnings[0]
    else:
        assert warnings == []


def test_a_sealed_payload_is_bound_to_its_record() -> None:
    ring = Keyring.parse(KEY, KEYS_ENV)
    sealed = ring.seal(b"refund 120 EUR", b"call\0key-a\x000")
    assert ring.open(sealed, b"call\0key-a\x000", "here") == b"refund 120 EUR"
    with pytest.raises(EncryptionKeyError, match="does not decrypt"):
        ring.open(sealed, b"call\0key-b\x000", "here")  # moved to another record


def test_redact_url_masks_secret_values_only() -> None:
    assert redact_url("kafka://h:1/t?sasl.password=x&sasl.username=u&acks=all") == (
        "kafka://h:1/t?sasl.password=***&sasl.username=u&acks=all")
    assert redact_url("fluss://h:1/d.t?flussSaslPassword=x&flussSaslJaasConfig=a%20b") == (
        "fluss://h:1/d.t?flussSaslPassword=***&flussSaslJaasConfig=***")
    assert redact_url("kafka://user:pw@h:1/t") == "kafka://user:***@h:1/t"
    assert redact_url("sqlite:///tmp/state.db") == "sqlite:///tmp/state.db"


def test_field_redaction() -> None:
    redact = FieldRedaction.parse(["InputEvent:input.card.number,input.email", "*:secret"])
    data: dict[str, Any] = {
        "input": {"card": {"number": "4111", "exp": "12/30"}, "email": "a@b", "n": 1},
        "secret": "s"}
    assert redact("InputEvent", data) == {
        "input": {"card": {"number": REDACTED, "exp": "12/30"}, "email": REDACTED, "n": 1},
        "secret": REDACTED}
    assert data["input"]["email"] == "a@b", "the event itself is not changed"
    assert redact("OutputEvent", {"output": [{"secret": 1}], "secret": 2}) == {
        "output": [{"secret": 1}], "secret": REDACTED}
    assert FieldRedaction({"x": ["items.secret"]})("x", {"items": [{"secret": 1}, 2]}) == {
        "items": [{"secret": REDACTED}, 2]}
    for bad in ("nofield", ":x", "T:a..b"):
        with pytest.raises(ConfigError, match="TYPE:field"):
            FieldRedaction.parse([bad])


def test_a_redaction_that_fails_on_a_retry_record_stops_the_run(tmp_path: Path) -> None:
    """A retry is logged inside the action (which could catch an error): a redact
    function that raises there stops the run after the action, with nothing logged."""
    from actionstate import Agent, InputEvent, OutputEvent, RetryPolicy, RunnerContext, action, run

    failed: list[str] = []

    def flaky(what: str) -> str:
        if what not in failed:
            failed.append(what)
            raise ConnectionResetError(f"reset while sending {what}")
        return what.upper()

    class Swallows(Agent):
        @action(InputEvent)
        def work(self, event: InputEvent, ctx: RunnerContext) -> None:
            try:
                reply = ctx.durable_execute(flaky, event.input["text"])
            except Exception:  # an action that catches everything
                reply = "caught"
            ctx.send_event(OutputEvent(output=reply))

    def redact(event_type: str, fields: dict[str, Any]) -> dict[str, Any]:
        if event_type == "call_retry":
            raise KeyError("no such field")
        return fields

    outputs: list[Any] = []
    with pytest.raises(ConfigError, match="redaction failed on a call_retry record"):
        run(Swallows, source=[{"k": "a", "text": "card 4111"}], sink=outputs, key="k",
            state=tmp_path / "state", event_log=tmp_path / "events.jsonl",
            event_log_redact=redact, retry=RetryPolicy(max_attempts=2, initial_interval=0.0,
                                                       jitter=0.0))
    assert outputs == [] and "4111" not in (tmp_path / "events.jsonl").read_text()


def test_keygen_prints_a_usable_entry() -> None:
    done = subprocess.run([sys.executable, "-m", "actionstate", "keygen", "k9"],
                          capture_output=True, text=True, timeout=60, check=True)
    ring = Keyring.parse(done.stdout.strip(), "keygen")
    assert ring.active == "k9"


@pytest.mark.slow
def test_kill_and_resume_on_kafka_with_keys_leaves_no_payload_in_the_topic(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kafka_servers: str) -> None:
    """The whole crash check (3 kills at random calls, 1 at a random time; outputs exact,
    at most one call per key per kill again, no refund twice) with keys on the Kafka
    store, then every message of the topic searched for the tickets' texts."""
    from confluent_kafka import Consumer, TopicPartition

    _clean_env(monkeypatch)
    monkeypatch.setenv(KEYS_ENV, KEY)
    topic = f"actionstate-sealed-{uuid.uuid4().hex[:12]}"
    try:
        crash_check(tmp_path, f"kafka://{kafka_servers}/{topic}?partitions=2", seed=9)
        consumer = Consumer({"bootstrap.servers": kafka_servers, "group.id": topic,
                             "enable.auto.commit": False})
        try:
            values: list[bytes] = []
            for partition in (0, 1):
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                           timeout=10)
                if high <= low:
                    continue
                consumer.assign([TopicPartition(topic, partition, low)])
                while True:
                    message = consumer.poll(10)
                    assert message is not None and message.error() is None, message
                    values.append(message.value() or b"")
                    if (message.offset() or 0) >= high - 1:
                        break
        finally:
            consumer.close()
    finally:
        delete_topics(kafka_servers, [topic])
    raw = b"\n".join(values)
    assert b'"z":["k1"' in raw, "sealed records are in the topic"
    assert [t for t in TEXTS if t.encode() in raw] == []


def test_records_written_without_keys_stay_readable_once_keys_are_configured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that ran without keys, then with: both kinds of records read back, under
    keys and (the clear ones) without."""
    from actionstate.testing.samples import call, key

    _clean_env(monkeypatch)
    url = f"sqlite://{tmp_path}/state.db"
    plain = open_store(url)
    plain.rebuild(None)
    marker = plain.recovery_marker()
    plain.put(call(key("a", 0), 0, "written in clear"))
    plain.close()
    monkeypatch.setenv(KEYS_ENV, KEY)
    sealed = open_store(url)
    sealed.rebuild(marker)
    sealed.put(call(key("a", 1), 0, "written sealed"))
    sealed.close()
    for keys in (True, False):
        if not keys:
            monkeypatch.delenv(KEYS_ENV)
        reader = open_store(url)
        reader.sealed_ok = not keys
        reader.rebuild(marker, read_only=True)
        first, second = reader.get(key("a", 0)), reader.get(key("a", 1))
        reader.close()
        assert first is not None and first.calls[0].result == "written in clear"
        assert second is not None
        assert second.calls[0].result == ("written sealed" if keys else Sealed("k1"))
