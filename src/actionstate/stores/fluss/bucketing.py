"""Fluss's bucketing function, computed here so the store knows each record's bucket."""

from __future__ import annotations

__all__ = ["bucket_of", "fence_agent_keys"]

_M32 = 0xFFFFFFFF


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _mix_k1(k: int) -> int:
    return (_rotl((k * 0xCC9E2D51) & _M32, 15) * 0x1B873593) & _M32


def _mix_h1(h: int, k: int) -> int:
    return (_rotl(h ^ k, 13) * 5 + 0xE6546B64) & _M32


def _fmix(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def bucket_of(agent_key: str, num_buckets: int) -> int:
    """The bucket Fluss puts ``agent_key`` in (tables without a datalake format).

    Fluss encodes the bucket key with its compacted key encoder (a STRING is a
    varint length then UTF-8 bytes), hashes the bytes with its murmur3 variant
    (seed 42, tail bytes mixed one by one), mixes that hash once more as Flink's
    ``MathUtils.murmurHash`` does and takes it modulo the bucket count.
    """
    raw = agent_key.encode()
    n = len(raw)
    prefix = bytearray()
    while n >= 0x80:
        prefix.append((n & 0x7F) | 0x80)
        n >>= 7
    prefix.append(n)
    data = bytes(prefix) + raw
    h = 42
    aligned = len(data) - len(data) % 4
    for i in range(0, aligned, 4):
        h = _mix_h1(h, _mix_k1(int.from_bytes(data[i:i + 4], "little")))
    for byte in data[aligned:]:
        h = _mix_h1(h, _mix_k1(byte))
    h = _fmix(h ^ len(data))
    # Flink's MathUtils.murmurHash(int): one more round over the 4-byte hash, then abs.
    code = _mix_h1(0, _mix_k1(h))
    code = _fmix(code ^ 4)
    signed = code - (1 << 32) if code & 0x80000000 else code
    return (abs(signed) if signed != -(1 << 31) else 0) % num_buckets


def fence_agent_keys(num_buckets: int) -> list[str]:
    """One agent key per bucket that Fluss puts in that bucket (fences are routed by them)."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < num_buckets:
        candidate = f"actionstate-fence-{i}"
        found.setdefault(bucket_of(candidate, num_buckets), candidate)
        i += 1
    return [found[b] for b in range(num_buckets)]
