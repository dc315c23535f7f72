import dataclasses
import enum

import pytest

from actionstate import ConfigError, ReplayedCallError
from actionstate.records.digests import canonical_bytes, digest
from actionstate.records.exceptions import decode_exception, encode_exception


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
    from actionstate.records.digests import args_digest

    assert args_digest(args, kwargs) == digest([list(args), kwargs])


# -- issue 9 part 3: digests of the value types ------------------------------------------

PINNED = {
    # computed by the code before the value tags existed: these digests must never change
    "tuple": "7587311534e10dbbe6e7b2cf2b972cae1991d0a19e3e18923fa88cecdc840f58",
    "int_keys": "1e55480e661da428e6f7838dc80a449d5e361e01a10542f97f7dcb1152305c48",
    "set": "39a68b794b3ddebcde671473e16516ecb2acb2aa0a92f559bd7ffa98c714482f",
    "frozenset": "c67aa9ec57e9b0f11bcd0bbe958451c96599e93532615b65c50f0a97ef477c1e",
    "datetime_tz": "704f55eddc0f0e85c8620e369b50fd959fa8405765ff615edc1054b63338fa61",
    "datetime_utc": "f78926f024e6fbf507687052ff172c73145cb8c6fc3e36f78539598daaa4bbff",
    "date": "3a248667a8b442044f1a0f8f86c538e4b52eccf94ef24617d37c87e4d22cda04",
    "time": "124e6ba4cbd4963e68605a290c018acc8e5e670503f5fe3e087220c5a1d8b646",
    "timedelta": "62e33ff1da6a9cb5455ab44b2949e1679d943b688b6fd3ca9fff4743ade7e2a5",
    "decimal": "4ef229320351cf092b5b321a4adb2e1dc3c1f977d851cee66d393fc9831e697e",
    "uuid": "51699900c421c820f1e05f9fd3a0f563401841ec690bca256a25e99adad47671",
    "enum": "47c75d75092198b3f3730b77b048535ba0a6528ea6fed4be118fb12f41dad7d7",
    "bytes": "18b27b9964cf4be72e12be1a6f9f7835e6fe3ce30c4b9bd375c5117f90c7c14a",
    "dataclass": "829492cdd6a3d013d5311900c9b8dd61c33e0a5dd780d7f4742a7661a9b8166a",
}


def pinned_values() -> dict[str, object]:
    import datetime
    import decimal
    import uuid
    import zoneinfo

    return {
        "tuple": (1, "a", (2.5, None)),
        "int_keys": {1: "a", 2: [True]},
        "set": {"b", "a", 3},
        "frozenset": frozenset({1, 2}),
        "datetime_tz": datetime.datetime(2024, 3, 10, 2, 30,
                                         tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
        "datetime_utc": datetime.datetime(2024, 3, 10, 2, 30, 1, 5, tzinfo=datetime.UTC),
        "date": datetime.date(2024, 2, 29),
        "time": datetime.time(23, 59, 1),
        "timedelta": datetime.timedelta(days=1, microseconds=3),
        "decimal": decimal.Decimal("1.10"),
        "uuid": uuid.UUID(int=12345),
        "enum": Color.RED,
        "bytes": b"\x00\xff",
        "dataclass": Point(1, 2),
    }


def test_digests_of_values_accepted_before_are_unchanged() -> None:
    assert {name: digest(v) for name, v in pinned_values().items()} == PINNED
    assert digest((1, 2)) == digest([1, 2]), "a tuple digests as the list it always was"


def test_dicts_with_keys_json_refuses_digest_the_same_in_any_order() -> None:
    forward = {(1, 2): "a", (0, "x"): [1], frozenset({3}): None, Color.RED: 2}
    backward = dict(reversed(list(forward.items())))
    assert digest(forward) == digest(backward)
    assert digest({1: "a", "b": 2, None: 3}) == digest({None: 3, "b": 2, 1: "a"})
    assert digest({(1, 2): "a"}) != digest({(1, 2): "b"}) != digest({(2, 1): "a"})
    assert digest([Point(1, 2), {(1,): {3, 4}}]) == digest([Point(1, 2), {(1,): {4, 3}}])


HASH_SEED_SCRIPT = """
import datetime, decimal, json, uuid, zoneinfo
from actionstate.records.digests import digest
from tests.test_canonical import Color, Point, pinned_values
words = [f"w{i}" for i in range(40)]
values = {
    **pinned_values(),
    "str_set": set(words),
    "str_frozenset": frozenset(words),
    "tuple_keys": {(w, i): i for i, w in enumerate(words)},
    "set_in_dataclass": Point(set(words), frozenset(words)),
    "mixed_keys": {1: "a", "b": 2, None: 3, 2.5: 4, (1, "x"): {Color.RED: set(words)}},
}
print(json.dumps({name: digest(v) for name, v in values.items()}))
"""


def test_digests_of_the_value_types_are_stable_across_processes_and_hash_seeds() -> None:
    """Sets iterate in an order that depends on PYTHONHASHSEED: digests must not."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    runs = []
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed,
               "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
        out = subprocess.run([sys.executable, "-c", HASH_SEED_SCRIPT], env=env, cwd=root,
                             capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out))
    assert runs[0] == runs[1] == runs[2]
    assert {k: runs[0][k] for k in PINNED} == PINNED


def test_an_event_argument_digests_as_it_always_did() -> None:
    from actionstate.events import OutputEvent

    # computed by the code before the value tags existed
    assert digest([OutputEvent(output=(1, {2: "x"}))]) == (
        "d602edb7d93c1e38d4452a6156d05a8495974f95e626b57e73bc748eb3c970ff")
