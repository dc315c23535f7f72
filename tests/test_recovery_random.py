"""Issue 7: SIGKILL at random moments, five times per job, with inputs in flight across
checkpoints (a slow model, 0.2-0.4 s a call, several keys and calls per input), on
SQLite, Kafka and Fluss, in ``sync`` and ``group`` durability; and the same kills on
``memory://``, a store that keeps nothing across a restart, where the checks must fail.
The harness is :mod:`actionstate.testing.recovery`.

The kill moments are drawn from a seed taken from the clock (``RECOVERY_SEED=<n>``
replays one; every failure message names it): the first run is killed 0.1-1.0 s
after it started (before its store opens, or about its first checkpoint); the four
restarted runs, in an order the seed shuffles, twice 0.6-2.0 s after the model got
their first call (mid-run: a run takes 1-5 s to start on a loaded machine, Fluss the
longest), and twice 0.1-0.6 s after it, that is early in a restarted run (which
re-runs first the inputs the last kill left in flight), before its first checkpoint
(every 1.0 s).

What is checked, from the fake server's log of every request and the test's record
of every kill (both on ``time.monotonic()`` of this process):

* the outputs are those of an uninterrupted run, one per input;
* every call the run made is one the uninterrupted run made (no action ran again on
  top of state it had already changed);
* every call made again is charged to one kill, between its previous request and the
  repeat, and the server's count of calls beyond the uninterrupted run's is the number
  of calls so charged;
* a kill costs only calls in flight at it: of inputs that had asked the model in the
  killed run and had no output yet; the latest calls of each such input (in ``sync``
  its last call alone, a call starting once the one before is recorded, and at most
  one input per key: in all, no more than the keys in flight); no call answered more
  than ``STALE`` seconds before the kill (its record was committed by then: at once in
  ``sync``, by the next group commit, every 5 ms, in ``group``);
* no call of an input whose output line was in the output file when the process was
  killed runs again (an output is written only after its records are durable: at
  once in ``sync``, after the group commit in ``group``);
* the kills hit work: at least two landed after a call of the killed run had been
  answered, and one in a restarted run before its first checkpoint, after its calls
  began.
"""

from __future__ import annotations

import json
import os
import random
import time
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
                     for i in range(24)]
KEY_OF = {str(item["id"]): str(item["key"]) for item in ITEMS}
LATENCY = (0.2, 0.4)
CHECKPOINT_INTERVAL = 1.0
STALE = 1.5
"""Seconds: a reply the server sent this long before a kill was recorded by then."""
SEED = int(os.environ.get("RECOVERY_SEED") or time.time_ns() % 1_000_000)
print(f"test_recovery_random: RECOVERY_SEED={SEED}")

DURABLE = [(kind, durability) for durability in ("sync", "group") for kind in STORES]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "durability"), DURABLE)
def test_sigkill_at_random_moments(tmp_path: Path, kind: str, durability: str,
                                   request: pytest.FixtureRequest,
                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    seed = SEED + DURABLE.index((kind, durability))
    job, requests, expected, replay = random_kills(
        tmp_path, tmp_path_factory, store_url(kind, request), durability, seed)
    problems = check_random_kills(job, requests, expected, durability)
    problems += check_coverage(job, requests)
    assert not problems, f"{len(problems)} problems, {replay}:\n" + "\n".join(problems[:12])


@pytest.mark.slow
def test_the_checks_fail_on_a_store_that_keeps_nothing(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The control: ``memory://`` loses every record at a kill, so a restart pays again
    every call of the inputs in flight, not only the last of each."""
    seed = SEED + len(DURABLE)
    job, requests, expected, replay = random_kills(
        tmp_path, tmp_path_factory, "memory://recovery-control", "sync", seed)
    assert not check_coverage(job, requests), replay
    problems = check_random_kills(job, requests, expected, "sync")
    assert any("ran again" in problem for problem in problems), (
        f"memory:// kept every recorded call? {replay}: {problems}")


def random_kills(tmp: Path, factory: pytest.TempPathFactory, store: str | None,
                 durability: str, seed: int) -> tuple[Job, list[Request], Reference, str]:
    """Run the job, killed at the moments ``seed`` draws, then to its end; the job, the
    server's requests, the uninterrupted run, and how to replay it (for messages)."""
    expected = reference(factory, TALLY, ITEMS)
    rng = random.Random(seed)
    # (seconds, counted from the model's first call of the run rather than its start)
    restarted = [(rng.uniform(0.6, 2.0), True) for _ in range(2)]
    restarted += [(rng.uniform(0.1, 0.6), True) for _ in range(2)]
    rng.shuffle(restarted)
    moments = [(rng.uniform(0.1, 1.0), False), *restarted]
    replay = f"seed {seed} (RECOVERY_SEED={SEED} replays this run), kills at {moments}"
    with FakeLLMServer(latency=LATENCY) as server:
        job = Job(tmp, TALLY, server, ITEMS, store, durability=durability,
                  concurrency=CONCURRENCY, checkpoint_interval=CHECKPOINT_INTERVAL)
        if all(job.run_for(seconds, after_first_call=first) for seconds, first in moments):
            job.finish()
        requests = server.requests
    with open(tmp / "calls.jsonl", "w") as log:  # for a post-mortem of a failure
        for entry in [*map(vars, job.kills), *map(vars, requests)]:
            log.write(json.dumps(entry) + "\n")
    assert len(job.kills) >= 4, f"killed {len(job.kills)} times, {replay}"
    return job, requests, expected, replay


def check_coverage(job: Job, requests: list[Request]) -> list[str]:
    """Whether the kills hit work: recorded calls to keep, and a restarted run before
    its first checkpoint with its calls begun."""
    problems = []
    answered = [kill for kill in job.kills
                if any(run_of(r) == kill.run and r.answered is not None
                       and r.answered < kill.sent for r in requests)]
    if len(answered) < 2:
        problems.append(f"only kills {[k.run for k in answered]} came after a call of their "
                        "run was answered: the kills hit too little work")
    early = [kill for kill in job.kills
             if kill.run > 0 and not kill.checkpointed
             and any(run_of(r) == kill.run and r.received < kill.sent for r in requests)]
    if not early:
        problems.append("no restarted run was killed before its first checkpoint after "
                        f"its calls began: {[(k.run, k.checkpointed) for k in job.kills]}")
    return problems


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
    repeated = len(requests) - len(made)  # the server's count of calls made again
    charged = sum(map(len, lost.values()))
    if repeated != charged:
        problems.append(f"the server got {repeated} calls again, {charged} charged to kills")
    in_flight = 0
    for kill in job.kills:
        kill_problems, keys = check_kill(kill, requests, lost[kill.run], durability)
        problems += kill_problems
        in_flight += keys
    if durability == "sync" and repeated > in_flight:
        problems.append(f"{repeated} calls ran again, more than the {in_flight} keys that "
                        "had a call in flight at the kills")
    return problems


def check_kill(kill: Kill, requests: list[Request], lost: list[tuple[Request, Request]],
               durability: str) -> tuple[list[str], int]:
    """What one kill may cost: the latest calls of inputs in flight (asked the model in
    the killed run, no output yet), none answered ``STALE`` seconds before it. Returns
    the problems and how many keys had an input in flight."""
    problems = []
    done = {str(output["id"]) for output in kill.outputs}
    rerun = sorted({r.prompt for r in requests
                    if run_of(r) > kill.run and input_of(r.prompt) in done})
    if rerun:
        problems.append(f"kill {kill.run}: calls of inputs whose output was already "
                        f"written ran again: {rerun[:4]}")
    asked: dict[str, list[str]] = defaultdict(list)  # per input, in the killed run, in order
    for r in sorted(requests, key=lambda r: r.received):
        if run_of(r) == kill.run:  # (one may reach the server just after the SIGKILL)
            asked[input_of(r.prompt)].append(r.prompt)
    in_flight = set(asked) - done
    keys = {KEY_OF[name] for name in in_flight}
    lost_by_input: dict[str, set[str]] = defaultdict(set)
    for before, _ in lost:
        lost_by_input[input_of(before.prompt)].add(before.prompt)
        if before.answered is not None and before.answered < kill.sent - STALE:
            problems.append(f"kill {kill.run}: {before.prompt!r} ran again, though its reply "
                            f"was sent {kill.sent - before.answered:.2f} s before the kill: "
                            "its record was committed by then")
    for name, prompts in sorted(lost_by_input.items()):
        # An input's records are written in call order, so a kill loses the end of what
        # it asked in that run; in sync durability a call starts only once the one
        # before is recorded: then that end is its last call alone.
        latest = asked[name][-len(prompts):]
        if name not in in_flight or set(latest) != prompts or (
                durability == "sync" and len(prompts) > 1):
            problems.append(f"kill {kill.run}: {sorted(prompts)} of input {name} ran again; "
                            f"it had asked {asked[name]} in the killed run, of which only "
                            f"the {'last' if durability == 'sync' else 'latest'} may run "
                            "again: a record was lost")
    if durability == "sync":  # one input of a key at a time: one call per key in flight
        per_key: dict[str, list[str]] = defaultdict(list)
        for name in lost_by_input:
            per_key[KEY_OF[name]].append(name)
        if any(len(names) > 1 for names in per_key.values()) or len(lost_by_input) > min(
                len(keys), CONCURRENCY):
            problems.append(f"kill {kill.run}: calls of {len(lost_by_input)} inputs ran "
                            f"again ({sorted(lost_by_input)}); {len(keys)} keys had an input "
                            f"in flight ({sorted(in_flight)}), one call each")
    return problems, len(keys)
