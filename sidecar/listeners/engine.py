"""The sidecar's HTTP/1.1 proxy listener: accept, resolve, forward through a pool, stream back.

Built on asyncio Protocols (uvloop in the sidecar, the stdlib loop elsewhere): each accepted
connection is a `DownstreamConnection` (downstream.py) whose parser callbacks drive one
`Exchange` (exchange.py, the asyncio driver of the sans-IO sidecar/exchange/machine.py) at a time; upstream connections are pooled `UpstreamConnection`s
(upstream/pool.py). No task runs per request: a connect is the only await on the path. One sweeper task
per listener enforces the downstream timeouts and expires idle pooled connections and tunnels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Collection

from sidecar.contract import Divert, Forward, Recorder, Resolver
from sidecar.listeners.downstream import DownstreamConnection
from sidecar.listeners.h2down import H2Downstream
from sidecar.listeners.inbound_tls import InboundAccept, InboundTLS
from sidecar.listeners.splice import expire_splices
from sidecar.listeners.state import EngineSettings, ListenerState, Phase
from sidecar.listeners.tcp import TcpProxyListener
from sidecar.upstream.h2pool import H2Pool
from sidecar.upstream.mirror import Mirrors
from sidecar.upstream.pool import ConnectionPool, PoolKey

__all__ = ["ConnectionPool", "EngineSettings", "ProxyListener", "start_proxy"]

logger = logging.getLogger("sidecar.proxy")

# Makes the protocol of one accepted connection (the listener's shared state given).
Accept = Callable[[ListenerState], asyncio.Protocol]


def sweep_interval(*timeouts: float) -> float:
    """How often the sweeper runs: timeouts are enforced late by at most 1/8 of the shortest."""
    return max(min(timeouts) / 8, 0.01)


class ProxyListener:
    """A running proxy listener. Create with `start_proxy`."""

    def __init__(
        self,
        *,
        resolver: Resolver,
        recorder: Recorder,
        listener: str,
        settings: EngineSettings,
        client_tls: Callable[[], ssl.SSLContext | None] | None = None,
        client_tls_h2: Callable[[], ssl.SSLContext | None] | None = None,
        inbound_tls: InboundTLS | None = None,
        mtls_mode: Callable[[], str] = lambda: "PERMISSIVE",
        intercept: bool = False,
        divert: Divert | None = None,
        tcp_recorder: Recorder | None = None,
        hide_mesh_headers: bool = False,
        accept: Accept | None = None,
    ) -> None:
        pool = (
            ConnectionPool(idle_timeout=settings.pool_idle_timeout, clock=settings.clock)
            if client_tls is None
            else ConnectionPool(
                idle_timeout=settings.pool_idle_timeout,
                clock=settings.clock,
                client_tls=client_tls,
            )
        )
        self._state = ListenerState(
            name=listener,
            resolver=resolver,
            recorder=recorder,
            settings=settings,
            pool=pool,
            h2pool=H2Pool(
                idle_timeout=settings.pool_idle_timeout,
                clock=settings.clock,
                client_tls=client_tls_h2 or _no_tls,
                refused=pool.wrong_identity,
            ),
            clock=settings.clock,
            intercept=intercept,
            hide_mesh_headers=hide_mesh_headers,
        )
        # Intercepted connections that are not HTTP (see `divert`) are handed to a TCP listener
        # without a socket of its own: its splices, idle sweeper and connection records.
        self._tcp: TcpProxyListener | None = None
        if intercept and divert is not None:
            self._tcp = TcpProxyListener(
                resolve=_no_resolve,
                recorder=tcp_recorder,
                listener=f"{listener}-tcp",
                idle_timeout=settings.tunnel_idle_timeout,
                clock=settings.clock,
            )
            self._state.divert = divert
            self._state.adopt = self._tcp.adopt
        self._inbound_tls = inbound_tls
        self._mtls_mode = mtls_mode
        self._accept = accept
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.port = 0

    def retire_upstreams(self, gone: Collection[PoolKey]) -> int:
        """GOAWAY the pooled HTTP/2 connections to `gone` (a config change removed their
        cluster or endpoint); returns how many."""
        return self._state.h2pool.retire(gone)

    @property
    def active(self) -> int:
        """Exchanges in flight (open tunnels included)."""
        return self._state.active

    @property
    def mirrors(self) -> Mirrors:
        """Mirrored copies sent, dropped and failed (for metrics)."""
        return self._state.mirrors

    @property
    def connections_opened(self) -> dict[str, int]:
        """Upstream connections opened so far, per cluster (for metrics)."""
        return self._state.connections_opened

    @property
    def wrong_identity(self) -> dict[str, int]:
        """Upstream connections refused by secure naming, per service (for metrics)."""
        return self._state.pool.wrong_identity

    @property
    def draining(self) -> bool:
        """Whether `close` has begun."""
        return self._state.draining

    async def _start(self, host: str, port: int) -> None:
        state = self._state
        loop = asyncio.get_running_loop()
        tls = self._inbound_tls
        accept = self._accept
        if accept is not None:
            self._server = await loop.create_server(lambda: accept(state), host, port)
        elif tls is None:
            self._server = await loop.create_server(lambda: DownstreamConnection(state), host, port)
        else:
            mode = self._mtls_mode
            self._server = await loop.create_server(
                lambda: InboundAccept(state, tls, mode), host, port
            )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._sweeper = loop.create_task(self._sweep_forever(), name=f"proxy-{state.name}-sweeper")
        if self._tcp is not None:
            self._tcp.start_sweeper()

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Drain: stop accepting, close idle connections, let exchanges in flight finish (each
        answered with Connection: close) for up to `drain_timeout`, then close everything."""
        state = self._state
        state.draining = True
        if self._server is not None:
            self._server.close()
        for client in list(state.clients):
            if client.phase is Phase.IDLE:
                client.close()  # between requests: nothing is lost by closing now
            elif isinstance(client, H2Downstream):
                client.drain()  # GOAWAY: streams in flight finish, no new one starts
        if state.clients:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout):
                    await state.drained.wait()
        for client in list(state.clients):
            client.close(abort=True)
        for splice in list(state.tunnels):
            splice.close(abort=True)
        if state.clients:
            # Aborted transports report connection_lost on the next loop iterations.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await state.drained.wait()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        state.pool.close()
        state.h2pool.close()
        state.mirrors.close()
        if self._tcp is not None:
            await self._tcp.close(drain_timeout)

    async def _sweep_forever(self) -> None:
        # Timers per connection would cost more than the whole request on the hot path; a sweep
        # enforces the downstream timeouts instead, late by at most one interval.
        state = self._state
        settings = state.settings
        interval = sweep_interval(
            settings.pool_idle_timeout,
            settings.idle_timeout,
            settings.head_timeout,
            settings.tunnel_idle_timeout,
        )
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    def sweep(self) -> None:
        """One round of the sweeper: expire pooled connections, clients and idle tunnels."""
        state = self._state
        state.pool.sweep()
        state.h2pool.sweep()
        now = state.clock()
        for client in list(state.clients):
            client.expire(now)
        expire_splices(state.tunnels, now=now, idle_timeout=state.settings.tunnel_idle_timeout)


def _no_tls() -> ssl.SSLContext | None:
    return None


def _no_resolve(_: str) -> Forward | None:
    """The adopting TCP listener accepts nothing itself: every connection comes decided."""
    return None


async def start_proxy(
    host: str,
    port: int,
    *,
    resolver: Resolver,
    recorder: Recorder,
    listener: str,
    settings: EngineSettings | None = None,
    client_tls: Callable[[], ssl.SSLContext | None] | None = None,
    client_tls_h2: Callable[[], ssl.SSLContext | None] | None = None,
    inbound_tls: InboundTLS | None = None,
    mtls_mode: Callable[[], str] = lambda: "PERMISSIVE",
    intercept: bool = False,
    divert: Divert | None = None,
    tcp_recorder: Recorder | None = None,
    hide_mesh_headers: bool = False,
    accept: Accept | None = None,
) -> ProxyListener:
    """Listen on host:port (0 picks a free port) and proxy every request per `resolver`.

    `client_tls`: the current client context for clusters that originate mutual TLS;
    `inbound_tls` + `mtls_mode`: accept mutual TLS (and/or plaintext, per the mode) on this port;
    `intercept`: connections arrive redirected by iptables (read their original destination);
    `divert` + `tcp_recorder` (with `intercept`): which of them are raw TCP, and their records;
    `hide_mesh_headers`: the inbound listener (see `ListenerState.hide_mesh_headers`);
    `accept`: the protocol of each accepted connection (a gateway port's, which decides between
    TLS, plaintext and passthrough itself; default: HTTP, or the inbound mTLS sniffing).
    """
    proxy = ProxyListener(
        resolver=resolver,
        recorder=recorder,
        listener=listener,
        settings=settings or EngineSettings(),
        client_tls=client_tls,
        client_tls_h2=client_tls_h2,
        inbound_tls=inbound_tls,
        mtls_mode=mtls_mode,
        intercept=intercept,
        divert=divert,
        tcp_recorder=tcp_recorder,
        hide_mesh_headers=hide_mesh_headers,
        accept=accept,
    )
    await proxy._start(host, port)
    return proxy
