"""The one record codec every store uses: a versioned, self-describing JSON envelope.

Each record is one compact JSON object ``{"v": 1, "t": kind, ...}``. Readers
reject any other ``v`` with an error naming the record; no pickle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any, cast, overload

from actionstate.errors import CorruptRecordError
from actionstate.events import event_type_name
from actionstate.records.crypto import Keyring, Sealed, missing_key
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
from actionstate.records.untag import UndecodableValueError, untag
from actionstate.records.values import STORED_TEXT, TAG, stored_json, wire

__all__ = ["FORMAT_VERSION", "decode_call", "decode_record", "encode_record"]

FORMAT_VERSION = 1
_TAG_BYTES = f'"{TAG}"'.encode()
_STATUS = {s.value: s for s in CallStatus}


def _k(key: StateKey) -> list[Any]:
    return [key.key, key.seq, key.action, key.event_id]


_KEYS: dict[int, tuple[StateKey, str]] = {}
"""id(key) -> (key, its JSON text): the records of an action run share their key (it is
held here, so its id is not reused while cached)."""
_FIDS: dict[str, str] = {}
"""function id -> its JSON text."""
_CACHED = 4096
"""Entries each cache holds at most (it is emptied when full)."""


def _json(value: Any) -> str:
    """``STORED.encode(value)``: a str (the common case) without the encoder."""
    return encode_basestring(value) if type(value) is str else STORED_TEXT(value)


def _key_json(key: StateKey) -> str:
    """The JSON text of ``key`` as records hold it (``"k"``), built once per action run."""
    cached = _KEYS.get(id(key))
    if cached is not None and cached[0] is key:
        return cached[1]
    text = STORED_TEXT(_k(key))
    if len(_KEYS) >= _CACHED:
        _KEYS.clear()
    _KEYS[id(key)] = (key, text)
    return text


def _fid_json(function_id: str) -> str:
    text = _FIDS.get(function_id)
    if text is None:
        text = _json(function_id)
        if type(function_id) is str:
            if len(_FIDS) >= _CACHED:
                _FIDS.clear()
            _FIDS[function_id] = text
    return text


def _encode_call(record: CallRecord, epoch: int, keyring: Keyring | None = None) -> bytes:
    """A SUCCEEDED or PENDING call's envelope, composed directly: the hot path of a call.

    The bytes equal those of the generic path below (tests/test_golden.py checks it).
    """
    call = record.call
    # The status's letter without the enum's ``.value`` (a property: slow on this path).
    succeeded = call.status is CallStatus.SUCCEEDED
    key_text = _key_json(record.key)
    digest = call.args_digest  # a str: what _json does, inline
    digest_text = encode_basestring(digest) if type(digest) is str else _json(digest)
    text = (f'{{"v":1,"t":"call","k":{key_text},"e":{int(epoch)},'
            f'"p":{int(record.position)},"f":{_fid_json(call.function_id)},'
            f'"d":{digest_text},"s":"{"S" if succeeded else "P"}"')
    if not succeeded:
        return (text + "}").encode()
    result = call.result
    if type(result) is str:
        stored = encode_basestring(result)
    else:
        stored = stored_json(result, "the result of durable call ", call.function_id)
    if keyring is not None:
        sealed = keyring.seal_json(f'{{"r":{stored}}}'.encode("utf-8", "surrogatepass"),
                                   _aad("call", key_text, record.position))
        return f'{text},"z":{sealed}}}'.encode()
    return f'{text},"r":{stored}}}'.encode()


def _aad(kind: str, key_text: str, position: Any) -> bytes:
    """What a sealed payload is bound to: its record's kind, state key and position."""
    where = "" if position is None else str(int(position))
    return f"{kind}\0{key_text}\0{where}".encode("utf-8", "surrogatepass")


def _encode_done(record: CompleteRecord, epoch: int, keyring: Keyring | None = None) -> bytes:
    """A CompleteRecord's envelope: ``{"v","t","k","e"}`` composed, the rest encoded (and
    sealed, with a keyring)."""
    key = record.key
    sent_by = f" sent by action {key.action!r}"
    body = STORED_TEXT({
        "ev": wire(record.task_event, "the event that triggered action ", key.action),
        "out": [wire(e, f"event {event_type_name(type(e))}", sent_by)
                for e in record.output_events],
        "mem": [[m.scope, m.path, wire(m.value, f"{m.scope} memory ", repr(m.path))]
                for m in record.memory_updates]})
    key_text = _key_json(key)
    if keyring is not None:
        sealed = keyring.seal_json(body.encode("utf-8", "surrogatepass"),
                                   _aad("done", key_text, None))
        body = f'{{"z":{sealed}}}'
    return f'{{"v":1,"t":"done","k":{key_text},"e":{int(epoch)},{body[1:]}'.encode()


def encode_record(record: Record, epoch: int | None = None,
                  keyring: Keyring | None = None) -> bytes:
    """Encode ``record`` as one versioned JSON envelope, under ``epoch`` if given
    (a store writes its own epoch), else the record's. With a ``keyring``, the payload
    (a call's result or exception, a completion's events and memory writes) is sealed
    into ``"z"``; the fields rebuild, pruning and divergence read stay readable."""
    if epoch is None:
        epoch = record.epoch
    if type(record) is CallRecord and record.call.status is not CallStatus.FAILED:
        return _encode_call(record, epoch, keyring)
    if type(record) is CompleteRecord:
        return _encode_done(record, epoch, keyring)
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
                if keyring is not None:
                    env["z"] = keyring.seal(
                        STORED_TEXT({"x": env.pop("x")}).encode("utf-8", "surrogatepass"),
                        _aad("call", STORED_TEXT(env["k"]), pos))
                if call.retryable:
                    env["rt"] = 1
        case CompleteRecord():
            return _encode_done(record, epoch, keyring)
        case TruncateRecord(key=key, position=pos):
            env = {"v": 1, "t": "trunc", "k": _k(key), "e": epoch, "p": pos}
        case DropRecord(key=key, after_seq=after):
            env = {"v": 1, "t": "drop", "key": key, "after": after, "e": epoch}
        case FenceRecord(claim=claim):
            env = {"v": 1, "t": "fence", "e": record.epoch}
            if claim:
                env["w"] = claim
    return STORED_TEXT(env).encode()


_Scan = Callable[[str, int], tuple[Any, int]]
_PLAIN_SCAN: _Scan = cast(Any, json.JSONDecoder()).scan_once
_TAGGED_SCAN: _Scan = cast(Any, json.JSONDecoder(object_hook=untag)).scan_once
"""Built once (``json.loads`` with a hook builds a decoder per call)."""


def _loads(data: bytes, tagged: bool) -> Any:
    """``json.loads(data)``, with the :func:`untag` hook if ``tagged``: the same value and
    errors, without its per-call work for what a record is (UTF-8, one object)."""
    if type(data) is bytes and data[:1] == b"{" and data[1:2] != b"\0":
        # what json.detect_encoding takes for UTF-8; a record starts with "{"
        text = data.decode("utf-8", "surrogatepass")
        try:
            value, end = (_TAGGED_SCAN if tagged else _PLAIN_SCAN)(text, 0)
        except StopIteration:  # a value missing (json.loads below says where)
            end = -1
        if end == len(text):
            return value
    return json.loads(data, object_hook=untag) if tagged else json.loads(data)


def decode_record(data: bytes, where: str, keyring: Keyring | None = None,
                  sealed_ok: bool = False) -> Record:
    """Decode one envelope; ``where`` names the record in any error (e.g. ``"row 12"``).
    A sealed payload is opened with ``keyring``; ``sealed_ok`` leaves one whose key is
    not there as :class:`~actionstate.records.crypto.Sealed` (for inspection).

    Raises:
        CorruptRecordError: the bytes are not a record of a known version.
        EncryptionKeyError: the payload is sealed with a key ``keyring`` lacks or that
            does not open it (unless ``sealed_ok``, for a lacking key).
    """
    call = decode_call(data)
    if call is not None:
        return CallRecord(*call)
    try:
        env = _loads(data, _TAG_BYTES in data)
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
        if "z" in env:
            _unseal(env, keyring, where, sealed_ok)
        return _from_envelope(env)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CorruptRecordError(
            f"record at {where} is missing or has a malformed field ({exc!r}); the store "
            "is damaged at that record"
        ) from None


def _unseal(env: dict[str, Any], keyring: Keyring | None, where: str, sealed_ok: bool) -> None:
    """Put a sealed envelope's payload fields back in place (or placeholders)."""
    kind, sealed = env["t"], env.pop("z")
    key_id = sealed[0] if isinstance(sealed, list) and sealed else None
    if keyring is None or key_id not in keyring.ids:
        if not sealed_ok:
            raise missing_key(str(key_id), f"record at {where}", keyring)
        placeholder = Sealed(str(key_id))
        if kind == "call":
            env["r" if env.get("s") == CallStatus.SUCCEEDED.value else "x"] = placeholder
        else:
            env.update(ev=placeholder, out=[], mem=[])
        return
    plain = keyring.open(sealed, _aad(kind, STORED_TEXT(env["k"]), env.get("p")),
                         f"record at {where}")
    try:
        payload = _loads(plain, _TAG_BYTES in plain)
    except UndecodableValueError as exc:
        raise CorruptRecordError(f"record at {where} holds {exc}") from None
    except ValueError as exc:
        raise CorruptRecordError(f"record at {where}: its decrypted payload is not valid "
                                 f"JSON ({exc}); the store is damaged at that record") from None
    env.update(payload)


_DECODED_KEYS: dict[tuple[Any, ...], StateKey] = {}
"""The StateKeys decoded lately, by their ``"k"`` values: the records of an action run
share one (a rebuild builds it once, the index holds it once)."""


def _state_key(k: Any) -> StateKey:
    try:
        found = _DECODED_KEYS.get(tuple(k))
    except TypeError:  # unhashable parts: not a key this cache holds
        found = None
    if found is not None:
        return found
    key = StateKey(str(k[0]), int(k[1]), str(k[2]), str(k[3]))
    if (len(k) == 4 and type(k[0]) is str and type(k[1]) is int and type(k[2]) is str
            and type(k[3]) is str):  # only exact types: an equal "k" then makes this key
        if len(_DECODED_KEYS) >= _CACHED:
            _DECODED_KEYS.clear()
        _DECODED_KEYS[tuple(k)] = key
    return key


_CALL_START = b'{"v":1,"t":"call","k":["'
_STR = r'[^"\\\x00-\x1f]*'  # a JSON string's characters without escapes
_INT = r"(?:0|[1-9][0-9]{0,17})"  # a non-negative int of up to 18 digits
_CALL_HEAD = re.compile(
    rf'\{{"v":1,"t":"call","k":\[("({_STR})",({_INT}),"({_STR})","({_STR})")\],'
    rf'"e":({_INT}),"p":({_INT}),"f":"({_STR})","d":"({_STR})","s":"(?:(S)","r":|P"\}}\Z)')
"""The head of a SUCCEEDED or PENDING call record as ``_encode_call`` writes it: only
strings without escapes and plain integers, whose JSON values are their characters."""
_SCAN_STRING: Callable[[str, int, bool], tuple[str, int]] = cast(Any, json.decoder).scanstring
"""``json``'s string reader (strict: control characters refused), as its scanner reads."""
_KEY_TEXTS: dict[str, StateKey] = {}
"""The StateKeys decoded lately by the fast path, by their ``"k"`` text."""
_DECODED_FIDS: dict[str, str] = {}
"""Function ids decoded lately: the records of one function share one string."""


@overload
def decode_call(data: bytes) -> tuple[StateKey, int, CallResult, int] | None: ...
@overload
def decode_call(data: bytes, skip: Callable[[StateKey], bool] | None
                ) -> tuple[StateKey, int, CallResult, int] | tuple[()] | None: ...
def decode_call(data: bytes, skip: Callable[[StateKey], bool] | None = None
                ) -> tuple[StateKey, int, CallResult, int] | tuple[()] | None:
    """A SUCCEEDED or PENDING call record's (key, position, call, epoch), read without
    decoding its head as JSON (a rebuild's common case); None for any other record:
    :func:`decode_record` decodes it (and names what is wrong with it). The values equal
    :func:`decode_record`'s: the head matches only when each field is a plain string or
    integer, and the result is read as JSON at its offset. An empty tuple when
    ``skip(key)`` is true (the result is not read)."""
    if type(data) is not bytes or not data.startswith(_CALL_START):
        return None
    try:
        text = data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    m = _CALL_HEAD.match(text)
    if m is None:
        return None
    key_text, epoch, position, function_id, digest, succeeded = m.group(1, 6, 7, 8, 9, 10)
    key = _KEY_TEXTS.get(key_text)
    if key is None:
        k0, k1, k2, k3 = m.group(2, 3, 4, 5)
        key = StateKey(k0, int(k1), k2, k3)
        if len(_KEY_TEXTS) >= _CACHED:
            _KEY_TEXTS.clear()
        _KEY_TEXTS[key_text] = key
    if skip is not None and skip(key):
        return ()
    if succeeded is None:  # PENDING: the head ends the record
        result = None
        status = CallStatus.PENDING
    else:
        start = m.end()
        try:
            if text[start] == '"':  # a string: read in one pass (the scanner's own reader)
                result, end = _SCAN_STRING(text, start + 1, True)
            else:
                result, end = (_TAGGED_SCAN if _TAG_BYTES in data else _PLAIN_SCAN)(text, start)
        except Exception:  # the general path names what is wrong
            return None
        if end != len(text) - 1 or text[end] != "}":
            return None
        status = CallStatus.SUCCEEDED
    fid = _DECODED_FIDS.get(function_id)
    if fid is None:
        if len(_DECODED_FIDS) >= _CACHED:
            _DECODED_FIDS.clear()
        fid = _DECODED_FIDS[function_id] = function_id
    return key, int(position), CallResult(fid, digest, status, result), int(epoch)


def _from_envelope(env: dict[str, Any]) -> Record:
    kind = env["t"]
    if kind == "call":
        call = CallResult(env["f"], env["d"], _STATUS[env["s"]], env.get("r"), env.get("x"),
                          env.get("rt") == 1)
        return CallRecord(_state_key(env["k"]), int(env["p"]), call, int(env["e"]))
    if kind == "fence":
        return FenceRecord(int(env["e"]), str(env.get("w", "")))
    if kind == "drop":
        return DropRecord(str(env["key"]), int(env["after"]), int(env["e"]))
    key = _state_key(env["k"])
    epoch = int(env["e"])
    if kind == "done":
        mem = tuple(MemoryUpdate(MemoryScope(s), str(p), v) for s, p, v in env["mem"])
        return CompleteRecord(key, env["ev"], tuple(env["out"]), mem, epoch)
    if kind == "trunc":
        return TruncateRecord(key, int(env["p"]), epoch)
    raise ValueError(f"unknown record kind {kind!r}")
