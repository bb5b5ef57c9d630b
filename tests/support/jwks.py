"""Signing keys, JWKS documents and tokens for the JWT tests (RS256 and ES256), made fresh per
test run with `cryptography` and PyJWT: no fixed key material in the repository."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


@dataclass
class Issuer:
    """One issuer with one signing key: its public JWKS and tokens signed by it."""

    name: str
    alg: str = "RS256"  # or "ES256"
    kid: str = "key-1"
    _key: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.alg == "ES256":
            self._key = ec.generate_private_key(ec.SECP256R1())
        else:
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK."""
        public = self._key.public_key()
        algorithm = ECAlgorithm if self.alg == "ES256" else RSAAlgorithm
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(public))
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk

    def jwks(self) -> str:
        """The JWKS document (JSON text) with the public key."""
        return json.dumps({"keys": [self.jwk()]})

    def token(self, *, lifetime: float = 3600, issuer: str = "", **claims: Any) -> str:
        """A token of this issuer (or `issuer`), valid for `lifetime` seconds from now
        (negative: expired that long ago), with `claims` (sub defaults to "alice")."""
        now = int(time.time())
        payload = {
            "iss": issuer or self.name,
            "sub": "alice",
            "iat": now,
            "exp": int(now + lifetime),
            **claims,
        }
        return jwt.encode(payload, self._key, algorithm=self.alg, headers={"kid": self.kid})


class JwksServer:
    """An HTTP server on 127.0.0.1 (a thread) answering GET with `body`, or `status` when it
    is not 200: an issuer's JWKS endpoint whose keys and health the test changes."""

    def __init__(self, body: str) -> None:
        import http.server
        import threading

        self.body = body
        self.status = 200
        self.hits = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                data = owner.body.encode() if owner.status == 200 else b"unavailable"
                self.send_response(owner.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Where the JWKS is served."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
