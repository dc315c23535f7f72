"""Which partition an agent key's records go to (the client's partitioner is not used)."""

from __future__ import annotations

import hashlib

__all__ = ["partition_of"]


def partition_of(agent_key: str, partitions: int) -> int:
    """The partition every record of ``agent_key`` goes to: SHA-256 of its UTF-8, mod n."""
    digest = hashlib.sha256(agent_key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % partitions
