"""The certificate service: authenticates a sidecar, then has the CA sign its CSR.

Who the caller is decides what its certificate says, never what it asks for:
- cluster mode: the bearer token is the pod's projected ServiceAccount token, checked by the API
  server (TokenReview, with our audience); the identity is the reviewed service account;
- local mode: the bearer token is the control plane's bootstrap token (a 0600 file beside its state);
  whoever holds it is trusted to name its namespace and service account, as on a developer machine
  every process shares one user anyway.
"""

from __future__ import annotations

import asyncio
import datetime
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import grpc

from controlplane.ca import DEFAULT_WORKLOAD_TTL, CAError, CertificateAuthority
from lightmesh.v1 import discovery_pb2 as pb
from lightmesh.v1 import discovery_pb2_grpc

log = logging.getLogger("controlplane.certs")

AUDIENCE = "lightmesh"
MIN_TTL = datetime.timedelta(seconds=10)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SA_USER = re.compile(r"^system:serviceaccount:([^:]+):([^:]+)$")


class Unauthenticated(Exception):
    """The caller's credentials were missing or not accepted; the message says which."""


class Authenticator(Protocol):
    """Turns a bearer token (and, in local mode, the request's claim) into (namespace, account)."""

    async def authenticate(self, token: str, request: pb.CertificateRequest) -> tuple[str, str]:
        """The caller's identity; raises Unauthenticated."""
        ...


def _checked_name(value: str, field: str) -> str:
    if not _DNS_LABEL.match(value):
        raise Unauthenticated(f"{field} {value!r} is not a valid Kubernetes name")
    return value


class BootstrapTokenAuthenticator:
    """Local mode: one shared secret; its holder names its own identity."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("empty bootstrap token")
        self._token = token.encode()

    async def authenticate(self, token: str, request: pb.CertificateRequest) -> tuple[str, str]:
        if not hmac.compare_digest(token.encode(), self._token):
            raise Unauthenticated("bootstrap token not accepted")
        return (
            _checked_name(request.namespace or "default", "namespace"),
            _checked_name(request.service_account or "default", "service_account"),
        )


def load_or_create_token(path: Path) -> str:
    """The bootstrap token in `path` (0600), created on first use."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        with path.open("x", encoding="ascii") as out:  # "x": a racing replica's token wins
            path.chmod(0o600)
            out.write(token + "\n")
    except FileExistsError:
        return path.read_text().strip()
    return token


class TokenReviewAuthenticator:
    """Cluster mode: the API server vouches for a projected ServiceAccount token."""

    def __init__(self, api_client: Any, *, audience: str = AUDIENCE) -> None:
        from kubernetes import client  # only cluster mode pays for the import

        self._api = client.AuthenticationV1Api(api_client)
        self._client = client
        self._audience = audience

    async def authenticate(self, token: str, request: pb.CertificateRequest) -> tuple[str, str]:
        body = self._client.V1TokenReview(
            spec=self._client.V1TokenReviewSpec(token=token, audiences=[self._audience])
        )
        # The kubernetes client is synchronous: keep the event loop free while the API answers.
        review = await asyncio.to_thread(self._api.create_token_review, body)
        status = review.status
        if status is None or not status.authenticated:
            reason = (status.error if status is not None else "") or "not authenticated"
            raise Unauthenticated(f"token review: {reason}")
        if status.audiences is not None and self._audience not in status.audiences:
            raise Unauthenticated(f"token review: token is not for audience {self._audience!r}")
        match = _SA_USER.match((status.user.username if status.user else None) or "")
        if match is None:
            raise Unauthenticated("token review: the token does not belong to a service account")
        return match.group(1), match.group(2)


def bearer_token(metadata: Any) -> str:
    """The token of an "authorization: Bearer ..." metadata entry, or ""."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip()
    return ""


class CertificateService(discovery_pb2_grpc.CertificateServiceServicer):  # type: ignore[misc]
    """The `lightmesh.v1.CertificateService`."""

    def __init__(
        self,
        ca: CertificateAuthority,
        authenticator: Authenticator,
        *,
        default_ttl: datetime.timedelta = DEFAULT_WORKLOAD_TTL,
        max_ttl: datetime.timedelta | None = None,
        on_issued: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self._ca = ca
        self._authenticator = authenticator
        self._default_ttl = default_ttl
        self._max_ttl = max_ttl or max(default_ttl, DEFAULT_WORKLOAD_TTL)
        self._on_issued = on_issued

    def ttl(self, requested_seconds: int) -> datetime.timedelta:
        """The lifetime granted for a requested one (0: the default), within [MIN_TTL, max]."""
        if requested_seconds <= 0:
            return self._default_ttl
        requested = datetime.timedelta(seconds=requested_seconds)
        return max(MIN_TTL, min(requested, self._max_ttl))

    async def CreateCertificate(
        self, request: pb.CertificateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CertificateResponse:
        try:
            return await self._issue(bearer_token(context.invocation_metadata()), request)
        except Unauthenticated as exc:
            self._on_issued("unauthenticated")
            log.warning("certificate refused: %s", exc, extra={"event": "cert_refused"})
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except CAError as exc:
            self._on_issued("invalid")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise AssertionError("context.abort returned")

    async def _issue(self, token: str, request: pb.CertificateRequest) -> pb.CertificateResponse:
        if not token:
            raise Unauthenticated("missing bearer token")
        namespace, account = await self._authenticator.authenticate(token, request)
        spiffe_id = self._ca.spiffe_id(namespace, account)
        signed = self._ca.sign_csr(
            request.csr_pem.encode("ascii", "replace"),
            spiffe_id=spiffe_id,
            ttl=self.ttl(request.validity_seconds),
        )
        self._on_issued("issued")
        log.info(
            "certificate issued",
            extra={
                "event": "cert_issued",
                "spiffe_id": spiffe_id,
                "serial": f"{signed.serial:x}",
                "not_after": signed.not_after.isoformat(),
            },
        )
        return pb.CertificateResponse(
            cert_chain_pem=signed.chain_pem.decode("ascii"),
            trust_bundle_pem=self._ca.root_pem.decode("ascii"),
            spiffe_id=spiffe_id,
            serial=f"{signed.serial:x}",
            not_after_unix=int(signed.not_after.timestamp()),
        )
