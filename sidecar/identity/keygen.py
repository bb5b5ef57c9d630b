"""Generate a key and a CSR, in a short-lived child process (`python -m sidecar.identity.keygen`).

The sidecar never imports `cryptography` itself: it would add ~10 MB to every sidecar's resident
memory for something done once a day. The child prints one JSON object {"key_pem", "csr_pem"} on
stdout; the key never leaves the pod (the parent writes it to a 0600 file).
"""

from __future__ import annotations

import json
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def generate() -> dict[str, str]:
    """A new P-256 key and a CSR signed by it (the CA ignores the CSR's names)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {
        "key_pem": key_pem.decode("ascii"),
        "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    }


if __name__ == "__main__":
    json.dump(generate(), sys.stdout)
