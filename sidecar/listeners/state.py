"""What the connections of one proxy listener share: tunables, resolver, recorder, pool, counters.

One `ListenerState` per listener; every downstream connection and exchange holds a reference, so
the hot path reaches settings and the pool without globals.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sidecar.contract import (
    Completed,
    Decision,
    Divert,
    Forward,
    LocalReply,
    Recorder,
    RequestHead,
    Resolver,
)
from sidecar.errors import rescue
from sidecar.http.http1 import MAX_HEAD_BYTES, MAX_HEADERS
from sidecar.listeners.splice import Splice
from sidecar.upstream.h2pool import H2Pool
from sidecar.upstream.mirror import Mirrors
from sidecar.upstream.pool import ConnectionPool


class Phase(enum.Enum):
    """Where a downstream connection is, for the sweeper that enforces the downstream timeouts."""

    IDLE = enum.auto()  # waiting for the first byte of a request (idle_timeout)
    HEAD = enum.auto()  # a head has begun but is not complete (head_timeout)
    BUSY = enum.auto()  # an exchange is in flight (its own timeouts apply)
    CLOSED = enum.auto()  # closing or closed; whatever arrives now is ignored


# Why a downstream connection is not being read (bits; reading resumes when none is left).
PAUSE_BACKLOG = 1  # pipelined requests wait behind the current exchange
PAUSE_UPSTREAM_FULL = 2  # the upstream's write buffer is full
PAUSE_UNSENT = 4  # body bytes wait for the upstream connection to be established


class Client(Protocol):
    """An accepted connection the listener's sweeper and drain look after: an HTTP connection
    (downstream.py), or one still being sniffed or handshaken (inbound_tls.py)."""

    @property
    def phase(self) -> Phase:
        """Where it is; the drain closes IDLE ones at once."""

    def expire(self, now: float) -> None:
        """Enforce its timeouts."""

    def close(self, *, abort: bool = False) -> None:
        """Close it."""


logger = logging.getLogger("sidecar.proxy")


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineSettings:
    """Tunables of one proxy listener; defaults suit production (and follow Envoy's)."""

    pool_idle_timeout: float = 60.0
    # A downstream connection with no request in flight is closed after this long.
    idle_timeout: float = 60.0
    # From the first byte of a request head to its end; then 408 and close.
    head_timeout: float = 30.0
    # An Upgrade tunnel (or TCP passthrough connection) with no byte either way for this long is
    # closed (Envoy's tcp_proxy idle_timeout default).
    tunnel_idle_timeout: float = 3600.0
    # Larger heads, or heads with more fields, are answered 431 and the connection closed.
    max_head_bytes: int = MAX_HEAD_BYTES
    max_headers: int = MAX_HEADERS
    clock: Callable[[], float] = time.monotonic


@dataclass(slots=True, eq=False, kw_only=True)
class ListenerState:
    """Shared by the connections of one listener."""

    name: str
    resolver: Resolver
    recorder: Recorder
    settings: EngineSettings
    pool: ConnectionPool
    clock: Callable[[], float]
    # Upstream HTTP/2 connections (requests multiplexed as streams), beside `pool`'s HTTP/1 ones.
    h2pool: H2Pool
    draining: bool = False
    # Traffic arrives redirected by iptables: read each connection's original destination.
    intercept: bool = False
    # The inbound listener: its upstream is the app and its clients may be outside the mesh. The
    # app's responses lose every x-lightmesh-* header (an app cannot forge the mesh's marks), and
    # local replies carry the mesh's headers (flags, never-processed mark) only to a caller that
    # is a sidecar (verified by mutual TLS, or announcing itself): see `says_mesh_headers`.
    hide_mesh_headers: bool = False
    # Intercepted only, once per connection on accept: None keeps it HTTP; else `adopt` hands
    # it to raw TCP (original destination → cluster endpoint, passthrough, or refusal).
    divert: Divert | None = None
    adopt: Callable[[asyncio.Transport, Forward | LocalReply], None] | None = None
    active: int = 0  # exchanges in flight (tunnels included)
    clients: set[Client] = field(default_factory=set)
    tunnels: set[Splice] = field(default_factory=set)
    mirrors: Mirrors = field(default_factory=Mirrors)
    # Upstream connections opened, per cluster (counted when a connect succeeds; for metrics).
    connections_opened: dict[str, int] = field(default_factory=dict)
    # Set when the last downstream connection closed while draining.
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def resolve(self, head: RequestHead) -> Decision:
        """The resolver's decision; a resolver bug answers 500 instead of taking the connection."""
        try:
            return self.resolver(head)
        except Exception as exc:
            logger.error("proxy listener=%s resolver failed: %r", self.name, exc)
            return rescue(exc)

    def record(self, completed: Completed) -> None:
        """Report a finished exchange; telemetry trouble must not cost the client its connection."""
        try:
            self.recorder(completed)
        except Exception as exc:
            logger.error("proxy listener=%s recorder failed: %r", self.name, exc)

    def forget(self, client: Client) -> None:
        """A downstream connection closed."""
        self.clients.discard(client)
        if self.draining and not self.clients:
            self.drained.set()
