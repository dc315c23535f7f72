"""Reading stored values back: :func:`untag` rebuilds the tagged values of
:mod:`actionstate.records.values` (their format is described there)."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import uuid
import zoneinfo
from typing import Any

from actionstate.events import event_class
from actionstate.records.values import TAG, import_path

__all__ = ["UndecodableValueError", "untag"]


class UndecodableValueError(ValueError):
    """A stored tagged value that cannot be rebuilt (its class is gone, ...)."""


def _from_tz(spec: Any) -> dt.tzinfo:
    if isinstance(spec, str):
        return zoneinfo.ZoneInfo(spec)
    offset = dt.timedelta(*spec["offset"])
    return dt.timezone(offset, spec["name"]) if "name" in spec else dt.timezone(offset)


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
        cls = import_path(path)
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
