"""TCP_NODELAY on the Fluss client's connections (pyfluss 1.0.0 leaves Nagle on).

A write that spans many buckets goes out in several segments, and with Nagle's
algorithm the last one waits for the server's delayed ACK: about 45 ms per group
commit over 64 buckets, 5 ms without it. The client exposes no socket option, so
this process's sockets connected to the Fluss servers get it set directly.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable

__all__ = ["addresses", "disable_nagle"]


def addresses(hosts: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
    """The (IP, port) pairs that ``hosts`` resolve to."""
    out = set()
    for host, port in hosts:
        with contextlib.suppress(OSError):
            for *_, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
                out.add((str(address[0]), int(address[1])))
    return out


def disable_nagle(peers: set[tuple[str, int]]) -> None:
    """Set TCP_NODELAY on this process's TCP connections to ``peers`` that lack it."""
    try:
        fds = [int(name) for name in os.listdir("/dev/fd")]
    except OSError:
        return
    for fd in fds:
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # not a socket (or closed meanwhile)
            continue
        try:
            if (sock.type == socket.SOCK_STREAM and sock.getpeername()[:2] in peers
                    and not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, TypeError):
            pass
        finally:
            sock.detach()
