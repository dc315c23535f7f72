"""Retry policies for durable calls: attempts, exponential backoff with jitter and a cap.

Only a call's final outcome is recorded. A failure that was retryable when the
attempts ran out is recorded as such, and the next run tries the call again
(the outage may be over); a non-retryable failure is replayed as recorded.
"""

from __future__ import annotations

import dataclasses
import email.utils
import math
import random
import re
import time
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from actionstate.errors import ConfigError

__all__ = ["NO_RETRY", "RETRY_OPTIONS", "RetryPolicy", "is_transient", "parse_retry_after",
           "retry_after", "split_options", "wait_asked"]

_TRANSIENT_NAMES = frozenset({
    # the openai SDK's transient errors, recognised by name (the SDK is an optional extra)
    "APIConnectionError", "APITimeoutError", "RateLimitError", "InternalServerError",
})
_TRANSIENT_CLASSES = {
    # HTTP libraries' timeouts and connection failures, by the module and name of a class
    # in the failure's MRO (so that neither library is imported); httpx2 is httpx's
    # successor, which the openai SDK uses
    "httpx": frozenset({"TimeoutException", "NetworkError", "ConnectError",
                        "RemoteProtocolError"}),
    "requests": frozenset({"ConnectionError", "Timeout"}),
}
_TRANSIENT_STATUS = frozenset({408, 429})
"""HTTP statuses worth another attempt besides the 5xx: request timeout, too many requests."""


def parse_retry_after(value: object) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait: a number of seconds, or an
    HTTP-date (the time from now until then); None if it is neither. Never negative."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
            seconds = when.timestamp() - time.time()  # an HTTP-date is in GMT
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def wait_asked(headers: Any) -> float | None:
    """Seconds an HTTP response's headers ask to wait: ``retry-after-ms`` (milliseconds,
    as OpenAI's servers send it) first, else ``Retry-After``; None if neither says."""
    millis = parse_retry_after(_header(headers, "retry-after-ms"))
    if millis is not None:
        return millis / 1000
    return parse_retry_after(_header(headers, "retry-after"))


def _header(headers: Any, name: str) -> Any:
    """A header by its lower-case name, from any mapping of headers (the HTTP libraries'
    are case-insensitive; a plain dict is searched)."""
    if not hasattr(headers, "get"):
        return None
    value = headers.get(name)
    if value is None and isinstance(headers, dict):
        value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    return value


def _attribute(holder: object, name: str) -> Any:
    """``getattr(holder, name, None)``, also for a property that raises (httpx's
    ``request`` and ``response`` do when the error has none)."""
    try:
        return getattr(holder, name, None)
    except Exception:  # a property's own failure: the attribute is absent
        return None


def retry_after(exc: BaseException) -> float | None:
    """The wait a failure asks for, in seconds: its ``retry_after`` attribute (seconds
    or an HTTP-date), or the ``retry-after-ms`` / ``Retry-After`` header of the HTTP
    response it carries (or of its own ``headers``)."""
    asked = parse_retry_after(_attribute(exc, "retry_after"))
    if asked is not None:
        return asked
    for holder in (_attribute(exc, "response"), exc):
        asked = wait_asked(_attribute(holder, "headers"))
        if asked is not None:
            return asked
    return None


def _status(exc: BaseException) -> int | None:
    """The HTTP status a failure carries: its own ``status`` / ``status_code`` (the model
    clients' errors), urllib's ``code``, or its response's (httpx, requests)."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code
    for holder in (exc, _attribute(exc, "response")):
        for name in ("status", "status_code"):
            status = _attribute(holder, name)
            if isinstance(status, int) and not isinstance(status, bool):
                return status
    return None


def _library_transient(exc: BaseException) -> bool:
    for cls in type(exc).__mro__:
        library = cls.__module__.partition(".")[0]
        names = _TRANSIENT_CLASSES.get("httpx" if library == "httpx2" else library)
        if names is not None and cls.__name__ in names:
            return True
    return False


def is_transient(exc: BaseException) -> bool:
    """The default test: timeouts, connection errors (the stdlib's, httpx's and
    requests'), HTTP 408, 429 and 5xx answers wherever the error carries a status, and
    errors that say ``retryable = True`` (``False`` makes any failure permanent)."""
    flag = getattr(exc, "retryable", None)
    if isinstance(flag, bool):
        return flag
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    status = _status(exc)
    if status is not None:
        return status in _TRANSIENT_STATUS or 500 <= status <= 599
    if isinstance(exc, urllib.error.URLError):
        return True  # no answer at all: refused, unreachable, timed out
    return _library_transient(exc) or type(exc).__name__ in _TRANSIENT_NAMES


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a durable call is tried.

    Attributes:
        max_attempts: attempts in all (1: no retry).
        initial_interval: seconds before the second attempt.
        backoff: each later wait is this many times the one before.
        max_interval: the longest wait (a ``Retry-After`` is capped by it too).
        jitter: each wait is scaled by a random factor in [1 - jitter, 1 + jitter].
        retryable: which failures are worth another attempt.
    """

    max_attempts: int = 4
    initial_interval: float = 1.0
    backoff: float = 2.0
    max_interval: float = 30.0
    jitter: float = 0.2
    retryable: Callable[[BaseException], bool] = field(default=is_transient, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max attempts must be at least 1, got {self.max_attempts}")
        if self.initial_interval < 0 or self.max_interval < 0 or self.backoff < 1:
            raise ConfigError("retry intervals must be >= 0 and the backoff >= 1")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"retry jitter must be in [0, 1), got {self.jitter}")

    def delay(self, attempt: int, exc: BaseException) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        asked = retry_after(exc)
        if asked is not None:
            return min(asked, self.max_interval)
        # the jitter first, then the cap: no wait is longer than max_interval (a base
        # beyond max_interval / (1 - jitter) is capped whatever the draw: stop there,
        # before a large attempt number overflows the power)
        ceiling = self.max_interval / (1 - self.jitter)
        try:
            base = min(self.initial_interval * self.backoff ** (attempt - 1), ceiling)
        except OverflowError:
            base = ceiling
        return min(base * random.uniform(1 - self.jitter, 1 + self.jitter), self.max_interval)


NO_RETRY = RetryPolicy(max_attempts=1)
"""One attempt: a failure is the outcome."""


RETRY_OPTIONS = ("max-retries", "retry-wait-interval")
"""Flink Agents' names of a run's retry settings, accepted among the options
(``--option max-retries=2``) as ``--max-retries`` / ``--retry-wait-interval``."""

_DURATION = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|min)?\s*")
_UNIT = {None: 1.0, "s": 1.0, "ms": 0.001, "min": 60.0}


def split_options(policy: RetryPolicy,
                  options: Mapping[str, str]) -> tuple[RetryPolicy, dict[str, str]]:
    """``policy`` with the :data:`RETRY_OPTIONS` found in ``options`` applied, and the
    other options (the store's). ``max-retries``: attempts after the first;
    ``retry-wait-interval``: seconds before the first retry (a number, or with a unit:
    ``500ms``, ``2s``, ``1min``)."""
    rest = dict(options)
    changes: dict[str, Any] = {}
    if "max-retries" in rest:
        text = rest.pop("max-retries")
        if not text.strip().isdigit():
            raise ConfigError(f"option max-retries={text!r} must be a whole number >= 0")
        changes["max_attempts"] = int(text) + 1
    if "retry-wait-interval" in rest:
        text = rest.pop("retry-wait-interval")
        match = _DURATION.fullmatch(text)
        if match is None:
            raise ConfigError(f"option retry-wait-interval={text!r} must be a duration: "
                              "seconds (1.5) or with a unit (500ms, 2s, 1min)")
        changes["initial_interval"] = float(match[1]) * _UNIT[match[2]]
    return dataclasses.replace(policy, **changes), rest
