"""The mesh's certificate authority: one signing key and certificate, shared by every replica.

The signing material lives in a `CAStore`: a 0600 file in local mode, a Kubernetes Secret in cluster
mode. The first replica to start creates it; creation is create-if-absent (O_EXCL, or the API
server's 409 Conflict), so replicas racing at start all end up with the same CA. A user may supply
their own root instead: the CA then signs with that root's key, or with an intermediate issued under it.

Workload certificates carry exactly one URI SAN, the SPIFFE ID the *caller was authenticated as*:
whatever names a CSR asks for are ignored, only its public key is used.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.private_files import write_once
from lightmesh.spiffe import spiffe_id

Clock = Callable[[], datetime.datetime]

DEFAULT_WORKLOAD_TTL = datetime.timedelta(hours=24)
ROOT_TTL = datetime.timedelta(days=3650)
SERVER_TTL = datetime.timedelta(days=365)
# Certificates are back-dated a little so a peer whose clock lags ours still accepts them.
CLOCK_SKEW = datetime.timedelta(minutes=5)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class CAError(Exception):
    """The CA cannot be loaded or cannot sign what it was asked to."""


@dataclass(frozen=True, slots=True)
class CAMaterial:
    """PEM-encoded signing certificate and key, plus the chain up to the root ("" when the
    signing certificate is the root itself)."""

    cert_pem: bytes
    key_pem: bytes
    chain_pem: bytes = b""


class CAStore(Protocol):
    """Where the CA's signing material is kept."""

    def load(self) -> CAMaterial | None:
        """The stored material, or None when there is none yet."""
        ...

    def create(self, material: CAMaterial) -> CAMaterial:
        """Store `material` unless something is stored already; return what is stored."""
        ...


class FileCAStore:
    """Signing material in one 0600 PEM file (local mode): certificate, chain, then key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> CAMaterial | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return _split_bundle(data, source=str(self.path))

    def create(self, material: CAMaterial) -> CAMaterial:
        data = material.cert_pem + material.chain_pem + material.key_pem
        stored = write_once(self.path, data)
        return material if stored == data else _split_bundle(stored, source=str(self.path))


class SecretCAStore:
    """Signing material in a Kubernetes Secret (cluster mode), shared by every replica.

    Creation relies on the API server: the first replica's create succeeds, the others get 409
    Conflict and read the winner's Secret.
    """

    KEYS = ("ca.crt", "ca.key", "chain.crt")

    def __init__(self, api_client: Any, *, namespace: str, name: str = "lightmesh-ca") -> None:
        from kubernetes import client  # only cluster mode pays for the import

        self._core = client.CoreV1Api(api_client)
        self._client = client
        self.namespace = namespace
        self.name = name

    def load(self) -> CAMaterial | None:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self._core.read_namespaced_secret(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise CAError(f"Secret {self.namespace}/{self.name}: {exc.reason}") from exc
        data = secret.data or {}
        try:
            cert, key = (base64.b64decode(data[k]) for k in self.KEYS[:2])
        except KeyError as exc:
            raise CAError(f"Secret {self.namespace}/{self.name}: missing key {exc}") from exc
        chain = base64.b64decode(data.get("chain.crt", ""))
        return CAMaterial(cert_pem=cert, key_pem=key, chain_pem=chain)

    def create(self, material: CAMaterial) -> CAMaterial:
        from kubernetes.client.exceptions import ApiException

        values = (material.cert_pem, material.key_pem, material.chain_pem)
        body = self._client.V1Secret(
            metadata=self._client.V1ObjectMeta(
                name=self.name, labels={"app.kubernetes.io/part-of": "lightmesh"}
            ),
            type="Opaque",
            data={
                k: base64.b64encode(v).decode("ascii")
                for k, v in zip(self.KEYS, values, strict=True)
            },
        )
        try:
            self._core.create_namespaced_secret(self.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise CAError(f"Secret {self.namespace}/{self.name}: {exc.reason}") from exc
            stored = self.load()
            if stored is None:
                raise CAError(
                    f"Secret {self.namespace}/{self.name}: vanished after a conflict"
                ) from exc
            return stored
        return material


def _split_bundle(data: bytes, *, source: str) -> CAMaterial:
    try:
        certs = x509.load_pem_x509_certificates(data)
        key_start = data.index(b"-----BEGIN", _last_cert_end(data))
        key = serialization.load_pem_private_key(data[key_start:], None)
    except (ValueError, TypeError) as exc:
        raise CAError(
            f"{source}: not a PEM certificate chain followed by a private key: {exc}"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{source}: the CA key must be an EC key")
    pems = [c.public_bytes(serialization.Encoding.PEM) for c in certs]
    return CAMaterial(cert_pem=pems[0], key_pem=_key_pem(key), chain_pem=b"".join(pems[1:]))


def _last_cert_end(data: bytes) -> int:
    marker = b"-----END CERTIFICATE-----"
    return data.rindex(marker) + len(marker)


@dataclass(frozen=True, slots=True)
class SignedCertificate:
    """A freshly signed certificate: leaf first, then the chain up to (not including) the root."""

    chain_pem: bytes
    serial: int
    not_after: datetime.datetime


class CertificateAuthority:
    """Signs workload CSRs and server certificates with the mesh's CA."""

    def __init__(self, material: CAMaterial, *, trust_domain: str, clock: Clock = _utcnow) -> None:
        self.trust_domain = trust_domain
        self._clock = clock
        self._cert = x509.load_pem_x509_certificate(material.cert_pem)
        key = serialization.load_pem_private_key(material.key_pem, None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError("the CA key must be an EC key")
        if key.public_key() != self._cert.public_key():
            raise CAError("the CA key does not match the CA certificate")
        self._key = key
        self._chain_pem = material.chain_pem
        self._cert_pem = material.cert_pem

    @classmethod
    def load_or_create(
        cls, store: CAStore, *, trust_domain: str, clock: Clock = _utcnow
    ) -> CertificateAuthority:
        """The stored CA, or a new self-signed root stored for every later start and replica."""
        material = store.load()
        if material is None:
            material = store.create(new_root(trust_domain, now=clock()))
        return cls(material, trust_domain=trust_domain, clock=clock)

    @property
    def root_pem(self) -> bytes:
        """The trust bundle: the root certificate(s) peers must trust."""
        if not self._chain_pem:
            return self._cert_pem
        return x509.load_pem_x509_certificates(self._chain_pem)[-1].public_bytes(
            serialization.Encoding.PEM
        )

    def spiffe_id(self, namespace: str, service_account: str) -> str:
        """The identity of a workload of this trust domain."""
        return spiffe_id(self.trust_domain, namespace, service_account)

    def sign_csr(
        self, csr_pem: bytes, *, spiffe_id: str, ttl: datetime.timedelta = DEFAULT_WORKLOAD_TTL
    ) -> SignedCertificate:
        """A client+server certificate for the CSR's key, naming only `spiffe_id`."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CAError(f"not a PEM certificate request: {exc}") from exc
        if not csr.is_signature_valid:
            raise CAError("the certificate request's signature does not verify")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise CAError("the certificate request must carry an EC key")
        if not spiffe_id.startswith(f"spiffe://{self.trust_domain}/"):
            raise CAError(f"{spiffe_id!r} is not in trust domain {self.trust_domain!r}")
        builder = self._leaf_builder(public_key, ttl).add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=True,  # an empty subject makes the SAN the only name, hence critical
        )
        return self._sign(builder)

    def issue_server_certificate(
        self,
        dns_names: list[str],
        ip_addresses: list[str] | None = None,
        *,
        ttl: datetime.timedelta = SERVER_TTL,
    ) -> tuple[bytes, bytes]:
        """A server certificate and its new key for the control plane's own endpoints (gRPC
        stream, admission webhook). Returns (chain PEM, key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses or []]
        if not names:
            raise CAError("a server certificate needs at least one DNS name or IP address")
        builder = self._leaf_builder(key.public_key(), ttl).add_extension(
            x509.SubjectAlternativeName(names), critical=True
        )
        return self._sign(builder).chain_pem, _key_pem(key)

    def _leaf_builder(
        self, public_key: ec.EllipticCurvePublicKey, ttl: datetime.timedelta
    ) -> x509.CertificateBuilder:
        now = self._clock()
        not_after = min(now + ttl, self._cert.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )

    def _sign(self, builder: x509.CertificateBuilder) -> SignedCertificate:
        cert = builder.sign(self._key, hashes.SHA256())
        chain = cert.public_bytes(serialization.Encoding.PEM)
        if self._chain_pem:
            chain += self._cert_pem  # the intermediate; the root travels in the trust bundle
        return SignedCertificate(
            chain_pem=chain, serial=cert.serial_number, not_after=cert.not_valid_after_utc
        )


def new_root(trust_domain: str, *, now: datetime.datetime) -> CAMaterial:
    """A new self-signed root for `trust_domain`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lightmesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"lightmesh root CA ({trust_domain})"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ROOT_TTL)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CAMaterial(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def verify_chain(leaf_chain_pem: bytes, root_pem: bytes) -> None:
    """Check each certificate of a chain is signed by the next and the last by the root.
    Raises CAError. (Used by tests and `lightmesh` diagnostics; TLS peers verify with `ssl`.)"""
    certs = [
        *x509.load_pem_x509_certificates(leaf_chain_pem),
        x509.load_pem_x509_certificate(root_pem),
    ]
    for child, parent in itertools.pairwise(certs):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CAError(
                f"certificate {child.serial_number:x} is not issued by {parent.subject.rfc4514_string()}"
            ) from exc


# The ConfigMap, in every gateway namespace, holding the mesh's root (Istio: istio-ca-root-cert):
# gateways are not injected, so they mount it to verify the control plane and their peers.
ROOT_CONFIGMAP = "lightmesh-ca-root"


def publish_root(api_client: Any, namespaces: tuple[str, ...], root_pem: bytes) -> list[str]:
    """Create or update the root ConfigMap in each namespace; return the namespaces that failed
    (with the reason), so a missing namespace or Role never stops the control plane."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    failed = []
    pem = root_pem.decode("ascii")
    for namespace in namespaces:
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name=ROOT_CONFIGMAP, labels={"app.kubernetes.io/part-of": "lightmesh"}
            ),
            data={"root.pem": pem},
        )
        try:
            try:
                current = core.read_namespaced_config_map(ROOT_CONFIGMAP, namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                core.create_namespaced_config_map(namespace, body)
                continue
            if (current.data or {}).get("root.pem") != pem:
                core.replace_namespaced_config_map(ROOT_CONFIGMAP, namespace, body)
        except ApiException as exc:
            failed.append(f"{namespace}: {exc.status} {exc.reason}")
    return failed
