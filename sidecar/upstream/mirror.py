"""Traffic mirroring: a fire-and-forget copy of a request to a shadow endpoint, response discarded.

A mirror never delays or fails the original: the copy is sent from its own task on its own
connection (`Connection: close`, never pooled) after the original's request is complete, and
whatever happens to it (refused, slow, garbage) is only counted. At most `limit` copies are in
flight per listener; beyond that a copy is dropped and counted, so a slow shadow cannot make the
sidecar hold an unbounded number of connections. Host gets the `-shadow` suffix, as in Istio, so
the shadow service can tell mirrored traffic from real traffic. The copy's connection comes from
the listener's pool (`ConnectionPool.connect`, then discarded), so a cluster with mutual TLS gets
its copy over mutual TLS, with the same secure naming check, as the original.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sidecar.contract import Forward, RequestHead
from sidecar.errors import UpstreamError
from sidecar.http.http1 import Framing, Headers
from sidecar.http.messages import upstream_request
from sidecar.upstream.pool import ConnectionPool, UpstreamConnection

# Copies in flight per listener before new ones are dropped.
MIRROR_LIMIT = 64
# How long a copy may take in all when the route sets no timeout.
MIRROR_TIMEOUT = 10.0
# Bytes of a mirrored response read (and discarded) before the copy is given up as done.
_DISCARD_LIMIT = 1 << 20


@dataclass(slots=True, eq=False, kw_only=True)
class Mirrors:
    """Copies in flight and their outcomes, for one listener (read by metrics)."""

    limit: int = MIRROR_LIMIT
    sent: int = 0  # copies that started (connect attempted)
    dropped: int = 0  # copies not sent: `limit` in flight
    failed: int = 0  # connect failure, reset or timeout of a copy
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def send(
        self,
        target: Forward,
        head: RequestHead,
        framing: Framing,
        body: bytes,
        *,
        pool: ConnectionPool,
    ) -> None:
        """Start a copy of the request (head as forwarded, `body` as sent) to `target`, on a new
        connection of `pool` (mutual TLS and secure naming as for the original)."""
        if len(self.tasks) >= self.limit:
            self.dropped += 1
            return
        self.sent += 1
        data = shadow_request(head, framing) + body
        task = asyncio.get_running_loop().create_task(
            self._copy(target, data, pool), name=f"mirror-{target.cluster}"
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _copy(self, target: Forward, data: bytes, pool: ConnectionPool) -> None:
        conn: UpstreamConnection | None = None
        sink = _Discard(asyncio.get_running_loop().create_future())
        try:
            async with asyncio.timeout(target.timeout or MIRROR_TIMEOUT):
                conn = await pool.connect(
                    target.address,
                    target.port,
                    connect_timeout=target.connect_timeout,
                    tls_server_name=target.tls_server_name,
                    identities=target.tls_identities,
                )
                conn.owner = sink
                conn.write(data)
                # Read the answer to its end (the shadow closes after it) and throw it away.
                if not await sink.done:
                    self.failed += 1
        except (UpstreamError, OSError, TimeoutError):
            self.failed += 1
        finally:
            if conn is not None:
                pool.discard(conn)  # `Connection: close`: never pooled

    def close(self) -> None:
        """Cancel the copies in flight (the listener is closing)."""
        for task in list(self.tasks):
            task.cancel()


class _Discard:
    """Owner of a mirror copy's connection: counts the answer's bytes and drops them; `done` is
    True once the shadow closed (or enough was read), False if the connection broke."""

    __slots__ = ("done", "received")

    def __init__(self, done: asyncio.Future[bool]) -> None:
        self.done = done
        self.received = 0

    def _end(self, ok: bool) -> None:
        if not self.done.done():
            self.done.set_result(ok)

    def upstream_data(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= _DISCARD_LIMIT:
            self._end(True)

    def upstream_eof(self) -> bool:
        self._end(True)
        return False

    def upstream_lost(self, exc: Exception | None) -> None:
        self._end(exc is None)

    def upstream_paused(self) -> None:
        pass

    def upstream_resumed(self) -> None:
        pass


def shadow_host(value: bytes) -> bytes:
    """Host value of a mirrored request: "catalog:8080" -> "catalog-shadow:8080"."""
    host, sep, port = value.rpartition(b":")
    if sep and host and port.isdigit():
        return host + b"-shadow:" + port
    return value + b"-shadow"


def shadow_request(head: RequestHead, framing: Framing) -> bytes:
    """The serialised head of a mirrored request: Host suffixed, Connection: close."""
    headers: Headers = [(k, shadow_host(v) if k == b"host" else v) for k, v in head.headers]
    headers.append((b"connection", b"close"))
    copy = RequestHead(
        method=head.method,
        path=head.path,
        host=head.host,
        http_version=head.http_version,
        headers=headers,
    )
    return upstream_request(copy, framing)
