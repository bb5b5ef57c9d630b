"""Workload identities: SPIFFE IDs `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

Shared by both daemons: the control plane's CA signs them and translation names each cluster's
identities; the sidecar reads them from verified peer certificates and matches policies on
Istio's principal form (the ID without its scheme). Pure.
"""

from __future__ import annotations

from typing import Any

SCHEME = "spiffe://"


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """The SPIFFE ID of a workload running as `service_account` in `namespace`."""
    return f"{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"


def principal_of(identity: str) -> str:
    """Istio's principal form of a SPIFFE ID ("cluster.local/ns/shop/sa/frontend")."""
    return identity.removeprefix(SCHEME)


def namespace_of(principal: str) -> str:
    """The namespace segment of a "td/ns/<namespace>/sa/<account>" principal; "" otherwise."""
    parts = principal.split("/")
    if len(parts) >= 5 and parts[1] == "ns" and parts[3] == "sa":
        return parts[2]
    return ""


def peer_identity(ssl_object: Any) -> str:
    """The SPIFFE ID in a verified peer certificate's URI SAN (`ssl_object` is an SSLObject or
    SSLSocket after the handshake), or "" if there is none."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "URI" and isinstance(value, str) and value.startswith(SCHEME):
            return value
    return ""
