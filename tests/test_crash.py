"""`actionstate run` killed with SIGKILL at random points, resumed each time.

The agent is examples/triage.py: model calls go to a fake OpenAI-compatible
server in this process (it counts them), refunds to a ledger file. The harness
is :mod:`actionstate.testing.crash`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actionstate.testing.crash import crash_check


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 23])
def test_sigkill_at_random_points_sqlite_sync(tmp_path: Path, seed: int) -> None:
    crash_check(tmp_path, None, seed)
