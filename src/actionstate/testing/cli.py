"""Run the ``actionstate`` command in a subprocess, as a user does, and check how it ends."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["actionstate", "assert_clean_error", "run_args", "write_lines"]


def actionstate(*args: str, env: Mapping[str, str] | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m actionstate ARGS`` with ``env`` added to this process's environment."""
    return subprocess.run([sys.executable, "-m", "actionstate", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout,
                          check=False)


def run_args(tmp: Path, agent: str, *extra: str, key: str = "k") -> list[str]:
    """``run AGENT`` over ``tmp/in.jsonl`` into ``tmp/out.jsonl``, state in ``tmp/state``;
    the agent spec is the second item (a test may replace it)."""
    return ["run", agent, "--input", str(tmp / "in.jsonl"), "--key", key, "--state",
            str(tmp / "state"), "--output", str(tmp / "out.jsonl"), *extra]


def write_lines(path: Path, lines: list[str]) -> None:
    """Write ``lines``, each ended by a newline."""
    path.write_text("".join(line + "\n" for line in lines))


def assert_clean_error(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    """The command failed with a message holding every phrase, and no traceback."""
    assert result.returncode != 0, f"exit 0, expected an error:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
