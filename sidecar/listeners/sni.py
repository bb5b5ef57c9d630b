"""The server name (SNI) of a TLS ClientHello, read from the first bytes of a connection. Pure.

A gateway port with PASSTHROUGH servers must choose where a connection goes before any TLS is
spoken, and a terminating port picks its certificate by the same name; this reads the
`server_name` extension (RFC 6066) out of the handshake records, which may arrive in pieces and
span several records. It never decrypts or answers anything.
"""

from __future__ import annotations

from dataclasses import dataclass

_HANDSHAKE = 0x16
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_HOST_NAME = 0
# Larger than any real ClientHello (post-quantum key shares included) and small enough that a
# client cannot make the gateway buffer much before it decides.
MAX_HELLO = 64 * 1024


class NotTLS(ValueError):
    """The bytes are not the start of a TLS ClientHello."""


@dataclass(frozen=True, slots=True)
class Hello:
    """What was read of a ClientHello: its SNI host name, lower case ("" when it sends none)."""

    server_name: str


def read_hello(data: bytes) -> Hello | None:
    """The ClientHello at the start of `data`; None while more bytes are needed; NotTLS when
    the bytes cannot be one (or it is larger than MAX_HELLO)."""
    if data and data[0] != _HANDSHAKE:
        raise NotTLS("not a TLS handshake record")
    handshake = bytearray()
    offset = 0
    while True:
        if len(handshake) >= 4:
            if handshake[0] != _CLIENT_HELLO:
                raise NotTLS("first handshake message is not a ClientHello")
            length = int.from_bytes(handshake[1:4], "big")
            if length + 4 > MAX_HELLO:
                raise NotTLS("ClientHello too large")
            if len(handshake) >= length + 4:
                return Hello(server_name=_server_name(bytes(handshake[4 : 4 + length])))
        if len(data) < offset + 5:
            if offset > MAX_HELLO:
                raise NotTLS("ClientHello too large")
            return None
        if data[offset] != _HANDSHAKE:
            raise NotTLS("ClientHello interrupted by another record type")
        record = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if record == 0 or record > 16384 + 2048:
            raise NotTLS(f"bad TLS record length {record}")
        if len(data) < offset + 5 + record:
            return None
        handshake += data[offset + 5 : offset + 5 + record]
        offset += 5 + record


def _server_name(body: bytes) -> str:
    try:
        at = 2 + 32  # client_version, random
        at += 1 + body[at]  # session id
        at += 2 + int.from_bytes(body[at : at + 2], "big")  # cipher suites
        at += 1 + body[at]  # compression methods
        if at >= len(body):
            return ""  # no extensions
        end = at + 2 + int.from_bytes(body[at : at + 2], "big")
        at += 2
        while at + 4 <= end:
            kind = int.from_bytes(body[at : at + 2], "big")
            size = int.from_bytes(body[at + 2 : at + 4], "big")
            data = body[at + 4 : at + 4 + size]
            at += 4 + size
            if kind != _SERVER_NAME:
                continue
            inner = 2
            while inner + 3 <= len(data):
                name_type = data[inner]
                name_len = int.from_bytes(data[inner + 1 : inner + 3], "big")
                name = data[inner + 3 : inner + 3 + name_len]
                inner += 3 + name_len
                if name_type == _HOST_NAME:
                    return name.decode("ascii").lower().rstrip(".")
        return ""
    except (IndexError, UnicodeDecodeError) as error:
        raise NotTLS(f"malformed ClientHello: {error}") from None
