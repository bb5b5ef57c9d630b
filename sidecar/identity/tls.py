"""TLS contexts for mutual TLS between sidecars, built from the installed workload certificate.

Workload certificates name a SPIFFE ID, not a DNS name, so hostname checking is off and the peer's
identity is read from its verified certificate instead (`lightmesh.spiffe.peer_identity`); the chain must still end
at the trust bundle. A new pair of contexts is built on every rotation: connections opened later use
the new certificate, connections already open keep theirs.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from sidecar.identity.manager import Identity

# ALPN protocol ids announced between sidecars: the inner protocol, marked as ours, so an inbound
# listener knows a TLS connection is sidecar-to-sidecar and what it carries.
ALPN_HTTP11 = "lightmesh-http/1.1"
ALPN_TCP = "lightmesh-tcp"
# HTTP/2 between sidecars: the standard id (an HTTP/2 connection starts with its preface, which
# the inbound listener detects whatever was negotiated).
ALPN_H2 = "h2"


def _base(context: ssl.SSLContext, identity: Identity, extra_roots: str) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(identity.cert_file, identity.key_file)
    context.load_verify_locations(cafile=str(identity.bundle_file))
    if extra_roots:
        # The bundle the control plane pushes: during a root rotation it holds both roots, so
        # peers already holding a certificate of the new root are trusted before we rotate.
        context.load_verify_locations(cadata=extra_roots)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols([ALPN_HTTP11, ALPN_TCP, ALPN_H2])
    return context


def server_context(identity: Identity, extra_roots: str = "") -> ssl.SSLContext:
    """For the inbound listener: requires and verifies a client certificate."""
    return _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), identity, extra_roots)


def client_context(identity: Identity, extra_roots: str = "") -> ssl.SSLContext:
    """For upstream connections to other sidecars: presents ours, verifies theirs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # SPIFFE IDs are not host names; see peer_identity
    return _base(context, identity, extra_roots)


def client_context_h2(identity: Identity, extra_roots: str = "") -> ssl.SSLContext:
    """For upstream HTTP/2 connections to other sidecars: offers only ALPN h2."""
    context = client_context(identity, extra_roots)
    context.set_alpn_protocols([ALPN_H2])
    return context


@dataclass(frozen=True, slots=True)
class TLSContexts:
    """The contexts of one certificate generation."""

    identity: Identity
    server: ssl.SSLContext
    client: ssl.SSLContext
    client_h2: ssl.SSLContext

    @classmethod
    def build(cls, identity: Identity, extra_roots: str = "") -> TLSContexts:
        """Both contexts for a freshly installed certificate (and the pushed trust bundle)."""
        return cls(
            identity,
            server_context(identity, extra_roots),
            client_context(identity, extra_roots),
            client_context_h2(identity, extra_roots),
        )


class MeshTLS:
    """The TLS contexts in force: rebuilt when the certificate rotates or the pushed trust bundle
    changes. Connections read `client`/`server` when they open, so open ones keep theirs."""

    def __init__(self) -> None:
        self.contexts: TLSContexts | None = None
        self._roots = ""
        # Inbound connections: TLS handshakes completed; refused (plaintext under STRICT,
        # failed handshakes).
        self.handshakes = 0
        self.refused_plaintext = 0
        self.failed_handshakes = 0

    @property
    def client(self) -> ssl.SSLContext | None:
        """For new upstream connections; None before the first certificate."""
        contexts = self.contexts
        return contexts.client if contexts is not None else None

    @property
    def client_h2(self) -> ssl.SSLContext | None:
        """For new upstream HTTP/2 connections; None before the first certificate."""
        contexts = self.contexts
        return contexts.client_h2 if contexts is not None else None

    @property
    def server(self) -> ssl.SSLContext | None:
        """For new inbound TLS connections; None before the first certificate."""
        contexts = self.contexts
        return contexts.server if contexts is not None else None

    @property
    def identity(self) -> str:
        """Our own SPIFFE ID ("" before the first certificate)."""
        return self.contexts.identity.spiffe_id if self.contexts is not None else ""

    def rotated(self, identity: Identity) -> None:
        """A new certificate was installed (CertificateManager's `on_rotated`)."""
        self.contexts = TLSContexts.build(identity, self._roots)

    def set_roots(self, pem: str) -> None:
        """The control plane pushed a trust bundle (empty: keep the one we have)."""
        if pem == self._roots:
            return
        self._roots = pem
        if self.contexts is not None:
            self.contexts = TLSContexts.build(self.contexts.identity, pem)
