"""Per-sidecar snapshot cache: the latest translated config of each sidecar, versioned per type.

A version is a content hash of the type's resources, so equal config has equal versions on every
replica and across restarts, and a sidecar that reconnects holding the current version is sent
nothing. Pure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.message import Message


@dataclass(frozen=True, slots=True, kw_only=True)
class TypeSnapshot:
    """All resources of one type for one sidecar, packed and versioned."""

    version: str
    resources: tuple[AnyPb, ...]


def version_of(resources: list[Message]) -> str:
    """Content hash of a list of resources (deterministic serialization)."""
    digest = hashlib.sha256()
    for resource in resources:
        data = resource.SerializeToString(deterministic=True)
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return digest.hexdigest()[:16]


def _pack(resources: list[Message]) -> tuple[AnyPb, ...]:
    packed = []
    for resource in resources:
        item = AnyPb()
        item.Pack(resource, deterministic=True)
        packed.append(item)
    return tuple(packed)


class SnapshotCache:
    """Latest snapshot per node id and type."""

    def __init__(self) -> None:
        self._snapshots: dict[str, dict[str, TypeSnapshot]] = {}

    def set(self, node_id: str, config: dict[str, list[Message]]) -> list[str]:
        """Store a node's config; return the type URLs whose version changed."""
        current = self._snapshots.setdefault(node_id, {})
        changed = []
        for type_url, resources in config.items():
            version = version_of(resources)
            if type_url not in current or current[type_url].version != version:
                current[type_url] = TypeSnapshot(version=version, resources=_pack(resources))
                changed.append(type_url)
        return changed

    def get(self, node_id: str) -> dict[str, TypeSnapshot]:
        """The node's snapshots by type (empty when none yet)."""
        return self._snapshots.get(node_id, {})

    def versions(self, node_id: str) -> dict[str, str]:
        """The node's current version per type."""
        return {t: s.version for t, s in self.get(node_id).items()}

    def drop(self, node_id: str) -> None:
        """Forget a node that disconnected."""
        self._snapshots.pop(node_id, None)
