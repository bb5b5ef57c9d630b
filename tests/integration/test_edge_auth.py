"""End-user authentication (RequestAuthentication, JWT) and local rate limiting
(HTTPLocalRateLimitPolicy) through real sidecar processes.

Two workloads in namespace `shop`: the test calls catalog through frontend's outbound listener
(mutual TLS between the sidecars) and catalog's app echoes what it received. Tokens are signed by
keys made for the run (tests/support/jwks.py): RS256 and ES256, the keys given inline or served
over HTTP on loopback as a jwksUri the control plane fetches. Policies are YAML files in the
control plane's config directory, changed while the mesh runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from lightmeshctl.demo.mesh import LocalMesh, http_get, wait_for
from tests.support.jwks import Issuer, JwksServer

pytestmark = pytest.mark.integration

RSA = Issuer("https://rsa.issuer.test", alg="RS256")
EC = Issuer("https://ec.issuer.test", alg="ES256")
EXPIRED = "Jwt is expired"


def start_pair(mesh: LocalMesh, *control_plane_args: str) -> None:
    mesh.start_control_plane(extra_args=control_plane_args)
    for name in ("frontend", "catalog"):
        mesh.start_workload(
            name,
            service=name,
            namespace="shop",
            sidecar_args=("--service-account", name, "--identity-dir", str(mesh.work_dir / name)),
        )
    mesh.wait_ready()
    wait_for(lambda: call(mesh)[0] == 200, timeout=30, what="frontend routes to catalog")


def call(mesh: LocalMesh, path: str = "/", token: str = "", **headers: str) -> tuple[int, Any]:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    reply = http_get(
        f"http://catalog.shop{path}", proxy=mesh.workloads["frontend"].outbound, headers=headers
    )
    try:
        return reply.status, reply.json()
    except ValueError:
        lowered = {k.lower(): v for k, v in reply.headers.items()}
        return reply.status, {
            "raw": reply.body.decode("latin-1"),
            "flags": lowered.get("x-lightmesh-response-flags"),
            "www-authenticate": lowered.get("www-authenticate"),
        }


def apply(mesh: LocalMesh, kind: str, name: str, spec: dict[str, Any]) -> None:
    document = {
        "apiVersion": "security.istio.io/v1" if kind != "HTTPLocalRateLimitPolicy" else "lightmesh.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }  # fmt: skip
    (mesh.config_dir / f"{name}.yaml").write_text(yaml.safe_dump(document))


def echoed(body: Any) -> dict[str, str]:
    headers = body["headers"]
    assert isinstance(headers, dict)
    return {k.lower(): str(v) for k, v in headers.items()}


CATALOG = {"matchLabels": {"app": "catalog"}}


@pytest.fixture
def jwks_servers() -> Iterator[tuple[JwksServer, JwksServer]]:
    """The RS256 and the ES256 issuer's JWKS, each served over HTTP on loopback."""
    servers = JwksServer(RSA.jwks()), JwksServer(EC.jwks())
    yield servers
    for server in servers:
        server.close()


def test_jwt_verification_with_rs256_and_es256_jwks_served_over_http(
    mesh: LocalMesh, jwks_servers: tuple[JwksServer, JwksServer]
) -> None:
    rsa_keys, ec_keys = jwks_servers
    start_pair(mesh)
    apply(mesh, "RequestAuthentication", "catalog-jwt", {
        "selector": CATALOG,
        "jwtRules": [
            {"issuer": RSA.name, "jwksUri": rsa_keys.url, "audiences": ["catalog"],
             "outputClaimToHeaders": [{"header": "x-jwt-sub", "claim": "sub"},
                                      {"header": "x-jwt-team", "claim": "team"}]},
            {"issuer": EC.name, "jwksUri": ec_keys.url, "outputPayloadToHeader": "x-jwt-payload",
             "forwardOriginalToken": True},
        ],
    })  # fmt: skip
    wait_for(lambda: call(mesh, token="garbage")[0] == 401, timeout=20, what="JWT rules applied")
    for issuer, extra in ((RSA, {"aud": "catalog"}), (EC, {})):
        wait_for(lambda i=issuer, e=extra: call(mesh, token=i.token(**e))[0] == 200, timeout=20,
                 what=f"{issuer.alg} keys fetched")  # fmt: skip
    assert rsa_keys.hits >= 1 and ec_keys.hits >= 1

    status, body = call(
        mesh, token=RSA.token(aud="catalog", team="shop"), **{"x-jwt-sub": "mallory"}
    )
    assert status == 200, body
    seen = echoed(body)
    assert (seen["x-jwt-sub"], seen["x-jwt-team"]) == ("alice", "shop")  # never the client's
    assert "authorization" not in seen  # removed: forwardOriginalToken is false

    token = EC.token(sub="bob")
    status, body = call(mesh, token=token)
    assert status == 200, body
    seen = echoed(body)
    assert (
        seen["authorization"] == f"Bearer {token}" and seen["x-jwt-payload"] == token.split(".")[1]
    )

    # Missing token: let through (no AuthorizationPolicy asks for a principal yet).
    refused_before = catalog_metric(
        mesh, 'lightmesh_inbound_refused_total{reason="unauthenticated"}'
    )
    assert call(mesh)[0] == 200
    for bad, reason in (
        (RSA.token(lifetime=-600, aud="catalog"), EXPIRED),
        (RSA.token(aud="other"), "Audiences in Jwt are not allowed"),
        (RSA.token(aud="catalog", issuer="https://wrong.issuer.test"), "Jwt issuer is not configured"),
        (Issuer(EC.name, alg="ES256").token(), "Jwt verification fails"),
    ):  # fmt: skip
        status, body = call(mesh, token=bad)
        assert (status, body["raw"].strip()) == (401, reason), body
        assert body["www-authenticate"].startswith("Bearer")

    # A policy requiring a request principal: now a missing token is refused (403, Istio's).
    apply(mesh, "AuthorizationPolicy", "require-jwt", {
        "selector": CATALOG,
        "rules": [{"from": [{"source": {"requestPrincipals": [f"{EC.name}/*"]}}],
                   "when": [{"key": "request.auth.claims[groups]", "values": ["admins"]}]}],
    })  # fmt: skip
    wait_for(lambda: call(mesh)[0] == 403, timeout=20, what="principal required")
    status, body = call(mesh)
    assert (status, body["flags"]) == (403, "RBAC"), body
    assert call(mesh, token=EC.token(groups=["users"]))[0] == 403
    assert call(mesh, token=RSA.token(aud="catalog", groups=["admins"]))[0] == 403  # other issuer
    assert call(mesh, token=EC.token(groups=["users", "admins"]))[0] == 200

    refused = catalog_metric(mesh, 'lightmesh_inbound_refused_total{reason="unauthenticated"}')
    assert refused == refused_before + 4  # the four bad tokens above


def metric(base_url: str, line_prefix: str) -> float:
    """The sum of the samples at `base_url`/metrics whose line starts with `line_prefix`."""
    text = http_get(f"{base_url}/metrics").body.decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix)
    )


def catalog_metric(mesh: LocalMesh, line_prefix: str) -> float:
    return metric(mesh.workloads["catalog"].admin, line_prefix)


def cp_metric(mesh: LocalMesh, line_prefix: str) -> float:
    return metric(mesh.debug_url, line_prefix)


def test_jwks_uri_is_fetched_refreshed_and_kept_when_the_issuer_fails(mesh: LocalMesh) -> None:
    server = JwksServer(EC.jwks())
    try:
        start_pair(mesh, "--jwks-refresh", "1")
        apply(mesh, "RequestAuthentication", "catalog-jwt", {
            "selector": CATALOG, "jwtRules": [{"issuer": EC.name, "jwksUri": server.url}],
        })  # fmt: skip
        wait_for(lambda: call(mesh, token="garbage")[0] == 401, timeout=20, what="JWT rule applied")
        wait_for(lambda: call(mesh, token=EC.token())[0] == 200, timeout=20, what="keys fetched")

        # The issuer rotates its key: the next refresh brings the new one to the sidecar.
        rotated = Issuer(EC.name, alg="ES256", kid="key-2")
        server.body = rotated.jwks()
        wait_for(
            lambda: call(mesh, token=rotated.token())[0] == 200, timeout=20, what="rotated key"
        )
        status, body = call(mesh, token=EC.token())
        assert (status, body["raw"].strip()) == (
            401,
            "Jwks doesn't have key to match kid or alg from Jwt",
        )

        # The issuer fails: the last good keys keep serving, and the failure is reported.
        failures = cp_metric(mesh, 'lightmesh_controlplane_jwks_fetches_total{outcome="failure"}')
        server.status = 503
        wait_for(
            lambda: cp_metric(mesh, 'lightmesh_controlplane_jwks_fetches_total{outcome="failure"}') > failures,
            timeout=20, what="a failed fetch",
        )  # fmt: skip
        assert call(mesh, token=rotated.token())[0] == 200
        problems = [p for p in mesh.problems() if server.url in p.get("message", "")]
        assert problems and "HTTP 503" in problems[0]["message"], mesh.problems()
        assert "keep serving" in problems[0]["message"]
        assert cp_metric(mesh, 'lightmesh_controlplane_jwks_fetches_total{outcome="success"}') >= 2
    finally:
        server.close()


def test_rate_limit_shares_per_client_identity_over_a_bounded_run(mesh: LocalMesh) -> None:
    """frontend (an override: 10/s, burst 10) and reports (identity: 2/s, burst 2) each send the
    same bounded run to catalog, interleaved. Whatever the machine's speed, each passes at least
    its burst and at most rate x elapsed + burst; every other request is a 429 flagged RL, and
    the sidecar's counters agree."""
    start_pair(mesh)
    mesh.start_workload("reports", service="reports", namespace="shop",
                        sidecar_args=("--service-account", "reports",
                                      "--identity-dir", str(mesh.work_dir / "reports")))  # fmt: skip
    mesh.wait_ready()
    clients = {"frontend": (10, 10), "reports": (2, 2)}

    def get(client: str) -> tuple[int, Any]:
        reply = http_get("http://catalog.shop/items", proxy=mesh.workloads[client].outbound)
        flags = {k.lower(): v for k, v in reply.headers.items()}.get("x-lightmesh-response-flags")
        return reply.status, flags

    wait_for(lambda: get("reports")[0] == 200, timeout=30, what="reports routes to catalog")
    apply(mesh, "HTTPLocalRateLimitPolicy", "catalog-limit", {
        "targetRef": {"group": "apps", "kind": "Deployment", "name": "catalog"},
        "identity": {"requestsPerSecond": 2, "burst": 2},
        "overrides": [{"requestsPerSecond": 10, "burst": 10,
                       "clientRefs": [{"kind": "ServiceAccount", "name": "frontend"}]}],
    })  # fmt: skip
    admin = mesh.workloads["catalog"].admin
    wait_for(lambda: b'"rateLimit"' in http_get(f"{admin}/config_dump").body, timeout=20,
             what="rate limit applied")  # fmt: skip

    rounds = 60
    outcomes: dict[str, list[tuple[int, Any]]] = {name: [] for name in clients}
    started = time.monotonic()
    for _ in range(rounds):
        for name in clients:
            outcomes[name].append(get(name))
    elapsed = time.monotonic() - started

    refused_total = 0
    for name, (rate, burst) in clients.items():
        passed = sum(1 for status, _ in outcomes[name] if status == 200)
        refused = [(s, f) for s, f in outcomes[name] if s != 200]
        assert set(refused) <= {(429, "RL")}, (name, set(refused))
        assert min(rounds, burst) <= passed <= rate * elapsed + burst, (name, passed, elapsed)
        refused_total += len(refused)
    metrics = http_get(f"{admin}/metrics").body.decode()
    assert (
        f'lightmesh_inbound_refused_total{{reason="rate_limited"}} {float(refused_total)}'
        in metrics
    )
    rl_lines = [line for line in metrics.splitlines()
                if line.startswith("lightmesh_requests_total{") and 'response_flags="RL"' in line]  # fmt: skip
    assert sum(float(line.rsplit(" ", 1)[1]) for line in rl_lines) == refused_total
