"""Content versions shared by the control plane and the sidecar.

A resource's version is a hash of its serialized content, so equal content has equal versions on
every replica and across restarts. A set's digest hashes its (name, version) pairs in name order:
both sides compute it the same way, so proxy-status and a sidecar's config_dump show one compact
version per type, and a reconnecting sidecar can prove in one string that it holds the current set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping


def content_version(data: bytes) -> str:
    """Version of one serialized resource (16 hex digits)."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def set_version(versions: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """Digest of a set of resources given as name -> version (16 hex digits; "" for no set)."""
    items = sorted(versions.items() if isinstance(versions, Mapping) else versions)
    digest = hashlib.blake2b(digest_size=8)
    for name, version in items:
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(version.encode())
        digest.update(b"\n")
    return digest.hexdigest()
