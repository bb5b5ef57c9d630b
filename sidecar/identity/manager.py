"""Obtains the workload certificate and keeps it fresh.

Each round: a child process generates a key and CSR; the CSR goes to the control plane's
CertificateService with the workload's bearer token; the certificate, key and trust bundle are
written to 0600 files in a private directory and handed to `on_rotated`, which builds new TLS
contexts from them. New connections use the new certificate; connections already open keep the
one they were established with. The next round starts at ~80% of the lifetime; failures retry
with backoff while the current certificate keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightmesh.v1 import discovery_pb2 as pb
from sidecar.config.channel import RpcError, open_channel
from sidecar.config.client import Backoff
from sidecar.identity.rotation import renewal_delay

log = logging.getLogger("sidecar.identity")

METHOD = "/lightmesh.v1.CertificateService/CreateCertificate"
RPC_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Identity:
    """The certificate in use, described without its private material."""

    spiffe_id: str
    serial: str
    issued_at: float  # unix seconds
    not_after: float
    cert_file: Path  # leaf + intermediates
    key_file: Path
    bundle_file: Path  # trust roots
    roots: tuple[str, ...]  # SHA-256 fingerprints of the trust roots

    def describe(self) -> dict[str, object]:
        """For /certs: identity, serial, validity and roots; never key material."""
        return {
            "identity": self.spiffe_id,
            "serial": self.serial,
            "issued_at": self.issued_at,
            "not_after": self.not_after,
            "expires_in_seconds": round(self.not_after - time.time(), 1),
            "trust_roots_sha256": list(self.roots),
        }


def fingerprints(bundle_pem: str) -> tuple[str, ...]:
    """SHA-256 fingerprints of every certificate in a PEM bundle."""
    marker = "-----END CERTIFICATE-----"
    blocks = [b + marker for b in bundle_pem.split(marker) if "BEGIN CERTIFICATE" in b]
    return tuple(hashlib.sha256(ssl.PEM_cert_to_DER_cert(b.strip())).hexdigest() for b in blocks)


async def generate_key_and_csr(python: str = sys.executable) -> tuple[str, str]:
    """(key PEM, CSR PEM) from a short-lived child process."""
    child = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "sidecar.identity.keygen",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"key generation failed: {err.decode(errors='replace')[-500:]}")
    generated = json.loads(out)
    return str(generated["key_pem"]), str(generated["csr_pem"])


def _write_private(path: Path, data: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(data)
    os.replace(tmp, path)


class CertificateManager:
    """Requests and renews this workload's certificate."""

    def __init__(
        self,
        *,
        target: str,
        ca_bundle: Path | None,
        token_file: Path,
        namespace: str,
        service_account: str,
        directory: Path,
        validity_seconds: int = 0,
        on_rotated: Callable[[Identity], None] = lambda identity: None,
        rng: random.Random | None = None,
    ) -> None:
        self._target = target
        self._ca_bundle = ca_bundle
        self._token_file = token_file
        self._namespace = namespace
        self._service_account = service_account
        self._directory = directory
        self._validity = validity_seconds
        self._on_rotated = on_rotated
        self._rng = rng or random.Random()
        self.current: Identity | None = None
        self.rotations = 0
        self.failures = 0
        self.ready = asyncio.Event()
        self._spare: asyncio.Future[tuple[str, str]] | None = None  # the next key and CSR

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a valid certificate until `stop` is set."""
        backoff = Backoff(base=0.5, cap=30.0, rng=self._rng)
        while not stop.is_set():
            try:
                identity = await self.renew()
            except (RpcError, OSError, RuntimeError, ValueError) as exc:
                self.failures += 1
                delay = backoff.next_delay()
                detail = exc.details() if isinstance(exc, RpcError) else str(exc)
                log.warning(
                    "certificate request failed: %s",
                    detail,
                    extra={"event": "cert_failed", "retry_in": round(delay, 2)},
                )
            else:
                backoff.reset()
                delay = renewal_delay(
                    issued_at=identity.issued_at,
                    not_after=identity.not_after,
                    now=time.time(),
                    rng=self._rng,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
        spare, self._spare = self._spare, None
        if spare is not None:
            # Let the child finish (it exits by itself in well under a second), so it is reaped.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(spare, timeout=5)

    async def renew(self) -> Identity:
        """One round: key, CSR, signature, files, callback."""
        # The key of this renewal was made in advance (right after the last one was installed):
        # a key-generation child can take seconds on a busy machine, which must not eat into the
        # short margin between renewal and expiry.
        spare, self._spare = self._spare, None
        key_pem, csr_pem = await (spare if spare is not None else generate_key_and_csr())
        token = self._token_file.read_text().strip()  # re-read: projected tokens rotate
        request = pb.CertificateRequest(
            csr_pem=csr_pem,
            validity_seconds=self._validity,
            namespace=self._namespace,
            service_account=self._service_account,
        )
        async with open_channel(self._target, self._ca_bundle) as channel:
            call = channel.unary_unary(
                METHOD,
                request_serializer=pb.CertificateRequest.SerializeToString,
                response_deserializer=pb.CertificateResponse.FromString,
            )
            response: pb.CertificateResponse = await call(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=RPC_TIMEOUT
            )
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        identity = Identity(
            spiffe_id=response.spiffe_id,
            serial=response.serial,
            issued_at=time.time(),
            not_after=float(response.not_after_unix),
            cert_file=self._directory / "cert.pem",
            key_file=self._directory / "key.pem",
            bundle_file=self._directory / "roots.pem",
            roots=fingerprints(response.trust_bundle_pem),
        )
        _write_private(identity.key_file, key_pem)
        _write_private(identity.cert_file, response.cert_chain_pem)
        _write_private(identity.bundle_file, response.trust_bundle_pem)
        self.current = identity
        self.rotations += 1
        self._on_rotated(identity)
        self.ready.set()
        self._spare = asyncio.ensure_future(generate_key_and_csr())
        log.info(
            "certificate installed",
            extra={
                "event": "cert_installed",
                "identity": identity.spiffe_id,
                "serial": identity.serial,
                "expires_in": round(identity.not_after - identity.issued_at, 1),
            },
        )
        return identity
