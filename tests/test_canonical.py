import dataclasses
import enum

import pytest

from actionstate import ConfigError, ReplayedCallError
from actionstate.records.canonical import (
    canonical_bytes,
    decode_exception,
    digest,
    encode_exception,
)


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Opaque:
    pass


class NeedsTwoArgs(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def test_canonical_bytes_sort_keys_and_keep_unicode() -> None:
    assert canonical_bytes({"b": 1, "a": "ключ"}) == '{"a":"ключ","b":1}'.encode()


def test_digest_is_full_sha256_and_order_independent_for_dicts_and_sets() -> None:
    assert len(digest({"a": 1})) == 64
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
    assert digest({3, 1, 2}) == digest({1, 2, 3})
    assert digest(Point(1, 2)) != digest(Point(2, 1))
    assert digest(Color.RED) == digest(Color.RED)


def test_objects_with_memory_addresses_are_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="memory address"):
        digest([Opaque()])


def test_exception_replays_with_its_original_type() -> None:
    exc = decode_exception(encode_exception(KeyError("missing")))
    assert type(exc) is KeyError and exc.args == ("missing",)


def test_exception_that_cannot_be_rebuilt_falls_back_to_replayed_call_error() -> None:
    stored = encode_exception(NeedsTwoArgs("a", "b"))
    stored["args"] = None
    exc = decode_exception(stored)
    assert isinstance(exc, ReplayedCallError)
    assert exc.type_name.endswith("NeedsTwoArgs") and exc.message == "a/b"
    gone = decode_exception({"type": "no.such.Error", "message": "m", "args": ["m"]})
    assert isinstance(gone, ReplayedCallError) and gone.type_name == "no.such.Error"


@pytest.mark.parametrize("args, kwargs", [
    (("plain", 1, True, None), {}),
    (("ключ \"quoted\" \\ \n tab\t 🔑", -(2**70)), {}),
    ((1.5,), {}),
    ((Color.RED, [1, {"b": 2, "a": 1}]), {}),
    (("x",), {"k": "v"}),
    ((), {}),
])
def test_args_digest_fast_path_equals_the_canonical_digest(
        args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    from actionstate.records.canonical import args_digest

    assert args_digest(args, kwargs) == digest([list(args), kwargs])
