"""The ``actionstate`` command: run, inspect, demo.

:func:`main` parses the command line (:mod:`actionstate.cli.parser`) and runs the
command's handler: ``run`` (:mod:`actionstate.cli.run`), ``flink run``
(:mod:`actionstate.cli.flink_run`), ``inspect``, ``keygen`` and ``demo``
(:mod:`actionstate.cli.commands`).
"""

from __future__ import annotations

import logging
import sys

from actionstate.cli.parser import build_parser
from actionstate.errors import ActionFailedError, ActionStateError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 an action failed, 2 bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="actionstate: %(message)s")
    try:
        return int(args.command(args))
    except ActionFailedError as exc:
        print(f"error: {exc}\n{exc.hint}", file=sys.stderr)
        return 1
    except ActionStateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `actionstate inspect ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
