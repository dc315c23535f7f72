"""The one record codec every store uses: a versioned, self-describing JSON envelope.

Each record is one compact JSON object ``{"v": 1, "t": kind, ...}``. Readers
reject any other ``v`` with an error naming the record; no pickle.
"""

from __future__ import annotations

import json
from typing import Any

from actionstate.errors import CorruptRecordError
from actionstate.events import event_type_name
from actionstate.records.canonical import (
    STORED,
    TAG,
    UndecodableValueError,
    stored_json,
    untag,
    wire,
)
from actionstate.records.state import (
    CallRecord,
    CallResult,
    CallStatus,
    CompleteRecord,
    DropRecord,
    FenceRecord,
    MemoryScope,
    MemoryUpdate,
    Record,
    StateKey,
    TruncateRecord,
)

__all__ = ["FORMAT_VERSION", "decode_record", "encode_record"]

FORMAT_VERSION = 1
_TAG_BYTES = f'"{TAG}"'.encode()
_STATUS = {s.value: s for s in CallStatus}


def _k(key: StateKey) -> list[Any]:
    return [key.key, key.seq, key.action, key.event_id]


def _encode_call(record: CallRecord, epoch: int) -> bytes:
    """A SUCCEEDED or PENDING call's envelope, composed directly: the hot path of a call.

    The bytes equal those of the generic path below (tests/test_golden.py checks it).
    """
    call, enc = record.call, STORED.encode
    text = (f'{{"v":1,"t":"call","k":{enc(_k(record.key))},"e":{int(epoch)},'
            f'"p":{int(record.position)},"f":{enc(call.function_id)},'
            f'"d":{enc(call.args_digest)},"s":"{call.status.value}"')
    if call.status is CallStatus.SUCCEEDED:
        text += f',"r":{stored_json(call.result, "the result of durable call ", call.function_id)}'
    return (text + "}").encode()


def encode_record(record: Record, epoch: int | None = None) -> bytes:
    """Encode ``record`` as one versioned JSON envelope, under ``epoch`` if given
    (a store writes its own epoch), else the record's."""
    if epoch is None:
        epoch = record.epoch
    if type(record) is CallRecord and record.call.status is not CallStatus.FAILED:
        return _encode_call(record, epoch)
    env: dict[str, Any]
    match record:
        case CallRecord(key=key, position=pos, call=call):
            env = {"v": 1, "t": "call", "k": _k(key), "e": epoch, "p": pos,
                   "f": call.function_id, "d": call.args_digest, "s": call.status.value}
            if call.status is CallStatus.SUCCEEDED:
                env["r"] = wire(call.result, "the result of durable call ", call.function_id)
            elif call.status is CallStatus.FAILED:
                env["x"] = wire(call.exception, "the exception of durable call ",
                                call.function_id)
                if call.retryable:
                    env["rt"] = 1
        case CompleteRecord(key=key):
            sent_by = f" sent by action {key.action!r}"
            env = {"v": 1, "t": "done", "k": _k(key), "e": epoch,
                   "ev": wire(record.task_event, "the event that triggered action ", key.action),
                   "out": [wire(e, f"event {event_type_name(type(e))}", sent_by)
                           for e in record.output_events],
                   "mem": [[m.scope, m.path, wire(m.value, f"{m.scope} memory ", repr(m.path))]
                           for m in record.memory_updates]}
        case TruncateRecord(key=key, position=pos):
            env = {"v": 1, "t": "trunc", "k": _k(key), "e": epoch, "p": pos}
        case DropRecord(key=key, after_seq=after):
            env = {"v": 1, "t": "drop", "key": key, "after": after, "e": epoch}
        case FenceRecord(claim=claim):
            env = {"v": 1, "t": "fence", "e": record.epoch}
            if claim:
                env["w"] = claim
    return STORED.encode(env).encode()


def decode_record(data: bytes, where: str) -> Record:
    """Decode one envelope; ``where`` names the record in any error (e.g. ``"row 12"``).

    Raises:
        CorruptRecordError: the bytes are not a record of a known version.
    """
    try:
        env = json.loads(data, object_hook=untag) if _TAG_BYTES in data else json.loads(data)
    except UndecodableValueError as exc:
        raise CorruptRecordError(
            f"record at {where} holds {exc}") from None
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise CorruptRecordError(
            f"record at {where} has a malformed tagged value ({exc!r}); the store is damaged "
            "at that record") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptRecordError(
            f"record at {where} is not valid JSON ({exc}); the store is damaged at that "
            "record: restore it from a backup or remove that record"
        ) from None
    if not isinstance(env, dict) or env.get("v") != FORMAT_VERSION:
        version = env.get("v") if isinstance(env, dict) else None
        raise CorruptRecordError(
            f"record at {where} has format version {version!r}, this actionstate reads "
            f"version {FORMAT_VERSION}: use the actionstate version that wrote it"
        )
    try:
        return _from_envelope(env)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CorruptRecordError(
            f"record at {where} is missing or has a malformed field ({exc!r}); the store "
            "is damaged at that record"
        ) from None


def _from_envelope(env: dict[str, Any]) -> Record:
    kind = env["t"]
    if kind == "fence":
        return FenceRecord(int(env["e"]), str(env.get("w", "")))
    if kind == "drop":
        return DropRecord(str(env["key"]), int(env["after"]), int(env["e"]))
    k = env["k"]
    key = StateKey(str(k[0]), int(k[1]), str(k[2]), str(k[3]))
    epoch = int(env["e"])
    if kind == "call":
        status = _STATUS[env["s"]]
        call = CallResult(env["f"], env["d"], status, env.get("r"), env.get("x"),
                          env.get("rt") == 1)
        return CallRecord(key, int(env["p"]), call, epoch)
    if kind == "done":
        mem = tuple(MemoryUpdate(MemoryScope(s), str(p), v) for s, p, v in env["mem"])
        return CompleteRecord(key, env["ev"], tuple(env["out"]), mem, epoch)
    if kind == "trunc":
        return TruncateRecord(key, int(env["p"]), epoch)
    raise ValueError(f"unknown record kind {kind!r}")
