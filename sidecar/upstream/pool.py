"""Upstream connections as asyncio Protocols, and the per-endpoint keep-alive pool that holds them.

An `UpstreamConnection` forwards everything its transport reports to its current `owner` (the
attempt using it, or a tunnel); while pooled it has none, and any event (bytes, EOF, close) makes
it unusable. The pool reuses idle connections last-in first-out, so the warmest is picked and
the coldest expire; `sweep` closes those idle longer than their cluster's idle timeout (the
pool's `idle_timeout` unless `release` was given one).

Connections are pooled per (address, port, TLS server name): a mutual-TLS connection (server name
non-empty) is handshaken once and reused like a plain one. The client context is read from
`client_tls` when a connection opens, so after a certificate rotation new connections present the
new certificate while pooled ones keep theirs until they expire. After the handshake the server's
verified SPIFFE ID must be one of those the control plane says the cluster's endpoints run as
(secure naming); otherwise the connection is dropped as a connect failure (503 UF) and counted.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Protocol, TypeVar, cast

from lightmesh.spiffe import peer_identity
from sidecar.errors import UpstreamConnectFailure, UpstreamWrongIdentity
from sidecar.http.http1 import ResponseParser

logger = logging.getLogger(__name__)

# (address, port, TLS server name): "" for plaintext connections.
PoolKey = tuple[str, int, str]


def named_securely(identity: str, expected: frozenset[str]) -> bool:
    """Secure naming: whether a server presenting `identity` (its verified SPIFFE ID) may serve a
    cluster whose endpoints run as `expected`. An empty set (the control plane knows no service
    account for the cluster) admits any identity the trust bundle vouches for."""
    return not expected or identity in expected


class UpstreamOwner(Protocol):
    """Who receives an upstream connection's events while it is in use."""

    def upstream_data(self, data: bytes) -> None:
        """Bytes arrived."""

    def upstream_eof(self) -> bool:
        """The upstream half-closed; True keeps our sending half open (tunnels)."""

    def upstream_lost(self, exc: Exception | None) -> None:
        """The connection is gone (closed, reset or aborted)."""

    def upstream_paused(self) -> None:
        """The upstream's write buffer is full: stop feeding it."""

    def upstream_resumed(self) -> None:
        """The upstream's write buffer drained."""


class Dialled(asyncio.Protocol):
    """What `dial` needs of the protocol it connects: its transport, where TLS says who."""

    __slots__ = ()

    transport: asyncio.Transport | None
    tls: bool
    peer: str

    def abort(self) -> None:
        """Drop the connection."""
        raise NotImplementedError


class UpstreamConnection(Dialled):
    """One connection to an endpoint; `reused` once it has come out of the idle pool."""

    __slots__ = (
        "closed",
        "idle_limit",
        "idle_since",
        "key",
        "owner",
        "parser",
        "peer",
        "reading_paused",
        "requests",
        "reused",
        "tls",
        "transport",
        "write_paused",
    )

    def __init__(self, key: PoolKey) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.owner: UpstreamOwner | None = None
        self.parser: ResponseParser | None = None  # kept between responses (see reset)
        self.reused = False
        self.idle_since = 0.0
        self.idle_limit = 0.0  # seconds it may stay pooled (set by `release`)
        self.requests = 0  # requests sent on it (for maxRequestsPerConnection)
        self.closed = False  # EOF, reset or close seen: never reuse
        self.reading_paused = False
        self.write_paused = False
        self.tls = False  # mutual TLS (set by ConnectionPool.connect after the handshake)
        self.peer = ""  # the server's verified SPIFFE ID (mutual TLS)

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is not None:
            owner.upstream_data(data)
        else:
            # Bytes on an idle connection: the upstream is out of sync; never reuse it.
            self.abort()

    def eof_received(self) -> bool | None:
        self.closed = True
        if self.owner is not None and self.owner.upstream_eof():
            return True
        return None  # let the transport close; our half is of no more use

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.owner is not None:
            self.owner.upstream_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.owner is not None:
            self.owner.upstream_resumed()

    # --- used by owners ---

    def write(self, data: bytes) -> None:
        """Send bytes upstream (buffered by the transport when the socket is full)."""
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(data)

    def pause_reading(self) -> None:
        """Stop reading (the downstream cannot take more)."""
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read again."""
        if self.reading_paused:
            self.reading_paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def usable(self) -> bool:
        """False once the upstream closed it or it was closed locally."""
        transport = self.transport
        return not self.closed and transport is not None and not transport.is_closing()

    def abort(self) -> None:
        """Drop the connection without a graceful close (it may be mid-message)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _no_tls() -> ssl.SSLContext | None:
    return None


P = TypeVar("P", bound=Dialled)


async def dial(
    factory: Callable[[], P],
    address: str,
    port: int,
    *,
    connect_timeout: float,
    context: ssl.SSLContext | None,
    tls_server_name: str,
    identities: frozenset[str],
    refused: dict[str, int],
) -> P:
    """Connect `factory`'s protocol to address:port, over mutual TLS with `context` (its SNI
    `tls_server_name`), the server named securely; raises UpstreamConnectFailure, also for a
    failed handshake, and UpstreamWrongIdentity (counted in `refused` per server name)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout):
            if context is None:
                # Before the first certificate arrives, mesh traffic goes in plaintext (a
                # STRICT peer refuses it; a PERMISSIVE one serves it).
                _, conn = await loop.create_connection(factory, address, port)
            else:
                _, conn = await loop.create_connection(
                    factory,
                    address,
                    port,
                    ssl=context,
                    server_hostname=tls_server_name,
                    ssl_handshake_timeout=connect_timeout,
                )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise UpstreamConnectFailure(f"connect {address}:{port}: {exc!r}") from exc
    if context is not None:
        transport = conn.transport
        identity = peer_identity(transport.get_extra_info("ssl_object") if transport else None)
        if not named_securely(identity, identities):
            conn.abort()
            refused[tls_server_name] = refused.get(tls_server_name, 0) + 1
            logger.warning(
                "upstream %s:%d presented %r, not an identity of %s",
                address,
                port,
                identity,
                tls_server_name,
                extra={"event": "secure_naming_refused", "peer_identity": identity},
            )
            raise UpstreamWrongIdentity(
                f"connect {address}:{port}: server identity {identity!r} is not one of "
                f"{tls_server_name}'s ({', '.join(sorted(identities))})"
            )
        conn.tls = True
        conn.peer = identity
    return conn


class ConnectionPool:
    """Idle keep-alive connections per (address, port, TLS server name), reused last-in first-out."""

    def __init__(
        self,
        *,
        idle_timeout: float,
        clock: Callable[[], float],
        client_tls: Callable[[], ssl.SSLContext | None] = _no_tls,
    ) -> None:
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._client_tls = client_tls
        self._idle: dict[PoolKey, list[UpstreamConnection]] = {}
        self._open: set[UpstreamConnection] = set()
        # Connections refused by secure naming, per TLS server name (the service FQDN).
        self.wrong_identity: dict[str, int] = {}

    def take_idle(
        self, key: PoolKey, identities: frozenset[str] = frozenset()
    ) -> UpstreamConnection | None:
        """The most recently released healthy connection to `key`, or None. One whose server is
        no longer named securely (the cluster's `identities` changed) is closed instead."""
        stack = self._idle.get(key)
        if not stack:
            return None
        now = self._clock()
        while stack:
            conn = stack.pop()
            if (
                conn.usable()
                and now - conn.idle_since < conn.idle_limit
                and (not conn.tls or named_securely(conn.peer, identities))
            ):
                conn.reused = True
                return conn
            self.discard(conn)
        return None

    async def connect(
        self,
        address: str,
        port: int,
        *,
        connect_timeout: float,
        tls_server_name: str = "",
        identities: frozenset[str] = frozenset(),
    ) -> UpstreamConnection:
        """A new connection (mutual TLS when `tls_server_name` is set and we have a
        certificate); raises UpstreamConnectFailure, also for a failed handshake, and
        UpstreamWrongIdentity when the server's SPIFFE ID is not in `identities` (if any)."""
        key = (address, port, tls_server_name)
        context = self._client_tls() if tls_server_name else None
        conn = await dial(
            lambda: UpstreamConnection(key),
            address,
            port,
            connect_timeout=connect_timeout,
            context=context,
            tls_server_name=tls_server_name,
            identities=identities,
            refused=self.wrong_identity,
        )
        self._open.add(conn)
        return conn

    async def acquire(
        self,
        address: str,
        port: int,
        *,
        connect_timeout: float,
        fresh: bool = False,
        tls_server_name: str = "",
        identities: frozenset[str] = frozenset(),
    ) -> UpstreamConnection:
        """An idle connection if one is healthy (unless `fresh`), else a new one."""
        if not fresh:
            conn = self.take_idle((address, port, tls_server_name), identities)
            if conn is not None:
                return conn
        return await self.connect(
            address,
            port,
            connect_timeout=connect_timeout,
            tls_server_name=tls_server_name,
            identities=identities,
        )

    def release(self, conn: UpstreamConnection, *, idle_timeout: float | None = None) -> None:
        """Return a connection whose exchange completed cleanly and may be reused; it stays
        pooled for `idle_timeout` (its cluster's; default the pool's)."""
        conn.owner = None
        conn.resume_reading()  # a paused idle connection would never notice the upstream close
        if not conn.usable():
            self.discard(conn)
            return
        conn.idle_since = self._clock()
        conn.idle_limit = self.idle_timeout if idle_timeout is None else idle_timeout
        stack = self._idle.get(conn.key)
        if stack is None:
            self._idle[conn.key] = [conn]
        else:
            stack.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """Close a connection that must not be reused."""
        conn.owner = None
        conn.abort()
        self._open.discard(conn)

    def detach(self, conn: UpstreamConnection) -> None:
        """Forget a connection that now belongs to someone else (a tunnel closes it)."""
        self._open.discard(conn)

    def sweep(self) -> None:
        """Close idle connections that expired or that the upstream closed."""
        now = self._clock()
        for key, stack in list(self._idle.items()):
            keep = [c for c in stack if c.usable() and now - c.idle_since < c.idle_limit]
            if len(keep) != len(stack):
                for conn in stack:
                    if conn not in keep:
                        self.discard(conn)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        # Connections closed by their owners leave the open set here, in bulk.
        self._open = {c for c in self._open if not c.closed}

    def close(self) -> None:
        """Abort every connection, idle or in use."""
        conns = list(self._open)
        self._open.clear()
        self._idle.clear()
        for conn in conns:
            conn.owner = None
            conn.abort()
