"""Store options: one parser, one set of rules, for every backend.

A store URL names the address in its host and path, and may carry options as
query parameters; :func:`~actionstate.stores.open_store` adds keyword options
(the CLI's ``--option NAME=VALUE``). The rules, the same for every backend:

* names are Flink Agents' option names, plus a backend's short aliases;
* a setting given twice (in the URL and as a keyword, by an alias and by its
  name, in the URL's host or path and as an option) must have one value, or it
  is a :class:`ConfigError` naming both; there is no silent precedence;
* durations are milliseconds, in options whose names end in ``Ms``;
* an unknown name is a :class:`ConfigError` listing the known ones, unless the
  backend passes it through to its client (librdkafka properties, for example).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit, urlunsplit

from actionstate.errors import ConfigError

__all__ = ["IGNORED", "MASK", "Option", "Parsed", "is_secret", "parse_options", "redact_url",
           "url_servers"]

IGNORED = frozenset({"actionStateStoreBackend"})
"""Accepted by every backend and not used (it chose the backend)."""

_SECRET = re.compile(
    r"pass(word|wd)?|secret|jaas|token|api[._-]?key|credential|\.pem$|oauthbearer\.config",
    re.IGNORECASE)
MASK = "***"


def is_secret(name: str) -> bool:
    """An option whose value is a credential (``sasl.password``, ``flussSaslJaasConfig``,
    ``ssl.key.pem``, ...): never shown in a message, a checkpoint or a report."""
    return bool(_SECRET.search(name))


def redact_url(url: str) -> str:
    """``url`` with the values of its secret query options and any password in its
    authority replaced by ``***`` (what a checkpoint or a report may show)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        if ":" in user:
            netloc = f"{user.split(':', 1)[0]}:{MASK}@{host}"
    pairs = parts.query.split("&") if parts.query else []
    masked = [f"{pair.partition('=')[0]}={MASK}"
              if is_secret(unquote_plus(pair.partition("=")[0])) else pair for pair in pairs]
    if masked == pairs and netloc == parts.netloc:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(masked), parts.fragment))


def shown(name: str, value: str) -> str:
    """``value`` as a message may show it: masked for a secret option."""
    return MASK if is_secret(name) else repr(value)


@dataclass(frozen=True)
class Option:
    """One option a backend knows: its name, default, aliases and whether it is an integer."""

    name: str
    default: str | None = None
    aliases: tuple[str, ...] = ()
    integer: bool = False


@dataclass(frozen=True)
class Parsed:
    """What :func:`parse_options` found: known options (with defaults) and passed-through ones."""

    values: dict[str, str | None]
    passthrough: dict[str, str]

    def integer(self, name: str) -> int:
        value = self.values[name]
        assert value is not None, f"{name} has no default"
        return int(value)


def parse_options(
    backend: str, specs: Sequence[Option], query: str, given: Mapping[str, Any], *,
    from_url: Mapping[str, str] | None = None,
    passthrough: Callable[[str], bool] = lambda name: False, what: str = "store",
) -> Parsed:
    """Merge the URL's ``query``, the keyword options ``given`` and the values the URL's
    host and path give (``from_url``: option name -> value) under the rules above.
    Messages name the options ``f"{backend} {what} option"`` (a connector passes its
    own ``what``: ``"input"``, ``"output"``)."""
    by_name = {spec.name: spec for spec in specs}
    canonical = {alias: spec.name for spec in specs for alias in spec.aliases}
    canonical.update({name: name for name in by_name})
    found: dict[str, tuple[str, str]] = {}  # option -> (value, where it was given)
    extra: dict[str, str] = {}
    sources: list[tuple[str, list[tuple[str, Any]]]] = [
        ("the URL", list((from_url or {}).items())),
        ("the URL query", parse_qsl(query, keep_blank_values=True)),  # repeats kept
        ("the options", list(given.items())),
    ]
    for where, items in sources:
        for raw_name, raw_value in items:
            if raw_name in IGNORED or raw_value is None:
                continue
            text = str(raw_value)
            name = canonical.get(raw_name)
            if name is None:
                if not passthrough(raw_name):
                    known = sorted([*by_name, *(a for s in specs for a in s.aliases)])
                    fix = (f"use one of {', '.join(known)}" if known
                           else f"the {backend} {what} takes no options")
                    raise ConfigError(f"unknown {backend} {what} option {raw_name!r}: {fix}")
                name = raw_name
            label = f"{raw_name}={shown(raw_name, text)} in {where}"
            if name in found and found[name][0] != text:
                raise ConfigError(f"{backend} {what}: {found[name][1]} and {label} disagree: "
                                  "give the setting once")
            found.setdefault(name, (text, label))
            if name not in by_name:
                extra[name] = text
    values: dict[str, str | None] = {}
    for spec in specs:
        value: str | None = found[spec.name][0] if spec.name in found else spec.default
        if spec.integer and value is not None:
            try:
                int(value)
            except ValueError:
                raise ConfigError(f"{backend} {what} option {spec.name}="
                                  f"{shown(spec.name, value)} must be an integer") from None
        values[spec.name] = value
    return Parsed(values, extra)


def url_servers(host: str, query: str, given: Mapping[str, Any], option: str) -> str:
    """The servers a URL names: its host, or the comma-separated list that ``option``
    gives (in the query or as a keyword) when the host is one of them."""
    for listed in (given.get(option), *(v for k, v in parse_qsl(query) if k == option)):
        if host and listed is not None and host in str(listed).split(","):
            return str(listed)
    return host
