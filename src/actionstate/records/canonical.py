"""Canonical encodings: stable digests and the tagged-JSON value format.

Digests are full SHA-256 over sorted-key, compact, UTF-8 JSON. Values that
JSON cannot carry are tagged objects ``{"__as__": tag, ...}``:

* ``bytes`` -> ``{"__as__": "bytes", "b64": ...}``
* an :class:`~actionstate.events.Event` -> ``{"__as__": "event", "type": ..., "data": ...}``
* for digests only: sets (sorted), dataclasses, enums, and as the documented
  fallback any object whose ``repr`` holds no memory address
  (``{"__as__": "repr", "type": ..., "repr": ...}``).

Stored values come back as JSON gives them: tuples as lists, dict keys as
strings. Anything else is refused with an error naming its type.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import importlib
import json
from json.encoder import encode_basestring
from typing import Any

from actionstate.errors import ConfigError, ReplayedCallError
from actionstate.events import Event, event_class

__all__ = [
    "STORED",
    "TAG",
    "args_digest",
    "canonical_bytes",
    "decode_exception",
    "digest",
    "encode_exception",
    "event_id",
    "untag",
    "to_wire_default",
]

TAG = "__as__"


def to_wire_default(obj: Any) -> Any:
    """``json.dumps`` default hook for stored values (results, memory, events)."""
    if isinstance(obj, bytes | bytearray | memoryview):
        return {TAG: "bytes", "b64": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, Event):
        return {TAG: "event", **obj.to_json()}
    raise ConfigError(
        f"cannot store a value of type {type(obj).__module__}.{type(obj).__qualname__}: "
        "durable results, memory values and event fields must be JSON-able "
        "(dict, list, str, int, float, bool, None), bytes, or Events; "
        "convert it (for example to a dict) before returning it"
    )


def untag(obj: dict[str, Any]) -> Any:
    tag = obj.get(TAG)
    if tag is None:
        return obj
    if tag == "bytes":
        return base64.b64decode(obj["b64"])
    if tag == "event":
        return event_class(obj["type"])(**obj["data"])
    return obj


def _digest_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview | Event):
        return to_wire_default(obj)
    if isinstance(obj, set | frozenset):
        return {TAG: "set", "items": sorted(canonical_bytes(v).decode() for v in obj)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return {TAG: "dataclass", "type": _type_name(type(obj)), "fields": fields}
    if isinstance(obj, enum.Enum):
        return {TAG: "enum", "type": _type_name(type(obj)), "value": obj.value}
    text = repr(obj)
    if " at 0x" in text:
        raise ConfigError(
            f"argument of type {_type_name(type(obj))} has no stable digest (its repr "
            "holds a memory address): pass JSON-able values, a dataclass, or give the "
            "class a __repr__ that shows its content"
        )
    return {TAG: "repr", "type": _type_name(type(obj)), "repr": text}


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_digest_default)
STORED = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=to_wire_default)
"""The encoder of stored values (built once: ``json.dumps`` with options builds one per call)."""


def canonical_bytes(value: Any) -> bytes:
    """Sorted-key, compact UTF-8 JSON of ``value`` (see module docs for fallbacks)."""
    return _CANONICAL.encode(value).encode()


def _scalar_json(value: Any) -> str | None:
    """The canonical JSON of a str, int, bool or None; None for anything else."""
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    return None


def args_digest(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """``digest([list(args), kwargs])``, composed directly (same bytes, less work) when
    every argument is a positional str, int, bool or None: the common case of a call."""
    if not kwargs:
        parts = [_scalar_json(a) for a in args]
        if None not in parts:
            text = "[[" + ",".join(p for p in parts if p is not None) + "],{}]"
            return hashlib.sha256(text.encode()).hexdigest()
    return digest([list(args), kwargs])


def event_id(event: Event) -> str:
    """Full SHA-256 hex digest of the event's type and canonical content."""
    return hashlib.sha256(canonical_bytes(event.to_json())).hexdigest()


def digest(value: Any) -> str:
    """Full SHA-256 hex digest of :func:`canonical_bytes`."""
    return hashlib.sha256(canonical_bytes(value)).hexdigest()


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def encode_exception(exc: BaseException) -> dict[str, Any]:
    """The stored form of an exception: type name, message, and JSON-able args."""
    args: list[Any] | None = list(exc.args)
    try:
        json.dumps(args)
    except (TypeError, ValueError):
        args = None
    return {"type": _type_name(type(exc)), "message": str(exc), "args": args}


def decode_exception(data: dict[str, Any]) -> BaseException:
    """Rebuild a recorded exception with its original type when possible.

    Falls back to :class:`ReplayedCallError` (carrying the type name and the
    message) when the type cannot be imported or constructed from its args.
    """
    type_name, message, args = data["type"], data["message"], data.get("args")
    module_name, _, qualname = type_name.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and issubclass(obj, Exception) and args is not None:
            exc = obj(*args)
            if str(exc) == message:
                return exc
    except Exception:  # any failure to rebuild means: use the fallback
        pass
    return ReplayedCallError(type_name, message)
