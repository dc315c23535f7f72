"""Canonical encodings: stable digests and the tagged-JSON value format.

Digests are full SHA-256 over sorted-key, compact, UTF-8 JSON. Stored values
(call results, memory values, event fields, exception args and attributes) are
JSON with the values JSON cannot carry as tagged objects ``{"__as__": tag, ...}``,
so that they come back type for type:

* ``tuple`` -> ``{"__as__": "tuple", "items": [...]}``
* a dict with a key that is not a str, or with a key ``"__as__"``
  -> ``{"__as__": "dict", "items": [[key, value], ...]}`` (in its order)
* ``set`` / ``frozenset`` -> ``{"__as__": "set" | "frozenset", "items": [...]}``
* ``datetime`` / ``time`` -> ``{"__as__": tag, "iso": local time, "tz": zone, "fold": 1}``
  (``tz``: an IANA key for a ``zoneinfo.ZoneInfo``, ``{"offset": [d, s, us],
  "name": ...}`` for a ``datetime.timezone``; absent when naive; other tzinfo
  classes are refused), ``date`` -> ``{"iso"}``, ``timedelta`` -> ``{"d", "s", "us"}``
* ``Decimal`` -> ``{"s": str}``, ``UUID`` -> ``{"hex": str}``
* an ``Enum`` member -> ``{"type": class path, "name": ...}`` (``"value"`` for a
  combination of flags)
* a dataclass instance -> ``{"type": class path, "fields": {...}}``, rebuilt like
  ``copy.copy`` does (without calling ``__init__``)
* a pydantic-style model (a class with ``model_dump`` and ``model_validate``)
  -> ``{"type": class path, "data": model_dump()}``, rebuilt with ``model_validate``
* ``bytes`` (and ``bytearray``, ``memoryview``: read back as ``bytes``)
  -> ``{"__as__": "bytes", "b64": ...}``
* an :class:`~actionstate.events.Event` -> ``{"__as__": "event", "type": ..., "data": ...}``

Values that were stored before these tags existed (str, int, float, bool, None,
lists, dicts with str keys, bytes, Events) are written with the same bytes. A
class is named by ``module.qualname`` and must be importable under it (checked
when the value is stored). Anything else is refused with
:class:`UnstorableValueError` naming the type and where the value came from.

Digests: tuples digest as lists and dicts with int keys as JSON gives them (as
always); sets are sorted; dataclasses, enums and, as the documented fallback,
any object whose ``repr`` holds no memory address
(``{"__as__": "repr", "type": ..., "repr": ...}``) are tagged; a dict with keys
JSON refuses (tuples, mixed types, ...) digests as its pairs sorted by their
canonical bytes, whatever the order it was built in.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import importlib
import json
import json.encoder
import uuid
import zoneinfo
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any, cast

from actionstate.errors import ConfigError, ReplayedCallError
from actionstate.events import Event, event_class, event_type_name

__all__ = [
    "STORED",
    "STORED_TEXT",
    "TAG",
    "UnstorableValueError",
    "UndecodableValueError",
    "args_digest",
    "canonical_bytes",
    "check_storable",
    "decode_exception",
    "digest",
    "encode_exception",
    "event_id",
    "stored_json",
    "wire",
    "to_wire",
    "untag",
    "to_wire_default",
]

TAG = "__as__"


class UnstorableValueError(ConfigError, TypeError):
    """A durable result, memory value or event field of a type that cannot be stored
    (the message names the type and where the value came from)."""


class UndecodableValueError(ValueError):
    """A stored tagged value that cannot be rebuilt (its class is gone, ...)."""


class _Refused(Exception):
    def __init__(self, obj: Any, why: str = "") -> None:
        super().__init__(obj)
        self.obj, self.why = obj, why


_SUPPORTED = (
    "str, int, float, bool, None, list, tuple, dict (any hashable storable keys), "
    "set, frozenset, bytes, datetime, date, time, timedelta, Decimal, UUID, Enum "
    "members, dataclass instances, pydantic models and Events")
_CLASSES: dict[type, str] = {}
"""Classes already checked to be importable under their path (the path)."""


def _class_path(cls: type) -> str:
    """``module.qualname`` of ``cls``, checked once to import back to ``cls``."""
    path = _CLASSES.get(cls)
    if path is None:
        path = _type_name(cls)
        try:
            found = _import(path)
        except Exception:
            found = None
        if found is not cls:
            raise _Refused(None, f"its class {path} cannot be imported under that name "
                           "(defined inside a function, or in __main__?), so a replay "
                           "could not rebuild it; define it at module level")
        _CLASSES[cls] = path
    return path


def _import(path: str) -> Any:
    module_name, _, qualname = path.rpartition(".")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _tz(tz: dt.tzinfo | None) -> Any:
    if type(tz) is zoneinfo.ZoneInfo and tz.key:
        return tz.key
    if type(tz) is dt.timezone:
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        spec: dict[str, Any] = {"offset": [offset.days, offset.seconds, offset.microseconds]}
        if tz != dt.timezone(offset) or name != dt.timezone(offset).tzname(None):
            spec["name"] = name
        return spec
    raise _Refused(None, f"its tzinfo of type {_type_name(type(tz))} cannot be stored: "
                   "use datetime.timezone or zoneinfo.ZoneInfo")


def _from_tz(spec: Any) -> dt.tzinfo:
    if isinstance(spec, str):
        return zoneinfo.ZoneInfo(spec)
    offset = dt.timedelta(*spec["offset"])
    return dt.timezone(offset, spec["name"]) if "name" in spec else dt.timezone(offset)


def _clock(tag: str, value: dt.datetime | dt.time) -> dict[str, Any]:
    out: dict[str, Any] = {TAG: tag, "iso": value.replace(tzinfo=None, fold=0).isoformat()}
    if value.tzinfo is not None:
        out["tz"] = _tz(value.tzinfo)
    if value.fold:
        out["fold"] = 1
    return out


def to_wire(obj: Any) -> Any:
    """``obj`` as a tree of JSON values (dicts with str keys, lists, scalars), the
    values JSON cannot carry tagged (see the module docs).

    Raises:
        _Refused: a value of a type that cannot be stored (callers turn it into an
            :class:`UnstorableValueError` naming where it came from).
    """
    kind = type(obj)
    if kind is str or kind is int or kind is float or kind is bool or obj is None:
        return obj
    if kind is list:
        return [to_wire(v) for v in obj]
    if kind is dict:
        if TAG not in obj and all(type(k) is str for k in obj):
            return {k: to_wire(v) for k, v in obj.items()}
        return {TAG: "dict", "items": [[to_wire(k), to_wire(v)] for k, v in obj.items()]}
    if kind is tuple:
        return {TAG: "tuple", "items": [to_wire(v) for v in obj]}
    if kind is bytes or kind is bytearray or kind is memoryview:
        return {TAG: "bytes", "b64": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, Event):
        return {TAG: "event", "type": event_type_name(kind), "data": _fields_wire(obj)}
    if kind is set or kind is frozenset:  # in a fixed order: the bytes never vary by hash
        items = [to_wire(v) for v in obj]
        items.sort(key=lambda item: json.dumps(item, sort_keys=True, ensure_ascii=False))
        return {TAG: kind.__name__, "items": items}
    if kind is dt.datetime:
        return _clock("datetime", obj)
    if kind is dt.date:
        return {TAG: "date", "iso": obj.isoformat()}
    if kind is dt.time:
        return _clock("time", obj)
    if kind is dt.timedelta:
        return {TAG: "timedelta", "d": obj.days, "s": obj.seconds, "us": obj.microseconds}
    if kind is decimal.Decimal:
        return {TAG: "decimal", "s": str(obj)}
    if kind is uuid.UUID:
        return {TAG: "uuid", "hex": str(obj)}
    if isinstance(obj, enum.Enum):
        path = _class_path(kind)
        name = obj.name
        if name is not None and kind.__members__.get(name) is obj:
            return {TAG: "enum", "type": path, "name": name}
        return {TAG: "enum", "type": path, "value": to_wire(obj.value)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        path = _class_path(kind)
        return {TAG: "dataclass", "type": path, "fields": _fields_wire(obj)}
    if callable(getattr(kind, "model_dump", None)) and callable(
            getattr(kind, "model_validate", None)):
        return {TAG: "model", "type": _class_path(kind), "data": to_wire(obj.model_dump())}
    raise _Refused(obj)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
"""The field names of each dataclass (and Event) class met, in order."""


def _fields_wire(obj: Any) -> dict[str, Any]:
    """The fields of dataclass instance ``obj`` by name, as :func:`to_wire` gives them (a
    value that is JSON as it is is not copied)."""
    kind = type(obj)
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(obj))
    out = {}
    for name in names:
        value = getattr(obj, name)
        out[name] = value if _is_plain(value) else to_wire(value)
    return out


def _locate(obj: Any, where: str) -> tuple[str, Any, str]:
    """Where in ``obj`` the first value :func:`to_wire` refuses is: (path, value, why)."""
    try:
        to_wire(obj)
    except _Refused as refused:
        if refused.obj is not None:
            inner, why = refused.obj, refused.why
        else:
            inner, why = obj, refused.why
    else:  # pragma: no cover - only called after a refusal
        return where, obj, ""
    children: list[tuple[str, Any]] = []
    kind = type(obj)
    if kind is list or kind is tuple:
        children = [(f"{where}[{i}]", v) for i, v in enumerate(obj)]
    elif kind is dict:
        for k, v in obj.items():
            children += [(f"{where} (key {k!r})", k), (f"{where}[{k!r}]", v)]
    elif kind is set or kind is frozenset:
        children = [(f"{where} (an item)", v) for v in obj]
    elif isinstance(obj, Event) or (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        children = [(f"{where}.{f.name}", getattr(obj, f.name))
                    for f in dataclasses.fields(obj)]
    for child_where, child in children:
        try:
            to_wire(child)
        except _Refused:
            return _locate(child, child_where)
    return where, inner, why


def unstorable(obj: Any, where: str) -> UnstorableValueError:
    """The error for a value of ``obj`` (found at ``where``) that cannot be stored."""
    path, bad, why = _locate(obj, where)
    reason = why or (f"a value of this type cannot be stored; supported: {_SUPPORTED}; "
                     "convert it (for example to a dict or a dataclass) first")
    return UnstorableValueError(
        f"cannot store a value of type {_type_name(type(bad))} ({path}): {reason}")


def check_storable(obj: Any, where: str) -> None:
    """Raise :class:`UnstorableValueError` (naming ``where``) unless ``obj`` can be stored."""
    if _is_plain(obj):
        return
    try:
        to_wire(obj)
    except _Refused:
        raise unstorable(obj, where) from None


_SCALARS: frozenset[type] = frozenset({str, int, float, bool, type(None)})


def _is_plain(obj: Any, scalars: frozenset[type] = _SCALARS, tag: str = TAG) -> bool:
    """True when ``obj`` is JSON as it is (no tags needed): the common, fast case.

    It runs on every recorded result, so it is written for speed (constants bound
    as defaults are local lookups)."""
    kind = type(obj)
    if kind is dict:
        if tag in obj:
            return False
        for key, value in obj.items():
            if type(key) is not str or (type(value) not in scalars and not _is_plain(value)):
                return False
        return True
    if kind is list:
        for value in obj:
            if type(value) not in scalars and not _is_plain(value):
                return False
        return True
    return kind in scalars


def stored_json(obj: Any, what: str = "a value", name: str = "") -> str:
    """The stored JSON text of ``obj``; an error names it as ``what`` + ``name``."""
    if type(obj) is str:
        return encode_basestring(obj)
    return STORED_TEXT(wire(obj, what, name))


def wire(obj: Any, what: str = "a value", name: str = "") -> Any:
    """:func:`to_wire`, raising :class:`UnstorableValueError` naming ``what`` + ``name``.

    A value that is JSON as it is comes back itself, not copied (the common case:
    outputs, event log records, checkpoints, most results)."""
    if _is_plain(obj):
        return obj
    try:
        return to_wire(obj)
    except _Refused:
        raise unstorable(obj, f"{what}{name}") from None


def to_wire_default(obj: Any) -> Any:
    """``json.dumps`` default hook for stored values (the event log, files, checkpoints).

    It is called only for the values JSON cannot carry: tuples and dict keys still
    come out as JSON makes them there; :func:`to_wire` keeps them.
    """
    return wire(obj)


_DECODERS: dict[str, Any] = {
    "bytes": lambda o: base64.b64decode(o["b64"]),
    "event": lambda o: event_class(o["type"])(**o["data"]),
    "tuple": lambda o: tuple(o["items"]),
    "dict": lambda o: {k: v for k, v in o["items"]},
    "set": lambda o: set(o["items"]),
    "frozenset": lambda o: frozenset(o["items"]),
    "datetime": lambda o: dt.datetime.fromisoformat(o["iso"]).replace(
        tzinfo=_from_tz(o["tz"]) if "tz" in o else None, fold=o.get("fold", 0)),
    "date": lambda o: dt.date.fromisoformat(o["iso"]),
    "time": lambda o: dt.time.fromisoformat(o["iso"]).replace(
        tzinfo=_from_tz(o["tz"]) if "tz" in o else None, fold=o.get("fold", 0)),
    "timedelta": lambda o: dt.timedelta(o["d"], o["s"], o["us"]),
    "decimal": lambda o: decimal.Decimal(o["s"]),
    "uuid": lambda o: uuid.UUID(o["hex"]),
}


def _rebuild_class(obj: dict[str, Any]) -> Any:
    path = obj["type"]
    try:
        cls = _import(path)
    except Exception as exc:
        raise UndecodableValueError(
            f"a stored {obj[TAG]} of class {path}, which cannot be imported ({exc!r}): "
            "keep the class importable under that name") from None
    tag = obj[TAG]
    try:
        if tag == "enum":
            return cls[obj["name"]] if "name" in obj else cls(obj["value"])
        if tag == "dataclass":
            new = cls.__new__(cls)
            for name, value in obj["fields"].items():
                object.__setattr__(new, name, value)
            return new
        return cls.model_validate(obj["data"])
    except Exception as exc:
        raise UndecodableValueError(
            f"a stored {tag} of class {path} that cannot be rebuilt ({exc!r}): the class "
            "changed since it was stored") from None


def untag(obj: dict[str, Any]) -> Any:
    """``json.loads`` object hook: rebuild a tagged value (others pass through)."""
    tag = obj.get(TAG)
    if tag is None:
        return obj
    decode = _DECODERS.get(tag)
    if decode is not None:
        return decode(obj)
    if tag in ("enum", "dataclass", "model"):
        return _rebuild_class(obj)
    return obj


def _digest_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return to_wire(obj)
    if isinstance(obj, Event):  # its fields as the canonical encoder takes them, as always
        return {TAG: "event", **obj.to_json()}
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


def _prebuilt(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """``encoder.encode``, the same text, without building a C encoder per call.

    ``JSONEncoder.encode`` makes a new ``c_make_encoder`` object (and a dict of
    circular-reference markers) for every value. The one built here once has no
    markers, so it keeps no state between calls (threads may share it): a value
    that contains itself recurses until the interpreter stops it, and is then
    encoded again by ``encoder`` itself, which raises the error it always did.
    """
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # pragma: no cover - an interpreter without _json
        return encoder.encode
    assert encoder.indent is None and not encoder.ensure_ascii
    make = c_make_encoder(None, encoder.default, encode_basestring, None,
                          encoder.key_separator, encoder.item_separator, encoder.sort_keys,
                          encoder.skipkeys, encoder.allow_nan)
    join, slow = "".join, encoder.encode

    def encode(value: Any) -> str:
        try:
            return join(make(value, 0))
        except RecursionError:  # a cycle (or a value nested too deep): as it always was
            return slow(value)
    return encode


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_digest_default)
_CANONICAL_KEYED = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    default=lambda obj: _keyed(_digest_default(obj)))
_CANONICAL_TEXT, _CANONICAL_KEYED_TEXT = _prebuilt(_CANONICAL), _prebuilt(_CANONICAL_KEYED)
STORED = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=to_wire_default)
"""A ``json`` encoder of stored values (built once: ``json.dumps`` with options builds one
per call); tuples and dict keys come out as JSON makes them: use :func:`stored_json`."""
STORED_TEXT = _prebuilt(STORED)
"""``STORED.encode``: the same text, faster (see :func:`_prebuilt`)."""


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


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _storable(value: Any) -> bool:
    try:
        to_wire(value)
    except _Refused:
        return False
    return True


def encode_exception(exc: BaseException) -> dict[str, Any]:
    """The stored form of an exception: type name, message, its args if they can be
    stored, and (only when it has any) its storable ``__dict__`` entries (``"attrs"``)
    and the names of the others (``"dropped"``).

    The values are kept as they are; the record codec tags them like any stored value.
    """
    args: list[Any] | None = list(exc.args)
    if not _storable(args):
        args = None
    out: dict[str, Any] = {"type": _type_name(type(exc)), "message": str(exc), "args": args}
    attrs, dropped = {}, []
    for name, value in getattr(exc, "__dict__", {}).items():
        if _storable(value):
            attrs[name] = value
        else:
            dropped.append(name)
    if attrs:
        out["attrs"] = attrs
    if dropped:
        out["dropped"] = dropped
    return out


def decode_exception(data: dict[str, Any]) -> BaseException:
    """Rebuild a recorded exception with its original type, args and attributes.

    It is built with ``cls(*args)``, else (an ``__init__`` that takes other
    arguments than it passes on) like ``copy.copy`` does, without calling
    ``__init__``. When neither gives back the recorded message and every
    attribute it had, or the type cannot be imported, it falls back to
    :class:`ReplayedCallError` (carrying the type name and the message) whose
    message says why, and that an ``except`` of
    the original type no longer matches it.
    """
    type_name, message, args = data["type"], data["message"], data.get("args")
    attrs, dropped = data.get("attrs") or {}, data.get("dropped") or []
    try:
        cls: Any = _import(type_name)
    except Exception as exc:  # any failure to import means: use the fallback
        return _replayed(type_name, message, f"its type cannot be imported ({exc!r})")
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return _replayed(type_name, message, "its type is not an Exception class")
    if args is None:
        return _replayed(type_name, message, "its args could not be stored")
    why = ""
    builders: list[Callable[[], Any]] = [lambda: cls(*args), lambda: cls.__new__(cls, *args)]
    for build in builders:
        try:
            rebuilt = build()
            if not isinstance(rebuilt, cls):
                continue
            rebuilt.args = tuple(args)
            for name, value in attrs.items():
                setattr(rebuilt, name, value)
            missing = [name for name in dropped if not hasattr(rebuilt, name)]
            if missing:
                why = f"its attributes {missing} could not be stored"
                continue
            if str(rebuilt) == message:
                return cast(BaseException, rebuilt)
            why = "rebuilt from its args and attributes, it gives another message"
        except Exception as error:  # any failure to rebuild means: try the next, or fall back
            why = f"building it from its args and attributes failed ({error!r})"
    return _replayed(type_name, message, why or "its type did not build an instance of it")


def _replayed(type_name: str, message: str, why: str) -> ReplayedCallError:
    exc = ReplayedCallError(type_name, message)
    short = type_name.rpartition(".")[2]
    exc.args = (f"{type_name}: {message} [replayed as ReplayedCallError: the recorded "
                f"exception could not be rebuilt: {why}; `except {short}` no longer "
                "matches it]",)
    return exc
