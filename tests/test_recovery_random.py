"""Issue 7: SIGKILL at random moments, several times per job, with inputs in flight
across checkpoints (a slow model, several keys and calls per input), on SQLite,
Kafka and Fluss; once with ``--durability group``. The harness is
:mod:`actionstate.testing.recovery`.

What is checked, from the fake server's log of every request and the test's
record of every kill (both on ``time.monotonic()`` of this process):

* the outputs are those of an uninterrupted run, one per input;
* every call the run made is one the uninterrupted run made (no action ran
  again on top of state it had already changed);
* a call made again has a kill between its previous request and the repeat;
* what a kill costs an input is the latest of the calls it made in the killed
  run: in ``sync`` durability its last call only (a call starts once the call
  before it is recorded), for at most one input in flight per key and per
  ``--concurrency`` slot; in ``group`` durability the calls whose group commit
  had not happened yet;
* no call of an input whose output line was in the output file when the
  process was killed runs again (an output is written only after its records
  are durable: at once in ``sync``, after the group commit in ``group``).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import pytest

from actionstate.testing import FakeLLMServer
from actionstate.testing.fake_llm import Request
from actionstate.testing.recovery import (
    STORES,
    Item,
    Job,
    Kill,
    Reference,
    by_id,
    input_of,
    reference,
    run_of,
    store_url,
)
from tests.agents.recovery import TALLY

KEYS, CONCURRENCY = 6, 4
ITEMS: list[Item] = [{"id": f"r{i:02d}", "key": f"k{i % KEYS}", "calls": 2 + i % 2}
                     for i in range(32)]
LATENCY = (0.2, 0.5)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "seed"), list(zip(STORES, [7, 8, 9], strict=True)))
def test_sigkill_at_random_moments(tmp_path: Path, kind: str, seed: int,
                                   request: pytest.FixtureRequest,
                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    random_kills(tmp_path, tmp_path_factory, store_url(kind, request), "sync", seed)


@pytest.mark.slow
def test_sigkill_at_random_moments_group_durability(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    random_kills(tmp_path, tmp_path_factory, None, "group", 10)


def random_kills(tmp: Path, factory: pytest.TempPathFactory, store: str | None,
                 durability: str, seed: int) -> None:
    expected = reference(factory, TALLY, ITEMS)
    rng = random.Random(seed)
    # Seconds after each start: early in the first run (before or about its first
    # checkpoint), mid-run, then early in a restarted run (after its first checkpoint,
    # with the inputs in flight at the last kill still running), mid-run, early again.
    moments = [(rng.uniform(0.1, 1.0), False), (rng.uniform(1.0, 2.5), False),
               (rng.uniform(0.0, 0.3), True), (rng.uniform(1.0, 2.5), False),
               (rng.uniform(0.0, 0.3), True)]
    with FakeLLMServer(latency=LATENCY) as server:
        job = Job(tmp, TALLY, server, ITEMS, store, durability=durability,
                  concurrency=CONCURRENCY)
        if all(job.run_for(seconds, after_checkpoint=early) for seconds, early in moments):
            job.finish()
        requests = server.requests
    with open(tmp / "calls.jsonl", "w") as log:  # for a post-mortem of a failure
        for entry in [*map(vars, job.kills), *map(vars, requests)]:
            log.write(json.dumps(entry) + "\n")
    assert len(job.kills) >= 4, f"killed {len(job.kills)} times, at {moments}"
    problems = check_random_kills(job, requests, expected, durability)
    assert not problems, f"{len(problems)} problems after kills at {moments}:\n" + "\n".join(
        problems[:12])


def check_random_kills(job: Job, requests: list[Request], expected: Reference,
                       durability: str) -> list[str]:
    """Every way the job's outputs and calls differ from what recovery must keep."""
    problems: list[str] = []
    outputs = by_id(job.outputs())
    if outputs != expected.outputs:
        wrong = [o for o in outputs if o not in expected.outputs]
        problems.append(f"{len(outputs)} outputs, not the {len(expected.outputs)} of an "
                        f"uninterrupted run; not in it: {wrong[:3]}")
    made = {r.prompt for r in requests}
    if made != expected.prompts:
        problems.append(f"calls an uninterrupted run never makes: "
                        f"{sorted(made - expected.prompts)[:4]}; calls it makes that never "
                        f"ran: {sorted(expected.prompts - made)[:4]}")
    kills = {kill.run: kill for kill in job.kills}
    lost: dict[int, list[tuple[Request, Request]]] = defaultdict(list)
    runs_of_prompt: dict[str, list[Request]] = defaultdict(list)
    for r in requests:
        runs_of_prompt[r.prompt].append(r)
    for prompt, made_by in runs_of_prompt.items():
        for before, again in pairwise(sorted(made_by, key=lambda r: (run_of(r), r.received))):
            kill = kills.get(run_of(before))
            if kill is None or run_of(again) <= run_of(before):
                problems.append(f"{prompt!r} ran in run {run_of(before)} and again in run "
                                f"{run_of(again)} with no kill between")
            elif not kill.sent < again.received:  # (the run tag puts `before` before it)
                problems.append(f"{prompt!r}: requested again at {again.received:.3f}, "
                                f"before the kill of run {kill.run} at {kill.sent:.3f}")
            else:
                lost[kill.run].append((before, again))
    for kill in job.kills:
        problems += check_kill(kill, requests, lost[kill.run], durability)
    return problems


def check_kill(kill: Kill, requests: list[Request], lost: list[tuple[Request, Request]],
               durability: str) -> list[str]:
    """What one kill may cost: the latest calls of inputs that had no output yet."""
    problems = []
    done = {str(output["id"]) for output in kill.outputs}
    rerun = sorted({r.prompt for r in requests
                    if run_of(r) > kill.run and input_of(r.prompt) in done})
    if rerun:
        problems.append(f"kill {kill.run}: calls of inputs whose output was already "
                        f"written ran again: {rerun[:4]}")
    asked: dict[str, list[str]] = defaultdict(list)  # per input, in the killed run, in order
    for r in sorted(requests, key=lambda r: r.received):
        if run_of(r) == kill.run:
            asked[input_of(r.prompt)].append(r.prompt)
    lost_by_input: dict[str, set[str]] = defaultdict(set)
    for before, _ in lost:
        lost_by_input[input_of(before.prompt)].add(before.prompt)
    for name, prompts in sorted(lost_by_input.items()):
        # An input's records are written in call order, so a kill loses the end of what
        # it asked in that run; in sync durability a call starts only once the one
        # before is recorded: then that end is its last call alone.
        latest = asked[name][-len(prompts):]
        if set(latest) != prompts or (durability == "sync" and len(prompts) > 1):
            problems.append(f"kill {kill.run}: {sorted(prompts)} of input {name} ran again; "
                            f"it had asked {asked[name]} in the killed run, of which only "
                            f"the {'last' if durability == 'sync' else 'latest'} may run "
                            "again: a record was lost")
    if durability == "sync":  # each of those inputs had a call in flight at the kill
        bound = min(len(set(asked) - done), KEYS, CONCURRENCY)
        if len(lost_by_input) > bound:
            problems.append(f"kill {kill.run}: calls of {len(lost_by_input)} inputs ran "
                            f"again ({sorted(lost_by_input)}); at most {bound} were in flight")
    return problems
