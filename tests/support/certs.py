"""Certificates for edge TLS tests: a private CA issuing server and client certificates.

Nothing of the mesh's own CA is used, as for a real site's certificates (the gateway presents
them to clients outside the mesh). Keys are ECDSA P-256 (fast to make on a loaded machine).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@dataclass
class EdgeCA:
    """A self-signed root that issues leaf certificates."""

    name: str = "Test Root"
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> str:
        """The root certificate, PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(
        self,
        common_name: str,
        *,
        dns: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        client: bool = False,
    ) -> tuple[str, str]:
        """(certificate PEM, key PEM) of a leaf for `dns` names (server) or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key)

    def write_secret_dir(
        self, directory: Path, common_name: str, *, dns: tuple[str, ...], ca: EdgeCA | None = None
    ) -> Path:
        """A directory laid out as a mounted Kubernetes TLS Secret: tls.crt, tls.key[, ca.crt]."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = self.issue(common_name, dns=dns)
        write_pair(directory, cert, key)
        if ca is not None:
            (directory / "ca.crt").write_text(ca.pem)
        return directory


def write_pair(directory: Path, cert: str, key: str) -> None:
    """Replace tls.crt and tls.key as a Secret volume update does: both at once (a rename)."""
    staging = directory / ".staging"
    staging.mkdir(exist_ok=True)
    (staging / "tls.crt").write_text(cert)
    (staging / "tls.key").write_text(key)
    (staging / "tls.key").chmod(0o600)
    for name in ("tls.key", "tls.crt"):
        (staging / name).replace(directory / name)
