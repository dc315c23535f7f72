"""The commands beside ``run``: ``inspect``, ``keygen``, ``demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from actionstate.errors import AgentDefinitionError
from actionstate.loader import load_agent_class

__all__ = ["demo_command", "inspect_command", "keygen_command"]


def inspect_command(args: argparse.Namespace) -> int:
    from actionstate.inspection import describe_state, render_text

    spec = args.agent or _remembered_agent(Path(args.state))
    if spec:
        load_agent_class(spec)  # registers the event classes its module defines
    try:
        report = describe_state(Path(args.state), key=args.key, store_url=args.store)
    except AgentDefinitionError as exc:
        raise AgentDefinitionError(f"{exc}; give the run's agent: actionstate inspect "
                                   "--state DIR --agent path/to/file.py:Class") from None
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    else:
        print(render_text(report))
    return 0


def _remembered_agent(state: Path) -> str | None:
    """The agent the run that took the last checkpoint ran, if its file is still there."""
    if not (state / "actionstate.json").exists():
        return None
    from actionstate.runners.statedir import StateDir

    checkpoint = StateDir(state, sealed_ok=True).load_checkpoint()
    spec = checkpoint.agent if checkpoint is not None else None
    if spec is None or not Path(spec.rpartition(":")[0]).is_file():
        return None
    return spec


def keygen_command(args: argparse.Namespace) -> int:
    from actionstate.records.crypto import new_key_entry

    print(new_key_entry(args.id))
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from actionstate.demo.run import run_demo

    return int(run_demo(args.dir, args.inputs))
