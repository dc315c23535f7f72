"""Writes tests/golden/values-v1.jsonl from tests/golden/value_types.py. Run it
(``python -m tests.golden.make_values_golden`` from the repository root) only for a
deliberate new format version."""

from __future__ import annotations

from pathlib import Path

from tests.golden.value_types import records

from actionstate.records.codec import encode_record

if __name__ == "__main__":
    path = Path(__file__).with_name("values-v1.jsonl")
    path.write_bytes(b"".join(encode_record(r) + b"\n" for r in records()))
