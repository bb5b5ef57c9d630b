"""The inbound listener's accept path with mutual TLS: sniff, then TLS or plaintext, on one port.

`InboundAccept` is the protocol of every accepted inbound connection. The first bytes decide:
0x16 (a TLS handshake record, the ClientHello) starts server-side TLS, anything else is plaintext.
The policy pushed by the control plane says which are allowed: PERMISSIVE both, STRICT only TLS
(plaintext is closed and counted), DISABLE only plaintext. A ClientHello that cannot be answered
(DISABLE, or no certificate yet) is closed at once and counted as a failed handshake. Once decided, the transport is handed to a `DownstreamConnection`, directly
(plaintext: the hot path is then exactly the plain listener's) or through a `TLSServerLayer`.

`TLSServerLayer` runs TLS in memory (`ssl.MemoryBIO`) over the accepted transport, because the
bytes already read while sniffing cannot be given back to the loop's own TLS (`start_tls` would
lose them); it presents itself to the `DownstreamConnection` as its transport, so the HTTP engine
is the same for both. The verified client's SPIFFE ID is set on the connection before its first
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any, Protocol

from lightmesh.spiffe import peer_identity
from sidecar.listeners.downstream import DownstreamConnection
from sidecar.listeners.state import ListenerState, Phase

logger = logging.getLogger("sidecar.proxy")

_HANDSHAKE = 0x16
_READ = 64 * 1024


class InboundTLS(Protocol):
    """What the accept path needs of the sidecar's TLS state (sidecar.identity.tls.MeshTLS)."""

    handshakes: int
    refused_plaintext: int
    failed_handshakes: int

    @property
    def server(self) -> ssl.SSLContext | None:
        """The context for new inbound TLS connections; None before the first certificate."""


class UndecidedConnection(asyncio.Protocol):
    """An accepted connection until its first bytes decide what serves it (the inbound's TLS or
    plaintext, a gateway's server by SNI).

    Until then it is one of the listener's clients in phase IDLE, so the sweeper closes it after
    the idle timeout and a drain closes it at once, as for an HTTP connection between requests.
    """

    __slots__ = ("_state", "_transport", "phase", "since")

    def __init__(self, state: ListenerState) -> None:
        self._state = state
        self._transport: asyncio.Transport | None = None
        self.phase = Phase.IDLE
        self.since = state.clock()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._state.clients.add(self)

    def expire(self, now: float) -> None:
        """Nothing arrived within the idle timeout: close."""
        if now - self.since >= self._state.settings.idle_timeout:
            self.close()

    def close(self, *, abort: bool = False) -> None:
        """Close before anything was decided."""
        transport = self._transport
        if transport is not None:
            if abort:
                transport.abort()
            else:
                transport.close()

    def eof_received(self) -> bool | None:
        return None  # closed before saying anything

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._transport = None
            self._state.forget(self)


class InboundAccept(UndecidedConnection):
    """An accepted inbound connection until its first bytes say TLS or plaintext."""

    __slots__ = ("_mode", "_tls")

    def __init__(self, state: ListenerState, tls: InboundTLS, mode: Callable[[], str]) -> None:
        super().__init__(state)
        self._tls = tls
        self._mode = mode

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or not data:
            return
        self._transport = None
        self._state.clients.discard(self)  # whoever takes the connection over registers itself
        mode = self._mode()
        context = self._tls.server
        if data[0] == _HANDSHAKE:
            if mode != "DISABLE" and context is not None:
                layer = TLSServerLayer(transport, context, self._state, self._tls)
                transport.set_protocol(layer)
                layer.data_received(data)
                return
            # A ClientHello we cannot answer (no certificate yet, or mTLS DISABLE): close at once,
            # so the client's handshake fails now (a connect failure it may retry elsewhere)
            # instead of waiting out its handshake timeout while the HTTP parser waits for a head.
            self._tls.failed_handshakes += 1
            transport.abort()
            return
        if mode == "STRICT":
            self._tls.refused_plaintext += 1
            peer = transport.get_extra_info("peername")
            logger.warning(
                "inbound plaintext connection refused (mTLS STRICT)",
                extra={"event": "mtls_refused", "peer": str(peer)},
            )
            transport.abort()
            return
        conn = DownstreamConnection(self._state)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        conn.data_received(data)


class TLSServerLayer(asyncio.Protocol):
    """Server-side TLS in memory over an accepted transport; the transport of its connection.

    While the handshake is in progress it is one of the listener's clients in phase HEAD: the
    sweeper aborts a handshake that takes longer than the head timeout.
    """

    def __init__(
        self,
        raw: asyncio.Transport,
        context: ssl.SSLContext,
        state: ListenerState,
        tls: InboundTLS,
        check_peer: Callable[[ssl.SSLObject], str] | None = None,
    ) -> None:
        self._raw = raw
        # After the handshake: why this peer is refused ("" accepts it); a gateway's MUTUAL
        # server checks the client certificate's subjectAltNames here.
        self._check_peer = check_peer
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._state = state
        self._tls = tls
        self._app: DownstreamConnection | None = None
        self._closing = False
        self.phase = Phase.HEAD
        self.since = state.clock()
        state.clients.add(self)

    def expire(self, now: float) -> None:
        """A handshake that did not finish within the head timeout is dropped."""
        if self._app is None and now - self.since >= self._state.settings.head_timeout:
            self.abort()

    # --- the raw transport's protocol ---

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        app = self._app
        if app is None:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, ssl.CertificateError) as exc:
                self._tls.failed_handshakes += 1
                logger.warning(
                    "inbound TLS handshake failed",
                    extra={"event": "mtls_handshake_failed", "error": str(exc)},
                )
                self._flush()  # the alert tells the client why
                self._closing = True
                self._raw.close()
                return
            self._flush()
            refused = self._check_peer(self._ssl) if self._check_peer is not None else ""
            if refused:
                self._tls.failed_handshakes += 1
                logger.warning(
                    "TLS client refused: %s",
                    refused,
                    extra={"event": "tls_peer_refused", "error": refused},
                )
                self._closing = True
                self._raw.abort()
                return
            self._tls.handshakes += 1
            self._state.clients.discard(self)  # the HTTP connection registers itself
            app = self._app = DownstreamConnection(self._state)
            app.peer_identity = peer_identity(self._ssl)
            app.connection_made(self)  # type: ignore[arg-type]
        chunks = []
        ended = False
        while True:
            try:
                chunk = self._ssl.read(_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                ended = True
                break
            except ssl.SSLError as exc:
                logger.warning(
                    "inbound TLS error", extra={"event": "mtls_error", "error": str(exc)}
                )
                self.abort()
                return
            if not chunk:
                ended = True
                break
            chunks.append(chunk)
        self._flush()  # reading can produce records (TLS 1.3 session tickets, key updates)
        if chunks:
            app.data_received(b"".join(chunks) if len(chunks) > 1 else chunks[0])
        if ended and not self._closing and not app.eof_received():
            self.close()

    def eof_received(self) -> bool | None:
        app = self._app
        if app is None:
            if not self._closing:
                self._tls.failed_handshakes += 1  # e.g. the client refused our certificate
            return None
        if self._closing:
            return None
        return app.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._app is not None:
            self._app.connection_lost(exc)
        else:
            self._state.forget(self)

    def set_protocol(self, protocol: asyncio.Protocol) -> None:
        """The connection changed protocols (HTTP/2 after its preface): deliver to `protocol`."""
        self._app = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.Protocol | None:
        """Whom decrypted bytes go to."""
        return self._app

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    # --- the transport of the DownstreamConnection ---

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self._raw.write(data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send."""
        if self._closing or not data:
            return
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            logger.warning("inbound TLS error", extra={"event": "mtls_error", "error": str(exc)})
            self.abort()
            return
        self._flush()

    def writelines(self, chunks: Any) -> None:
        """Encrypt and send each chunk."""
        self.write(b"".join(chunks))

    def close(self, *, abort: bool = False) -> None:
        """Send close_notify, then close once what was written is flushed."""
        if abort:
            self.abort()
            return
        if self._closing:
            return
        self._closing = True
        # unwrap wants the peer's close_notify too (SSLWantReadError); ours is in the BIO anyway.
        with contextlib.suppress(ssl.SSLError):
            self._ssl.unwrap()
        self._flush()
        self._raw.close()

    def abort(self) -> None:
        """Drop the connection at once."""
        self._closing = True
        self._raw.abort()

    def is_closing(self) -> bool:
        """Whether close or abort began."""
        return self._closing or self._raw.is_closing()

    def can_write_eof(self) -> bool:
        """TLS has no half-close (close_notify ends both directions of this connection)."""
        return False

    def write_eof(self) -> None:
        """Not supported: see can_write_eof."""
        raise NotImplementedError

    def pause_reading(self) -> None:
        """Stop reading the socket."""
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        """Read the socket again."""
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        """Whether the socket is being read."""
        return self._raw.is_reading()

    def get_write_buffer_size(self) -> int:
        """Encrypted bytes waiting for the socket."""
        return self._raw.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Flow control thresholds of the socket."""
        self._raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The socket's, plus `ssl_object` and `peercert`."""
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert()
        return self._raw.get_extra_info(name, default)
