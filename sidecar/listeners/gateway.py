"""A gateway port's accept path: plaintext HTTP, TLS terminated by SNI, or TLS passed through.

`GatewayAccept` is the protocol of every connection accepted on a gateway port. Its first bytes
decide. Not a TLS handshake: plain HTTP, handed to a `DownstreamConnection` when the port has a
plain-text server (else closed). A ClientHello: read whole (sidecar/listeners/sni.py, without
answering anything), then the server whose hosts match its SNI decides — SIMPLE or MUTUAL: TLS
is terminated with that server's context (its certificate, and for MUTUAL its client CA and a
required client certificate) by a `TLSServerLayer`, the HTTP engine above it; PASSTHROUGH: the
connection, ClientHello included, is spliced to an endpoint of the cluster its TLS route names.
No match (or no certificate): the connection is closed and counted as a failed handshake.

Choosing the context here, from the SNI read before the handshake, rather than in OpenSSL's SNI
callback, lets each server have its own verification mode: OpenSSL's callback can swap the
certificate but keeps the verify mode of the context the handshake started with.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Protocol, cast

from sidecar.contract import Forward, LocalReply
from sidecar.listeners.downstream import DownstreamConnection
from sidecar.listeners.inbound_tls import TLSServerLayer, UndecidedConnection
from sidecar.listeners.sni import MAX_HELLO, NotTLS, read_hello
from sidecar.listeners.state import ListenerState, Phase
from sidecar.routing.gateway import CompiledListener, Server

logger = logging.getLogger("sidecar.gateway")

_HANDSHAKE = 0x16


class GatewayPort(Protocol):
    """What the accept path needs of one gateway port (sidecar/gateway.py's)."""

    handshakes: int
    refused_plaintext: int
    failed_handshakes: int

    @property
    def server(self) -> ssl.SSLContext | None:
        """Unused (TLSServerLayer's InboundTLS interface); contexts come from `context`."""

    @property
    def listener(self) -> CompiledListener:
        """The port's current config."""

    def context(self, server: Server) -> ssl.SSLContext | None:
        """The TLS context of a terminating server; None while it has no usable credential."""

    def passthrough(self, sni: str) -> Forward | LocalReply:
        """Where a PASSTHROUGH connection with this SNI goes."""

    def adopt(self, transport: asyncio.Transport, decided: Forward | LocalReply) -> None:
        """Splice a connection (its protocol then receives the bytes read so far)."""


def client_name_refused(tls: ssl.SSLObject, names: tuple[str, ...]) -> str:
    """Why a MUTUAL server's client is refused: its certificate names none of `names` (Istio's
    server `subjectAltNames`: DNS names, URIs such as SPIFFE IDs, e-mail addresses, IPs)."""
    cert = tls.getpeercert() or {}
    entries = cast("tuple[tuple[str, str], ...]", cert.get("subjectAltName", ()))
    found = [value for _, value in entries]
    if any(name in found for name in names):
        return ""
    return f"client certificate names {found or 'nothing'}, none of {list(names)}"


class GatewayAccept(UndecidedConnection):
    """An accepted gateway connection until its first bytes say what it is (phase IDLE until a
    byte, then HEAD while a ClientHello is being read, so a slow one is closed too)."""

    __slots__ = ("_buffer", "_port")

    def __init__(self, state: ListenerState, port: GatewayPort) -> None:
        super().__init__(state)
        self._port = port
        self._buffer = b""

    def expire(self, now: float) -> None:
        """Idle timeout before any byte, head timeout while reading a ClientHello."""
        settings = self._state.settings
        limit = settings.idle_timeout if self.phase is Phase.IDLE else settings.head_timeout
        if now - self.since >= limit:
            self.close()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or not data:
            return
        buffer = self._buffer + data
        listener = self._port.listener
        if buffer[0] != _HANDSHAKE:
            if not listener.has_plaintext:
                self._port.refused_plaintext += 1
                self._refuse(transport, "plaintext on a TLS-only port")
                return
            self._hand_over(transport)
            conn = DownstreamConnection(self._state)
            transport.set_protocol(conn)
            conn.connection_made(transport)
            conn.data_received(buffer)
            return
        try:
            hello = read_hello(buffer)
        except NotTLS as error:
            self._refuse(transport, str(error))
            return
        if hello is None:
            if self.phase is Phase.IDLE:
                self.phase, self.since = Phase.HEAD, self._state.clock()
            if len(buffer) > MAX_HELLO + 1024:  # a ClientHello and its record headers
                self._refuse(transport, "ClientHello too large")
                return
            self._buffer = buffer
            return
        sni = hello.server_name
        server = listener.server_for(sni, tls=True)
        if server is None:
            self._refuse(transport, f"no server of port {listener.port} for SNI {sni!r}")
            return
        if server.passthrough:
            self._hand_over(transport)
            self._port.adopt(transport, self._port.passthrough(sni))
            protocol = transport.get_protocol()
            if isinstance(protocol, asyncio.Protocol):
                protocol.data_received(buffer)  # the ClientHello goes to the backend too
            return
        context = self._port.context(server)
        if context is None:
            self._refuse(transport, f"{server.name} has no usable certificate")
            return
        self._hand_over(transport)
        names = tuple(server.tls.client_subject_alt_names)
        layer = TLSServerLayer(
            transport,
            context,
            self._state,
            self._port,
            check_peer=(lambda tls: client_name_refused(tls, names)) if names else None,
        )
        transport.set_protocol(layer)
        layer.data_received(buffer)

    def _hand_over(self, transport: asyncio.Transport) -> None:
        del transport
        self._transport = None
        self._buffer = b""
        self._state.clients.discard(self)  # whoever takes the connection over registers itself

    def _refuse(self, transport: asyncio.Transport, why: str) -> None:
        self._transport = None
        self._state.forget(self)
        self._port.failed_handshakes += 1
        logger.warning(
            "gateway connection refused: %s",
            why,
            extra={"event": "gateway_refused", "peer": str(transport.get_extra_info("peername"))},
        )
        transport.abort()
