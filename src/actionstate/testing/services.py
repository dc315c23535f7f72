"""The real local services tests run against, started by the project's scripts.

``scripts/services/<name> start`` assembles and starts a service from Maven
Central on 127.0.0.1 (or reuses a running one) and prints its address; these
helpers call it from a source checkout. A service that cannot start fails the
test that needs it: CI must not hide a missing service.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["CHECKOUT", "SERVICES", "Tables", "service_lock", "services_cache", "start_service"]

CHECKOUT = Path(__file__).resolve().parents[3]
"""The root of the source checkout these helpers run from."""
SERVICES = CHECKOUT / "scripts" / "services"


def start_service(name: str, *args: str) -> str:
    """Start (or reuse) ``scripts/services/<name>``; returns its address."""
    done = subprocess.run([str(SERVICES / name), "start", *args], capture_output=True,
                          text=True, timeout=600, check=False)
    if done.returncode != 0:
        pytest.fail(f"scripts/services/{name} start {' '.join(args)} failed:\n"
                    f"{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def services_cache() -> Path:
    """Where the service scripts keep their files, one directory per service:
    ``$ACTIONSTATE_CACHE``, default ``~/.cache/actionstate`` (scripts/services/_lib.sh)."""
    return Path(os.environ.get("ACTIONSTATE_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "actionstate")


@contextlib.contextmanager
def service_lock(name: str, *, exclusive: bool) -> Iterator[None]:
    """Hold the local service ``name``'s test lock, across processes: a test that
    restarts the service holds it exclusively for the restart, and a test in another
    process that needs the service up throughout holds it shared (scripts/test runs the
    Flink tests beside the main run). The lock file sits with the service's files."""
    path = services_cache() / name / "tests.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)


def delete_topics(servers: str, names: list[str]) -> None:
    """Delete the Kafka topics ``names`` (those that exist: a test may fail before
    creating one)."""
    from confluent_kafka import KafkaException  # the kafka extra
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": servers})
    for deleted in admin.delete_topics(names).values():
        try:
            deleted.result()
        except KafkaException:
            pass


class Tables:
    """URLs of new Fluss tables on one cluster; :meth:`drop` drops them (a lean
    cluster restarts its tablet server quickly)."""

    def __init__(self, address: str, database: str = "actionstate_test", **props: str) -> None:
        self.address, self.database, self.props = address, database, props
        self.names: list[str] = []

    def __enter__(self) -> Tables:
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop()

    def url(self, query: str = "buckets=4") -> str:
        self.names.append(f"t{uuid.uuid4().hex[:16]}")
        url = f"fluss://{self.address}/{self.database}.{self.names[-1]}"
        return f"{url}?{query}" if query else url

    def drop(self) -> None:
        import fluss  # the fluss extra

        async def drop_all() -> None:
            conn = await fluss.FlussConnection.create(fluss.Config(
                {"bootstrap.servers": self.address, **self.props}))
            try:
                admin = conn.get_admin()
                for name in self.names:
                    await admin.drop_table(fluss.TablePath(self.database, name),
                                           ignore_if_not_exists=True)
            finally:
                await conn.close()

        asyncio.run(asyncio.wait_for(drop_all(), 120))
