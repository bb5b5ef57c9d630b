"""Protobuf wire encoding of `DeltaDiscoveryResponse`s from pre-serialized resources. Pure.

Each resource is serialized once, as the bytes of one `resources` field entry; a response to any
number of sidecars is those entries concatenated with a few small fields (type, removals, nonce),
so the per-sidecar cost of a push is a join, not a serialization. Field numbers follow
proto/lightmesh/v1/discovery.proto (tests decode the result with the generated code).
"""

from __future__ import annotations

from collections.abc import Iterable

SYSTEM_VERSION = 1
RESOURCES = 2
TYPE_URL = 4
NONCE = 5
REMOVED = 6


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def field(number: int, data: bytes) -> bytes:
    """One length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def response(
    *,
    type_url: str,
    entries: bytes,
    removed: Iterable[str] = (),
    nonce: str,
    system_version: str = "",
) -> bytes:
    """A serialized DeltaDiscoveryResponse; `entries` is concatenated `resources` fields."""
    parts = [field(TYPE_URL, type_url.encode()), entries]
    parts += [field(REMOVED, name.encode()) for name in removed]
    if system_version:
        parts.append(field(SYSTEM_VERSION, system_version.encode()))
    parts.append(field(NONCE, nonce.encode()))
    return b"".join(parts)
