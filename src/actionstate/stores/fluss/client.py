"""The Fluss client driven from sync code: every call runs on the process's client loop
(:mod:`.loop`), and the client's errors become :class:`StoreError` saying what to do."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import fluss

from actionstate.errors import ActionStateError, ConfigError, StoreError
from actionstate.stores.fluss.loop import background_loop, detach
from actionstate.stores.fluss.sockets import addresses, disable_nagle

__all__ = ["HINT", "FlussClient"]

HINT = "start it (scripts/services/fluss start) or fix flussBootstrapServers"
_STALL_S = 2.0  # an unacknowledged write this old makes the client refresh its metadata
_CLOSE_S = 10.0
_NODELAY_EVERY_S = 5.0
_TRANSIENT = {
    fluss.ErrorCode.NETWORK_EXCEPTION, fluss.ErrorCode.TABLE_NOT_EXIST,
    fluss.ErrorCode.INVALID_TABLE_EXCEPTION, fluss.ErrorCode.UNKNOWN_TABLE_OR_BUCKET_EXCEPTION,
    fluss.ErrorCode.NOT_LEADER_OR_FOLLOWER, fluss.ErrorCode.LEADER_NOT_AVAILABLE_EXCEPTION,
    fluss.ErrorCode.REQUEST_TIME_OUT,
}

log = logging.getLogger("actionstate.stores.fluss")
T = TypeVar("T")


class FlussClient:
    """One connection to a Fluss cluster, used from any thread.

    Args:
        servers: the bootstrap servers (named in errors).
        properties: the client's properties.
        timeout: seconds to wait for the cluster, and to retry what a retry may fix.
        table_name: the table the store uses (named in errors).
    """

    def __init__(self, servers: str, properties: Mapping[str, str], timeout: float,
                 table_name: str) -> None:
        self.servers = servers
        self.timeout = timeout
        self.table_name = table_name
        self._loop = background_loop()
        self._peers: set[tuple[str, int]] | None = None  # the servers' addresses
        self._nodelay_at = 0.0
        try:
            config = fluss.Config(dict(properties))
        except fluss.FlussError as exc:
            raise ConfigError(f"invalid Fluss client option: {exc}") from None
        self.connection = self.call(lambda: fluss.FlussConnection.create(config), "connect",
                                    retry=False)
        self.admin = self.connection.get_admin()

    def call(self, fn: Callable[[], Awaitable[T]], what: str, *, retry: bool = True,
             timeout: float | None = None) -> T:
        """Run ``fn()`` on the client's event loop thread; Fluss errors become StoreError.

        With ``retry``, retriable errors (leader moves, a restarting tablet server) are
        retried until the timeout (the client's, unless given).
        """
        return self.start(fn, what, retry=retry, timeout=timeout)()

    def start(self, fn: Callable[[], Awaitable[T]], what: str, *, retry: bool = True,
              timeout: float | None = None) -> Callable[[], T]:
        """Begin :meth:`call` of ``fn`` on the loop thread and return at once; the
        function returned waits for its result (errors as :meth:`call` raises them)."""
        timeout = self.timeout if timeout is None else timeout
        loop = self._loop

        async def run() -> T:
            if not retry:
                return await fn()
            delay = 0.05
            deadline = loop.time() + timeout
            while True:
                try:
                    return await fn()
                except fluss.FlussError as exc:
                    if not (_retriable(exc) and loop.time() + delay < deadline):
                        raise
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

        future = asyncio.run_coroutine_threadsafe(run(), loop)

        def result() -> T:
            try:
                return future.result(timeout + 1)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise StoreError(
                    f"Fluss at {self.servers} did not answer in {timeout:.0f} s "
                    f"({what}): {HINT}") from None
            except ActionStateError:
                raise
            except Exception as exc:  # the client raises FlussError and plain RuntimeErrors
                raise StoreError(self.explain(exc, what)) from None

        return result

    def acknowledge(self, start: Callable[[], Awaitable[None]], what: str,
                    probe: Callable[[], Awaitable[object]],
                    meanwhile: Callable[[], bool] | None = None) -> None:
        """Run ``start()`` (a write, or a write's acknowledgement) on the client's loop and
        block until it is acknowledged; Fluss errors become StoreError.

        The caller waits on a plain lock released by a done-callback: cheaper than
        ``run_coroutine_threadsafe`` (no Task for a bare future, no Condition), which
        matters for sync puts. While the acknowledgement stalls, ``probe()`` refreshes
        the client's metadata: pyfluss 1.0.0's writer can otherwise wait forever for a
        bucket whose leader came back (a restarted tablet server). ``meanwhile()``, if
        given, is called while the acknowledgement is not in, until it returns False.
        """
        loop = self._loop
        done = threading.Lock()
        done.acquire()
        outcome: list[Any] = []
        futures: list[asyncio.Future[None]] = []

        def begin() -> None:
            try:
                future = asyncio.ensure_future(start())
            except Exception as exc:  # handed to the caller
                outcome.append(exc)
                done.release()
                return
            futures.append(future)
            timers: list[asyncio.TimerHandle] = []

            def poke() -> None:
                detach(self._refresh_metadata(probe))
                timers.append(loop.call_later(_STALL_S, poke))

            timers.append(loop.call_later(_STALL_S, poke))

            def finish(f: asyncio.Future[None]) -> None:
                timers[-1].cancel()
                outcome.append(f.exception() if not f.cancelled() else
                               asyncio.CancelledError())
                done.release()

            future.add_done_callback(finish)

        loop.call_soon_threadsafe(begin)
        acknowledged = False
        if meanwhile is not None:
            while not (acknowledged := done.acquire(blocking=False)) and meanwhile():
                pass
        if not acknowledged and not done.acquire(timeout=self.timeout):
            loop.call_soon_threadsafe(lambda: [f.cancel() for f in futures])
            raise StoreError(
                f"Fluss at {self.servers} did not acknowledge in "
                f"{self.timeout:.0f} s ({what}): {HINT}")
        error = outcome[0]
        if error is None:
            return
        if isinstance(error, ActionStateError):
            raise error
        raise StoreError(self.explain(error, what)) from None

    def keep_nodelay(self) -> None:
        """Before a write: :meth:`disable_nagle` if it last ran a few seconds ago (the
        client opens connections lazily, and again after a server restart)."""
        if time.monotonic() - self._nodelay_at > _NODELAY_EVERY_S:
            self.disable_nagle()

    def disable_nagle(self) -> None:
        """Set TCP_NODELAY on this process's connections to the cluster's servers (see
        :mod:`.sockets`)."""
        if self._peers is None:
            nodes = self.call(self.admin.get_server_nodes, "list the servers")
            self._peers = addresses([(node.host, node.port) for node in nodes])
        self._nodelay_at = time.monotonic()
        disable_nagle(self._peers)

    def close(self) -> None:
        """Close the connection (abandoned, with a warning, if it does not close in time)."""
        self.call(self._close_connection, "close the connection", retry=False)

    def explain(self, exc: Exception, what: str) -> str:
        """What went wrong in ``what``, and what to do about it."""
        code = getattr(exc, "error_code", None)
        place = f"Fluss at {self.servers}: cannot {what}"
        if code == fluss.ErrorCode.AUTHENTICATE_EXCEPTION:
            return (f"{place}: authentication failed ({exc}); check flussSecurityProtocol, "
                    "flussSaslMechanism and flussSaslUsername/flussSaslPassword (or "
                    "flussSaslJaasConfig)")
        if code == fluss.ErrorCode.AUTHORIZATION_EXCEPTION:
            return f"{place}: not authorized ({exc}); grant the SASL user access to the table"
        if code == fluss.ErrorCode.NETWORK_EXCEPTION:
            return f"{place}: cannot reach the cluster ({exc}); {HINT}"
        if "no leader" in str(exc).lower():
            return (f"{place}: buckets of {self.table_name} have no leader ({exc}); check that "
                    "the tablet servers are up; a table just created that never gets leaders "
                    "was missed by the coordinator: drop it (or restart the coordinator)")
        return f"{place}: {exc}"

    async def _refresh_metadata(self, probe: Callable[[], Awaitable[object]]) -> None:
        self._nodelay_at = 0.0  # the client may have reconnected
        with contextlib.suppress(Exception):
            await asyncio.wait_for(probe(), _STALL_S)

    async def _close_connection(self) -> None:
        try:
            await asyncio.wait_for(self.connection.close(), _CLOSE_S)
        except TimeoutError:
            log.warning("Fluss connection to %s did not close in %.0f s; abandoned it",
                        self.servers, _CLOSE_S)


def _retriable(exc: fluss.FlussError) -> bool:
    # While a new table's buckets get leaders or a tablet server restarts, the client
    # reports "no leader" as a plain client error and a missing table as not found.
    return (exc.is_retriable or exc.error_code in _TRANSIENT
            or "no leader" in str(exc).lower())
