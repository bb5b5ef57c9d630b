"""RSS of one uvloop process whose TLS connections come and go: glibc's heap with and without the
remedies of lightmesh/memory.py.

    python -m bench.tls_churn [--rounds 40] [--connections 40]

Each variant runs in a fresh child: a TLS echo server and client in one process; per round the
client opens N connections, sends 2,000 bytes on each, reads them back, closes them all. Printed:
the child's RSS after 1, 5, 10, 20 and the last round. Variants: default malloc; a fixed mmap
threshold (MALLOC_MMAP_THRESHOLD_=131072); malloc_trim(0) after each round. No network beyond
loopback; bounded by the round count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import asyncio, ctypes, os, ssl, sys, uvloop
rounds, count, trim = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
cert, key = sys.argv[4], sys.argv[5]
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
async def main():
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)
    async def echo(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
        except OSError:
            pass
        writer.close()
    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    marks = {1, 5, 10, 20, rounds}
    out = []
    for n in range(1, rounds + 1):
        conns = [await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx) for _ in range(count)]
        for reader, writer in conns:
            writer.write(b"x" * 2000)
            await reader.readexactly(2000)
        for _, writer in conns:
            writer.close()
        await asyncio.sleep(0.05)
        if trim:
            ctypes.CDLL(None).malloc_trim(0)
        if n in marks:
            out.append(f"{rss():5.1f}")
    print("  ".join(out))
uvloop.run(main())
"""


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def main(argv: list[str]) -> int:
    """Run the three variants and print one line each."""
    parser = argparse.ArgumentParser(prog="python -m bench.tls_churn", description=__doc__)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--connections", type=int, default=40)
    args = parser.parse_args(argv)
    variants = {
        "default glibc malloc": ({}, "0"),
        "MALLOC_MMAP_THRESHOLD_=131072": ({"MALLOC_MMAP_THRESHOLD_": "131072"}, "0"),
        "malloc_trim(0) after each round": ({}, "1"),
    }
    print(f"RSS MB after rounds 1, 5, 10, 20, {args.rounds} ({args.connections} connections each)")
    with tempfile.TemporaryDirectory(prefix="lightmesh-tls-churn-") as tmp:
        cert, key = self_signed(Path(tmp))
        for label, (env, trim) in variants.items():
            result = subprocess.run(
                [sys.executable, "-c", CHILD, str(args.rounds), str(args.connections), trim,
                 str(cert), str(key)],
                env={**os.environ, **env}, capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            line = result.stdout.strip() or result.stderr.strip()[-300:]
            print(f"{label:34} {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
