"""Retry policies for durable calls: attempts, exponential backoff with jitter and a cap.

Only a call's final outcome is recorded. A failure that was retryable when the
attempts ran out is recorded as such, and the next run tries the call again
(the outage may be over); a non-retryable failure is replayed as recorded.
"""

from __future__ import annotations

import random
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field

from actionstate.errors import ConfigError

__all__ = ["NO_RETRY", "RetryPolicy", "is_transient", "retry_after"]

_TRANSIENT_NAMES = frozenset({
    # the openai SDK's transient errors, recognised by name (the SDK is an optional extra)
    "APIConnectionError", "APITimeoutError", "RateLimitError", "InternalServerError",
})


def retry_after(exc: BaseException) -> float | None:
    """The wait a failure asks for, in seconds: its ``retry_after`` attribute, or the
    ``Retry-After`` header (seconds) of the HTTP response it carries."""
    value = getattr(exc, "retry_after", None)
    if value is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None) or getattr(exc, "headers", None)
        value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None  # an HTTP date: the backoff decides


def is_transient(exc: BaseException) -> bool:
    """The default test: timeouts, connection errors, HTTP 429 and 5xx answers (the
    model clients' errors carry ``status``), and errors that say ``retryable = True``."""
    flag = getattr(exc, "retryable", None)
    if isinstance(flag, bool):
        return flag
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    if isinstance(exc, urllib.error.HTTPError):
        status = exc.code
    elif isinstance(exc, urllib.error.URLError):
        return True  # no answer at all: refused, unreachable, timed out
    if isinstance(status, int):
        return status == 429 or status >= 500
    return type(exc).__name__ in _TRANSIENT_NAMES


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
        base = min(self.initial_interval * self.backoff ** (attempt - 1), self.max_interval)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


NO_RETRY = RetryPolicy(max_attempts=1)
"""One attempt: a failure is the outcome."""
