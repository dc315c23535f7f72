"""A job whose stop signal lands while its final checkpoint runs (tests/test_late_signal.py).

``python late_signal.py DIR SIGNAL [STOP_AT]`` runs :class:`Record` with
:func:`actionstate.run` over ``DIR/in.jsonl`` (inputs ``{"id": n, "k": ...}``) into
``DIR/out.jsonl``, state in ``DIR/state``, one input at a time and no periodic
checkpoint (every 60 s): its checkpoints are the first one (before any input) and the
final one. The output file's sink sends this process ``SIGNAL`` (``SIGINT``,
``SIGTERM``; ``-``: none, a plain rerun) from inside the final checkpoint, in its
second ``prepare``. With ``STOP_AT``, the action of input ``STOP_AT`` first sends
SIGTERM, before its call (a graceful stop: that input finishes, no other starts; the
signal then lands in its final checkpoint).

Every durable call that runs appends its input's id to ``DIR/calls.log``. Prints the
number of checkpoints the sink took part in and the run's counters as JSON; exits 130
on a KeyboardInterrupt, as the command does.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import actionstate
from actionstate import Agent, InputEvent, OutputEvent, RunnerContext, action
from actionstate.connectors.files import JsonlSink

CALLS = "calls.log"


def record(path: str, n: int) -> int:
    """The paid call: logged each time it runs."""
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"{n}\n")
    return n * 2


class Record(Agent):
    @action(InputEvent)
    async def handle(self, event: InputEvent, ctx: RunnerContext) -> None:
        n = event.input["id"]
        if str(n) == os.environ.get("LATE_SIGNAL_STOP_AT"):
            os.kill(os.getpid(), signal.SIGTERM)  # stop() runs while the call is awaited
        doubled = await ctx.durable_execute_async(record, os.environ["LATE_SIGNAL_CALLS"], n)
        ctx.send_event(OutputEvent(output={"id": n, "doubled": doubled}))


class SignallingSink(JsonlSink):
    """An output file that sends this process ``sig`` from its second ``prepare`` (the
    final checkpoint's: the first is the fresh start's, before any input)."""

    def __init__(self, path: Path, sig: signal.Signals | None) -> None:
        super().__init__(path)
        self.sig, self.prepares = sig, 0

    def prepare(self) -> dict[str, Any]:
        self.prepares += 1
        if self.prepares == 2 and self.sig is not None:
            os.kill(os.getpid(), self.sig)  # delivered before kill returns
        return super().prepare()


def main(folder: Path, sig_name: str, stop_at: str | None) -> int:
    os.environ["LATE_SIGNAL_CALLS"] = str(folder / CALLS)
    if stop_at is not None:
        os.environ["LATE_SIGNAL_STOP_AT"] = stop_at
    sink = SignallingSink(folder / "out.jsonl",
                          None if sig_name == "-" else signal.Signals[sig_name])
    try:
        stats = actionstate.run(Record, source=str(folder / "in.jsonl"), key="k", sink=sink,
                                state=folder / "state", concurrency=1,
                                checkpoint_interval=60)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps({"prepares": sink.prepares, "stopped_by": stats.stopped_by,
                      **stats.counters()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
