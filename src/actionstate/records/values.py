"""Stored values: the tagged-JSON value format, and writing values in it.

Stored values (call results, memory values, event fields, exception args and
attributes) are JSON with the values JSON cannot carry as tagged objects
``{"__as__": tag, ...}``, so that they come back type for type (read back by
:func:`actionstate.records.untag.untag`):

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

Digests of values are in :mod:`actionstate.records.digests`; recorded exceptions in
:mod:`actionstate.records.exceptions`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import importlib
import json
import uuid
import zoneinfo
from json.encoder import encode_basestring
from typing import Any

from actionstate.errors import ConfigError
from actionstate.events import Event, event_type_name
from actionstate.records.fastjson import prebuilt

__all__ = [
    "STORED",
    "STORED_TEXT",
    "TAG",
    "UnstorableValueError",
    "check_storable",
    "import_path",
    "storable",
    "stored_json",
    "to_wire",
    "to_wire_default",
    "type_name",
    "unstorable",
    "wire",
]

TAG = "__as__"


class UnstorableValueError(ConfigError, TypeError):
    """A durable result, memory value or event field of a type that cannot be stored
    (the message names the type and where the value came from)."""


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
        path = type_name(cls)
        try:
            found = import_path(path)
        except Exception:
            found = None
        if found is not cls:
            raise _Refused(None, f"its class {path} cannot be imported under that name "
                           "(defined inside a function, or in __main__?), so a replay "
                           "could not rebuild it; define it at module level")
        _CLASSES[cls] = path
    return path


def import_path(path: str) -> Any:
    """The object ``path`` (``module.qualname``) names, imported."""
    module_name, _, qualname = path.rpartition(".")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def type_name(cls: type) -> str:
    """``module.qualname`` of ``cls``."""
    return f"{cls.__module__}.{cls.__qualname__}"


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
    raise _Refused(None, f"its tzinfo of type {type_name(type(tz))} cannot be stored: "
                   "use datetime.timezone or zoneinfo.ZoneInfo")


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
        f"cannot store a value of type {type_name(type(bad))} ({path}): {reason}")


def check_storable(obj: Any, where: str) -> None:
    """Raise :class:`UnstorableValueError` (naming ``where``) unless ``obj`` can be stored."""
    if _is_plain(obj):
        return
    try:
        to_wire(obj)
    except _Refused:
        raise unstorable(obj, where) from None


def storable(value: Any) -> bool:
    """True when ``value`` can be stored (:func:`to_wire` takes it)."""
    try:
        to_wire(value)
    except _Refused:
        return False
    return True


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


STORED = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=to_wire_default)
"""A ``json`` encoder of stored values (built once: ``json.dumps`` with options builds one
per call); tuples and dict keys come out as JSON makes them: use :func:`stored_json`."""
STORED_TEXT = prebuilt(STORED)
"""``STORED.encode``: the same text, faster (see :func:`prebuilt`)."""
