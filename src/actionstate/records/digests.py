"""Digests: full SHA-256 over canonical JSON (sorted keys, compact, UTF-8): of a
durable call's arguments (:func:`args_digest`), of an event (:func:`event_id`), of
any value (:func:`digest`).

A digested value need not be storable: tuples digest as lists and dicts with int
keys as JSON gives them (as always); sets are sorted; dataclasses, enums and, as
the documented fallback, any object whose ``repr`` holds no memory address
(``{"__as__": "repr", "type": ..., "repr": ...}``) are tagged; a dict with keys
JSON refuses (tuples, mixed types, ...) digests as its pairs sorted by their
canonical bytes, whatever the order it was built in.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from typing import Any

from actionstate.errors import ConfigError
from actionstate.events import Event
from actionstate.records.fastjson import prebuilt
from actionstate.records.values import TAG, to_wire, type_name

__all__ = ["args_digest", "canonical_bytes", "digest", "event_id"]


def _digest_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return to_wire(obj)
    if isinstance(obj, Event):  # its fields as the canonical encoder takes them, as always
        return {TAG: "event", **obj.to_json()}
    if isinstance(obj, set | frozenset):
        return {TAG: "set", "items": sorted(canonical_bytes(v).decode() for v in obj)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return {TAG: "dataclass", "type": type_name(type(obj)), "fields": fields}
    if isinstance(obj, enum.Enum):
        return {TAG: "enum", "type": type_name(type(obj)), "value": obj.value}
    text = repr(obj)
    if " at 0x" in text:
        raise ConfigError(
            f"argument of type {type_name(type(obj))} has no stable digest (its repr "
            "holds a memory address): pass JSON-able values, a dataclass, or give the "
            "class a __repr__ that shows its content"
        )
    return {TAG: "repr", "type": type_name(type(obj)), "repr": text}


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_digest_default)
_CANONICAL_KEYED = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    default=lambda obj: _keyed(_digest_default(obj)))
_CANONICAL_TEXT, _CANONICAL_KEYED_TEXT = prebuilt(_CANONICAL), prebuilt(_CANONICAL_KEYED)


def canonical_bytes(value: Any) -> bytes:
    """Sorted-key, compact UTF-8 JSON of ``value`` (see module docs for fallbacks)."""
    try:
        return _CANONICAL_TEXT(value).encode()
    except TypeError:  # a dict whose keys JSON refuses: digest its sorted pairs instead
        return _CANONICAL_KEYED_TEXT(_keyed(value)).encode()


def _json_keys(obj: dict[Any, Any]) -> bool:
    """True when the sorted-key JSON encoder takes ``obj``'s keys (as it always did)."""
    if not all(isinstance(k, str | int | float) or k is None for k in obj):
        return False
    try:
        sorted(obj)
    except TypeError:
        return False
    return True


def _keyed(obj: Any) -> Any:
    """``obj`` with every dict whose keys JSON refuses as its pairs, sorted by their
    canonical bytes (so the digest does not depend on the order the dict was built in)."""
    kind = type(obj)
    if kind is list or kind is tuple:
        return [_keyed(v) for v in obj]
    if isinstance(obj, dict):
        if _json_keys(obj):
            return {k: _keyed(v) for k, v in obj.items()}
        pairs = sorted(obj.items(),
                       key=lambda kv: (canonical_bytes(kv[0]), canonical_bytes(kv[1])))
        return {TAG: "dict", "items": [[_keyed(k), _keyed(v)] for k, v in pairs]}
    return obj


def args_digest(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """``digest([list(args), kwargs])`` (the same bytes: JSON writes a tuple as a list)."""
    try:
        text = _CANONICAL_TEXT([args, kwargs])
    except TypeError:  # a dict whose keys JSON refuses, somewhere in the arguments
        return digest([list(args), kwargs])
    return hashlib.sha256(text.encode()).hexdigest()


def event_id(event: Event) -> str:
    """Full SHA-256 hex digest of the event's type and canonical content."""
    return hashlib.sha256(canonical_bytes(event.to_json())).hexdigest()


def digest(value: Any) -> str:
    """Full SHA-256 hex digest of :func:`canonical_bytes`."""
    return hashlib.sha256(canonical_bytes(value)).hexdigest()
