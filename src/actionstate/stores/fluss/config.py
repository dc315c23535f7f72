"""The Fluss store's options (see the package doc) and the client properties they make."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from actionstate.errors import ConfigError
from actionstate.stores.options import Option, parse_options, url_servers

__all__ = ["OPTIONS", "FlussSettings", "check_settings", "client_properties", "parse_url"]

_SERVERS, _DATABASE, _TABLE = ("flussBootstrapServers", "flussActionStateDatabase",
                               "flussActionStateTable")
OPTIONS = (
    Option(_SERVERS, "localhost:9123"),
    Option(_DATABASE, "flink_agents"),
    Option(_TABLE, "action_states"),
    Option("flussActionStateTableBuckets", "64", ("buckets",), integer=True),
    Option("flussSecurityProtocol"),
    Option("flussSaslMechanism"),
    Option("flussSaslJaasConfig"),
    Option("flussSaslUsername"),
    Option("flussSaslPassword"),
    Option("flussTimeoutMs", "60000", integer=True),
)
"""Every option a Fluss store knows, with its default."""

_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")
_JAAS = re.compile(r"""\b(username|password)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|(\S+?))\s*(?=;|\s|$)""")


@dataclass(frozen=True)
class FlussSettings:
    """What a ``fluss://`` URL and its options say, in the store constructor's terms."""

    servers: str
    database: str
    table: str
    buckets: int
    security: dict[str, str]
    """The client's ``security.*`` properties."""
    timeout: float
    """Seconds."""


def parse_url(url: str, options: Mapping[str, Any]) -> FlussSettings:
    """The settings of ``fluss://servers/database.table?option=value`` and keyword ``options``.

    The URL's host gives ``flussBootstrapServers`` and its path ``database.table`` (or
    ``table``) the database and table options, under the one rule of
    :mod:`actionstate.stores.options`: a setting given twice must agree. The host may
    also be one server of a list an option gives (a URL made by
    :func:`~actionstate.stores.url_from_options` names the first): the list is used.
    """
    split = urlsplit(url)
    if split.username or split.password:
        raise ConfigError("put Fluss credentials in flussSaslUsername/flussSaslPassword "
                          "options, not in the store URL's user info")
    from_url = {_SERVERS: url_servers(split.netloc, split.query, options, _SERVERS)}
    path = split.path.strip("/")
    if "." in path:
        from_url[_DATABASE], _, from_url[_TABLE] = path.partition(".")
    else:
        from_url[_TABLE] = path
    parsed = parse_options("Fluss", OPTIONS, split.query, options,
                           from_url={name: value for name, value in from_url.items() if value})
    timeout_ms = parsed.integer("flussTimeoutMs")
    if timeout_ms <= 0:
        raise ConfigError(f"flussTimeoutMs must be positive, got {timeout_ms}")
    values = parsed.values
    return FlussSettings(
        servers=str(values[_SERVERS]), database=str(values[_DATABASE]),
        table=str(values[_TABLE]), buckets=parsed.integer("flussActionStateTableBuckets"),
        security=_security(values), timeout=timeout_ms / 1000)


def _security(opts: Mapping[str, str | None]) -> dict[str, str]:
    """Flink Agents' security options as the client's ``security.*`` properties."""
    username, password = opts["flussSaslUsername"], opts["flussSaslPassword"]
    jaas = opts["flussSaslJaasConfig"]
    if jaas:
        found = {m[1]: m[2] if m[2] is not None else m[3] for m in _JAAS.finditer(jaas)}
        username = username or found.get("username")
        password = password or found.get("password")
        if username is None or password is None:
            raise ConfigError("flussSaslJaasConfig has no username=\"...\" password=\"...\" "
                              "(a PlainLoginModule entry): give them, or use "
                              "flussSaslUsername/flussSaslPassword")
    protocol = opts["flussSecurityProtocol"] or ("SASL" if username or password else None)
    props: dict[str, str] = {}
    if protocol:
        props["security.protocol"] = protocol
    if opts["flussSaslMechanism"]:
        props["security.sasl.mechanism"] = str(opts["flussSaslMechanism"])
    if username is not None:
        props["security.sasl.username"] = username.replace('\\"', '"')
    if password is not None:
        props["security.sasl.password"] = password.replace('\\"', '"')
    return props


def check_settings(database: str, table: str, buckets: int, timeout: float) -> None:
    """ConfigError unless the table's names, its bucket count and the timeout are valid."""
    for what, name in (("database", database), ("table", table)):
        if not _NAME.fullmatch(name):
            raise ConfigError(f"Fluss {what} name {name!r} is invalid: use letters, "
                              "digits, '_' or '-' (at most 200)")
    if buckets < 1:
        raise ConfigError(f"flussActionStateTableBuckets must be at least 1, got {buckets}")
    if timeout <= 0:
        raise ConfigError(f"Fluss timeout must be positive, got {timeout}")


def client_properties(servers: str, timeout: float,
                      security: Mapping[str, str] | None) -> dict[str, str]:
    """The client's properties: batch timeout 0 (a sync put pays no batching delay, and
    group commits are batched by the store, one Arrow batch per flush), an idempotent
    writer, and a full write buffer that fails after the timeout instead of blocking.

    Batches of 256 KB, not the client's 2 MB: a write to every bucket (a claim: 64 by
    default) takes a batch per bucket out of the 64 MB buffer. At 2 MB (128 MB for 64
    buckets) it waited for buffer, and with a read's poll under way meanwhile (a rebuild
    reads while it claims) the wait ran into the timeout: "buffer exhausted" in 9 of 12
    rebuilds. 256 KB fits 256 buckets; group commit throughput is unchanged.

    A fetch waits at a log's end for at most 5 ms, not 500: the server does not answer a
    waiting fetch when records arrive, and a rebuild's tail waits there for its claim
    (see ``Tail`` in :mod:`.scan`). Reads up to known offsets do not wait."""
    props = {"bootstrap.servers": servers,
             "connect-timeout": str(int(min(timeout, 10.0) * 1000)),
             "writer.batch-timeout-ms": "0", "writer.enable-idempotence": "true",
             "writer.buffer.wait-timeout-ms": str(int(timeout * 1000)),
             "writer.batch-size": str(256 << 10),
             "scanner.log.fetch.wait-max-time-ms": "5"}
    props.update(security or {})
    return props
