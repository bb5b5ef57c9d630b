"""One translated resource, serialized once; and the cache of translations by their inputs. Pure.

A `Resource` keeps only bytes: the encoded `resources` entry of a response (name, content-hash
version, Any). The `TranslationCache` remembers, per translation key (a host and the resources it
was translated from), the versions of the inputs it was built from, and translates again only
when one of them changed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.message import Message

from controlplane.snapshots.wire import RESOURCES, field
from lightmesh.v1 import discovery_pb2 as dpb
from lightmesh.versions import content_version


@dataclass(frozen=True, slots=True)
class Resource:
    """A named, versioned, serialized resource."""

    name: str
    version: str
    entry: bytes  # one `resources` field of a DeltaDiscoveryResponse

    def decode(self) -> AnyPb:
        """The resource as an Any (debug endpoints only)."""
        return dpb.Resource.FromString(_payload(self.entry)).resource


def _payload(entry: bytes) -> bytes:
    # Skip the tag byte and the length varint of the field.
    at = 1
    while entry[at] & 0x80:
        at += 1
    return entry[at + 1 :]


def make_resource(type_url: str, name: str, message: Message) -> Resource:
    """Serialize one resource (deterministically: equal content, equal version)."""
    value = message.SerializeToString(deterministic=True)
    version = content_version(value)
    wrapped = dpb.Resource(
        name=name, version=version, resource=AnyPb(type_url=type_url, value=value)
    )
    return Resource(name=name, version=version, entry=field(RESOURCES, wrapped.SerializeToString()))


class TranslationCache:
    """Translated resources by key, rebuilt only when the versions of their inputs change."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[Hashable, Sequence[Resource]]] = {}
        self._used: set[Hashable] = set()
        self.builds = 0  # translations done (the rest were cache hits)

    def get(
        self, key: Hashable, inputs: Hashable, build: Callable[[], Sequence[Resource]]
    ) -> Sequence[Resource]:
        """The resources for `key`, translated again when `inputs` differ from last time."""
        self._used.add(key)
        found = self._entries.get(key)
        if found is not None and found[0] == inputs:
            return found[1]
        value = build()
        self.builds += 1
        self._entries[key] = (inputs, value)
        return value

    def sweep(self) -> int:
        """Forget entries not asked for since the last sweep; return how many."""
        stale = [k for k in self._entries if k not in self._used]
        for key in stale:
            del self._entries[key]
        self._used = set()
        return len(stale)

    def __len__(self) -> int:
        return len(self._entries)
