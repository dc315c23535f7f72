"""The Kafka store over TLS and SASL: the store contract, the kill -9 crash test, and
clear errors for bad credentials and untrusted certificates, against a real broker.

The broker is ``scripts/services/kafka start --secure`` (reused when running): its only
client listener is SASL_SSL with SCRAM-SHA-512, its certificate signed by a test CA.
A broker that cannot be started fails the tests: never a skip.
"""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from actionstate.errors import ActionStateError, ConfigError, StoreError
from actionstate.records.state import CallRecord, CallResult, CallStatus, StateKey
from actionstate.stores import open_store
from actionstate.stores.kafka.config import parse_url, split_config
from actionstate.testing.contract import StoreContract
from actionstate.testing.crash import crash_check
from actionstate.testing.services import SERVICES, start_service

TIMEOUT_MS = 5000
"""kafkaConnectTimeoutMs of the tests that expect an error: it must come within it."""


@dataclass(frozen=True)
class SecureKafka:
    """The secure broker and what a client needs for it (``client-config --secure``)."""

    servers: str
    username: str
    password: str
    ca: str

    def client_config(self, **overrides: str) -> dict[str, Any]:
        return {"bootstrap.servers": self.servers, "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": self.username,
                "sasl.password": self.password, "ssl.ca.location": self.ca, **overrides}

    def url(self, topic: str, **overrides: str) -> str:
        """A ``kafka://`` URL with every client setting in its query (the contract suite
        and the CLI take a URL only)."""
        query = {"partitions": "4", **self.client_config(**overrides)}
        del query["bootstrap.servers"]
        return f"kafka://{self.servers}/{topic}?{urlencode(query)}"


@pytest.fixture(scope="session")
def secure_kafka() -> SecureKafka:
    servers = start_service("kafka", "--secure")
    done = subprocess.run([str(SERVICES / "kafka"), "client-config", "--secure"],
                          capture_output=True, text=True, timeout=60, check=True)
    config = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert config["bootstrap.servers"] == servers
    assert Path(config["ssl.ca.location"]).is_file()
    return SecureKafka(servers, config["sasl.username"], config["sasl.password"],
                       config["ssl.ca.location"])


def _delete_topics(kafka: SecureKafka, names: list[str]) -> None:
    admin = AdminClient(kafka.client_config())
    for deleted in admin.delete_topics(names).values():
        try:
            deleted.result()
        except KafkaException:  # never created (the test failed first)
            pass


@pytest.fixture
def topic(secure_kafka: SecureKafka) -> Iterator[str]:
    name = f"actionstate-secure-{uuid.uuid4().hex[:12]}"
    yield name
    _delete_topics(secure_kafka, [name])


class TestKafkaSecureStore(StoreContract):
    @pytest.fixture
    def store_url(self, secure_kafka: SecureKafka, topic: str) -> str:
        return secure_kafka.url(topic)


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A CA certificate freshly made here: it did not sign the broker's."""
    home = tmp_path_factory.mktemp("other-ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=not the broker's CA", "-keyout", str(home / "ca.key"),
                    "-out", str(home / "ca.pem")], capture_output=True, check=True, timeout=60)
    return str(home / "ca.pem")


def _open_error(url: str, timeout_ms: int = TIMEOUT_MS,
                options: dict[str, Any] | None = None) -> tuple[ActionStateError, float]:
    """The error opening the store (with keyword ``options``) fails with, and how long
    it took (seconds)."""
    begin = time.monotonic()
    with pytest.raises(ActionStateError) as info:
        open_store(url, kafkaConnectTimeoutMs=timeout_ms, **(options or {}))
    return info.value, time.monotonic() - begin


@pytest.mark.parametrize("where", ["url", "option"])
def test_a_wrong_password_is_a_clear_error_within_the_timeout(
        secure_kafka: SecureKafka, topic: str, where: str,
        caplog: pytest.LogCaptureFixture) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    with caplog.at_level(logging.DEBUG, logger="actionstate"):
        if where == "url":
            error, took = _open_error(secure_kafka.url(topic, **{"sasl.password": wrong}))
        else:
            url = secure_kafka.url(topic)
            url = url.replace(f"sasl.password={secure_kafka.password}&", "")
            error, took = _open_error(url, options={"sasl.password": wrong})
    message = str(error)
    assert isinstance(error, StoreError), message
    assert took < TIMEOUT_MS / 1000 + 2, f"took {took:.1f}s"
    assert f"authentication failed for user {secure_kafka.username!r} (SCRAM-SHA-512)" in message
    assert "check sasl.username and sasl.password" in message and secure_kafka.servers in message
    for secret in (wrong, secure_kafka.password):
        assert secret not in message and secret not in repr(error)
        assert secret not in caplog.text, "librdkafka's log and the store's show no password"


@pytest.mark.parametrize("ca", ["other", "none"])
def test_an_untrusted_certificate_is_a_clear_error_within_the_timeout(
        secure_kafka: SecureKafka, topic: str, other_ca: str, ca: str) -> None:
    url = secure_kafka.url(topic, **({"ssl.ca.location": other_ca} if ca == "other" else {}))
    if ca == "none":  # librdkafka's default: the system's CAs, which do not know it
        url = url.replace("&ssl.ca.location=" + secure_kafka.ca.replace("/", "%2F"), "")
        assert "ssl.ca.location" not in url
    error, took = _open_error(url)
    message = str(error)
    assert isinstance(error, StoreError), message
    assert took < TIMEOUT_MS / 1000 + 2, f"took {took:.1f}s"
    assert "TLS handshake" in message and "certificate is not trusted" in message
    assert "set ssl.ca.location to the CA certificate" in message
    assert secure_kafka.password not in message


def test_a_plaintext_client_is_refused_within_the_timeout(secure_kafka: SecureKafka) -> None:
    """No SASL_SSL settings at all: the broker drops the connection; the error comes at
    the timeout and says which settings to look at."""
    error, took = _open_error(f"kafka://{secure_kafka.servers}/never-created", 2000)
    assert isinstance(error, StoreError) and took < 2 + 2, (error, took)
    assert "if its listener needs TLS or SASL, set security.protocol" in str(error)


def test_the_password_never_shows(secure_kafka: SecureKafka, topic: str,
                                  caplog: pytest.LogCaptureFixture) -> None:
    """Not in the store's URL (runners keep it in checkpoints), nor in reprs of the
    settings, nor in the errors of options that disagree or that librdkafka refuses,
    nor in the log of a store that worked."""
    password = secure_kafka.password
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG, logger="actionstate"):
        url = secure_kafka.url(topic)
        store = open_store(url)
        store.rebuild(None)
        store.put(CallRecord(StateKey("k", 0, "act", "e" * 64), 0,
                             CallResult("f", "d" * 64, CallStatus.SUCCEEDED, "over SASL_SSL")))
        store.flush()
        assert "sasl.password=***" in store.url
        seen += [store.url, repr(store), repr(vars(store).get("_topic"))]
        store.close()
        settings = parse_url(url, {})
        seen += [repr(settings), repr(split_config(settings.servers, settings.client_config))]
        refused: list[dict[str, Any]] = [
            {"sasl.password": "another-password"},
            {"sasl.jaas.config": f'username="u" password="{password}";'},
            {"producer.ssl.key.password": password, "ssl.key.pem": password}]
        for options in refused:
            with pytest.raises(ConfigError) as info:
                open_store(url, kafkaConnectTimeoutMs=TIMEOUT_MS, **options)
            seen += [str(info.value), repr(info.value)]
    assert "disagree" in seen[-6] and "sasl.password=***" in seen[-6]
    for text in [*seen, caplog.text]:
        assert password not in text and "another-password" not in text, text


@pytest.mark.slow
def test_sigkill_at_random_points_kafka_sasl_ssl(tmp_path: Path,
                                                 secure_kafka: SecureKafka) -> None:
    """The crash test of tests/test_crash_kafka.py over SASL_SSL; afterwards nothing the
    runs wrote (state dir, checkpoints, stderr) holds the password."""
    topic = f"actionstate-crash-secure-{uuid.uuid4().hex[:12]}"
    try:
        crash_check(tmp_path, secure_kafka.url(topic), seed=5)
    finally:
        _delete_topics(secure_kafka, [topic])
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any("state" in path.parts for path in written)
    leaks = [path for path in written if secure_kafka.password.encode() in path.read_bytes()]
    assert not leaks, f"the password is in {leaks}"
