"""Header edits of a route (request or response): remove, then set, then add. Pure.

Compiled once per config into bytes so applying them costs a list rebuild, not a re-encode.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightmesh.v1 import config_pb2 as pb

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Edits of a header list; names lower-case bytes."""

    set: tuple[tuple[bytes, bytes], ...] = ()
    add: tuple[tuple[bytes, bytes], ...] = ()
    remove: frozenset[bytes] = frozenset()

    @classmethod
    def from_proto(cls, ops: pb.HeaderOps) -> HeaderEdits | None:
        """The edits, or None when there are none (the common case costs nothing)."""
        if not (ops.set or ops.add or ops.remove):
            return None
        return cls(
            set=tuple((h.name.lower().encode(), h.value.encode("latin-1")) for h in ops.set),
            add=tuple((h.name.lower().encode(), h.value.encode("latin-1")) for h in ops.add),
            remove=frozenset(name.lower().encode() for name in ops.remove),
        )

    def apply(self, headers: Headers) -> None:
        """Edit `headers` in place: drop removed and overwritten names, then append set and add."""
        drop = self.remove | {name for name, _ in self.set}
        if drop:
            headers[:] = [(k, v) for k, v in headers if k not in drop]
        headers.extend(self.set)
        headers.extend(self.add)
