"""What a state directory holds: checkpoint, keys, seqs, actions, call results and
the events completed actions sent."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from actionstate.checkpoint import Checkpoint, offsets_text
from actionstate.errors import ConfigError
from actionstate.events import event_type_name
from actionstate.records.crypto import Sealed
from actionstate.records.state import ActionState, StateKey
from actionstate.records.values import wire
from actionstate.runners.statedir import StateDir
from actionstate.stores import open_store
from actionstate.stores.options import MASK

__all__ = ["describe_state", "held_states", "render_text"]


def describe_state(path: Path, key: str | None = None,
                   store_url: str | None = None) -> dict[str, Any]:
    """A JSON-able report of the state dir at ``path`` (optionally one input key);
    ``store_url`` replaces the checkpoint's store URL (whose secrets are masked)."""
    if not (path / "actionstate.json").exists():
        raise ConfigError(f"{path} is not an actionstate state dir (no actionstate.json)")
    state_dir = StateDir(path, sealed_ok=True)  # without the key: shown as encrypted
    checkpoint = state_dir.load_checkpoint()
    report: dict[str, Any] = {"state_dir": str(path), "checkpoint": None, "keys": []}
    if checkpoint is None:
        return report
    report["checkpoint"] = {
        "time": checkpoint.time, "time_utc": _utc(checkpoint.time),
        "store": checkpoint.store, "epoch": checkpoint.epoch,
        "source": checkpoint.source,
        "sink": {k: v for k, v in checkpoint.sink.items() if k != "records"},
        "inputs_in_flight": len(checkpoint.pending), "stats": checkpoint.stats,
        "job_stats": checkpoint.job_totals(),
        "summary": checkpoint.summary,
    }
    if state_dir.sealed_head is not None:
        report["checkpoint"]["inputs_in_flight"] = f"encrypted with key {state_dir.sealed_head!r}"
    states = _states(store_url or checkpoint.store, checkpoint)
    if key is not None:
        found = state_dir.key_state(key)
        kept = {key: found} if found is not None else {}
    else:
        kept = {k: (next_seq, memory) for k, next_seq, memory in state_dir.key_states()}
    for k, next_seq in checkpoint.next_seq.items():  # a format 1 state dir, not run since
        kept.setdefault(k, (next_seq, checkpoint.short_term.get(k, {})))
    keys = sorted(set(kept) | {k for k, _ in states})
    for k in keys:
        if key is not None and k != key:
            continue
        next_seq, memory = kept.get(k, (0, {}))
        report["keys"].append({
            "key": k, "next_seq": next_seq, "short_term_memory": memory,
            "states": [s for sk, s in states if sk == k],
        })
    return report


def held_states(path: Path, store_url: str | None = None
                ) -> list[tuple[StateKey, ActionState]]:
    """The states the store of the state dir at ``path`` holds after its last
    checkpoint: what a run resumed now would find (calls recorded, actions
    completed), read without claiming, in (key, seq, action) order. ``store_url``
    replaces the checkpoint's store URL."""
    checkpoint = StateDir(path, sealed_ok=True).load_checkpoint()
    if checkpoint is None:
        return []
    return _held(store_url or checkpoint.store, checkpoint)


def _held(url: str, checkpoint: Checkpoint) -> list[tuple[StateKey, ActionState]]:
    if not url or url.startswith("memory://"):
        return []
    if MASK in url:
        raise ConfigError(f"the checkpoint's store URL {url} has its secrets masked: give the "
                          "store URL with them: actionstate inspect --store URL")
    store = open_store(url)
    store.sealed_ok = True  # a payload whose key is not configured is shown as encrypted
    try:
        # Read only: a live run may own these records, and a claim would fence it.
        store.rebuild(checkpoint.marker, read_only=True)
        return sorted(store.states(), key=lambda kv: (kv[0].key, kv[0].seq, kv[0].action))
    finally:
        store.close()


def _states(url: str, checkpoint: Checkpoint) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for sk, state in _held(url, checkpoint):
        calls = [{"position": pos, "function": call.function_id,
                  "status": call.status.name, **_payload(call.result, call.exception)}
                 for pos, call in sorted(state.calls.items())]
        sent = [{"type": event_type_name(type(e)), "data": wire(e.to_json()["data"])}
                for e in state.output_events]
        out.append((sk.key, {"seq": sk.seq, "action": sk.action, "event_id": sk.event_id,
                             "completed": state.completed, "calls": calls, "sent": sent}))
    return out


def _utc(epoch_seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch_seconds))


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _totals(stats: dict[str, Any]) -> str:
    """What the run that took the checkpoint did and what its replay saved, in words."""
    def n(name: str) -> int:
        value = stats.get(name, 0)
        return value if isinstance(value, int) else 0

    text = (f"{n('inputs'):,} inputs, {n('outputs'):,} outputs; durable calls "
            f"{n('calls_executed'):,} executed, {n('calls_replayed'):,} replayed (not paid "
            f"again), {n('calls_reconciled'):,} reconciled, {n('calls_retried'):,} retried")
    paid = n("prompt_tokens_executed") + n("completion_tokens_executed")
    saved = n("prompt_tokens_replayed") + n("completion_tokens_replayed")
    if paid or saved:
        text += f"; model tokens {paid:,} paid, {saved:,} replayed (saved)"
    return text


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(wire(value), ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _payload(result: Any, exception: Any) -> dict[str, Any]:
    """A call's payload as the report shows it: its size, or the key that sealed it."""
    value = result if exception is None else exception
    if isinstance(value, Sealed):
        return {"encrypted": value.key_id}
    return {"size": len(json.dumps(wire(value)))}


def render_text(report: dict[str, Any]) -> str:
    """A human-readable rendering of :func:`describe_state`."""
    lines = [f"state dir: {report['state_dir']}"]
    ckpt = report["checkpoint"]
    if ckpt is None:
        lines.append("no checkpoint yet: the first run has not reached one")
        return "\n".join(lines)
    stats = ckpt["stats"]
    age = max(0.0, time.time() - ckpt["time"])
    lines += [
        f"last checkpoint: {_utc(ckpt['time'])} ({_age(age)} ago), epoch {ckpt['epoch']}, "
        f"store {ckpt['store']}",
        f"  input {_position(ckpt['source'])}, output {_position(ckpt['sink'])}",
        f"  {ckpt['inputs_in_flight']} inputs in flight",
        "  the run that took it: " + _totals(stats),
        "  the job so far (every run, each up to its last checkpoint): "
        + _totals(ckpt.get("job_stats", stats)),
        "  counters: " + ", ".join(f"{k}={v}" for k, v in stats.items()),
        f"keys: {len(report['keys'])}",
    ]
    for entry in report["keys"]:
        lines.append(f"  key {entry['key']!r}: next seq {entry['next_seq']}, "
                     f"{len(entry['states'])} states held")
        if entry["short_term_memory"]:
            lines.append(f"    memory: {_short(entry['short_term_memory'])}")
        for state in entry["states"]:
            done = "completed" if state["completed"] else "in flight"
            lines.append(f"    seq {state['seq']} action {state['action']} ({done}), "
                         f"event {state['event_id'][:16]}...")
            for call in state["calls"]:
                size = (f"{call['size']} bytes" if "size" in call
                        else f"encrypted with key {call['encrypted']!r}")
                lines.append(f"      call {call['position']}: {call['function']} "
                             f"{call['status']} {size}")
            for event in state.get("sent", ()):
                lines.append(f"      sent {event['type']} {_short(event['data'])}")
    return "\n".join(lines)


def _position(state: dict[str, Any]) -> str:
    """Where a source or sink was at the checkpoint, in words."""
    kind = state.get("kind")
    if kind is None:  # a file
        if "line" in state:
            return f"{state['path']} at line {state['line']}"
        return f"{state['path']} at byte {state['offset']}"
    if kind == "kafka":
        where = f"kafka://{state.get('servers')}/{state.get('topic')}"
        if "offsets" in state:
            return f"{where} at offsets {{{offsets_text(state['offsets'])}}}"
        return f"{where} (transaction {state.get('txn')})"
    return f"{kind} {({k: v for k, v in state.items() if k != 'kind'})}"
