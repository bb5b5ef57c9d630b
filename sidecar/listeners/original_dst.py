"""The destination a redirected connection was addressed to, before iptables REDIRECT rewrote it.

An app's `connect("10.0.0.12", 8080)` lands on the sidecar's outbound listener; conntrack keeps
the original address, which the kernel hands back through the SO_ORIGINAL_DST socket option.
"""

from __future__ import annotations

import socket
import struct
from typing import Protocol

# From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>; not exported by `socket`.
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
_SOCKADDR_IN_SIZE = 16
_SOCKADDR_IN6_SIZE = 28


class Socket(Protocol):
    """What is needed of the socket: a `socket.socket`, or what an asyncio transport's
    `get_extra_info("socket")` returns (asyncio's TransportSocket, uvloop's PseudoSocket)."""

    @property
    def family(self) -> int: ...

    def getsockname(self) -> tuple[str, int] | tuple[str, int, int, int]: ...

    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes: ...


def original_destination(sock: Socket) -> tuple[str, int] | None:
    """(address, port) the peer connected to, or None when the connection was not redirected.

    None also when the kernel has no NAT record (no conntrack, not Linux) or the socket is closed.
    Call it once per accepted connection, e.g. with `writer.get_extra_info("socket")`.
    """
    try:
        local = sock.getsockname()
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN_SIZE)
            port = struct.unpack_from("!H", raw, 2)[0]
            address = socket.inet_ntop(socket.AF_INET, raw[4:8])
        elif sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6_SIZE)
            port = struct.unpack_from("!H", raw, 2)[0]
            address = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        else:
            return None
    except OSError:
        return None
    # Without a REDIRECT, conntrack (when loaded) reports the address we were reached at.
    if (address, port) == (local[0], local[1]):
        return None
    return address, port
