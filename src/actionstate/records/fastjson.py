"""JSON encoders built once (the stored values' and the digests')."""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any

__all__ = ["prebuilt"]


def prebuilt(encoder: json.JSONEncoder) -> Callable[[Any], str]:
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
