"""Recorded exceptions: the stored form of a durable call's exception, and the
exception a replay raises from it (its original type when it can be rebuilt)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from actionstate.errors import ReplayedCallError
from actionstate.records.values import import_path, storable, type_name

__all__ = ["decode_exception", "encode_exception"]


def encode_exception(exc: BaseException) -> dict[str, Any]:
    """The stored form of an exception: type name, message, its args if they can be
    stored, and (only when it has any) its storable ``__dict__`` entries (``"attrs"``)
    and the names of the others (``"dropped"``).

    The values are kept as they are; the record codec tags them like any stored value.
    """
    args: list[Any] | None = list(exc.args)
    if not storable(args):
        args = None
    out: dict[str, Any] = {"type": type_name(type(exc)), "message": str(exc), "args": args}
    attrs, dropped = {}, []
    for name, value in getattr(exc, "__dict__", {}).items():
        if storable(value):
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
        cls: Any = import_path(type_name)
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
