"""The progress ``actionstate run`` shows on stderr."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from actionstate.durable.stats import RunStats, rate_text

__all__ = ["Progress"]


class Progress:
    """A status line redrawn on a terminal, or a plain line every ``every`` seconds
    otherwise; where a resumed run took up its input; a last line at the end."""

    def __init__(self, stream: TextIO, every: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._every, self._clock = every, clock
        self._line = ""
        self._stats: RunStats | None = None
        self._first: tuple[float, float] | None = None  # (elapsed, share) at the first report
        self._printed: float | None = None
        self._written = ""  # the last plain line written (off a terminal)

    def __call__(self, stats: RunStats, elapsed: float) -> None:
        if self._stats is None and stats.resumed_at is not None:
            self._write(f"resuming at {stats.resumed_at}\n")
        self._stats = stats
        if stats.inputs == 0 and stats.resumed_at is not None and not self._written:
            return  # a finished job's rerun, or nothing done yet: finish() says which
        rate = stats.inputs / elapsed if elapsed > 0 else 0.0
        parts = [f"{stats.inputs:,} inputs done"]
        fraction = stats.done_fraction
        if fraction is not None:
            if self._first is None:
                self._first = (elapsed, fraction)
            parts[0] += f" ({fraction:.0%} of the input)"
        parts += [f"{stats.outputs:,} outputs | calls: {stats.calls_executed:,} executed, "
                  f"{stats.calls_replayed:,} replayed | {rate_text(rate)}"]
        saved = stats.prompt_tokens_replayed + stats.completion_tokens_replayed
        if saved:
            parts.append(f"{saved:,} tokens replayed, not paid again")
        if fraction is not None and self._first is not None and fraction > self._first[1]:
            since, share = self._first  # the rate of this run, not of the earlier ones
            left = (elapsed - since) * (1 - fraction) / (fraction - share)
            parts.append(f"ETA {_clock_text(left)}")
        self._line = ", ".join(parts[:2]) + "".join(f" | {p}" for p in parts[2:])
        if self._tty:
            self._write("\r\x1b[2K" + self._line)
        elif self._printed is None or self._clock() - self._printed >= self._every:
            self._printed = self._clock()
            self._write(self._line + "\n")
            self._written = self._line

    def finish(self) -> None:
        stats = self._stats
        if stats is not None and stats.stopped_by is None and stats.inputs == 0 \
                and stats.resumed_at is not None:
            self._write(("\n" if self._tty else "") + "already complete: every input was "
                        "done by an earlier run; nothing to do\n")
            return
        if self._tty:
            self._write("\n")
        elif self._line and self._line != self._written:
            self._write(self._line + "\n")

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()


def _clock_text(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``42s``."""
    whole = int(seconds + 0.5)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole}s"
