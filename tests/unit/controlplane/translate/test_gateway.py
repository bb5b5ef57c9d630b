"""An ingress gateway's listeners from Gateways and bound VirtualServices (Istio's binding rules),
parsed from YAML as users write them."""

from __future__ import annotations

from typing import Any

import yaml

from controlplane.model import ResourceKey, TlsSecret
from controlplane.translate.gateway import gateway_config, host_matches, selects
from controlplane.validate import parse_document
from lightmesh.v1 import config_pb2 as pb


def parse(text: str) -> list[Any]:
    out = []
    for doc in yaml.safe_load_all(text):
        parsed = parse_document(doc, origin="test")
        assert parsed.resource is not None, parsed.problems
        out.append(parsed.resource)
    return out


RESOURCES = parse("""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
    - port: {number: 443, name: https, protocol: HTTPS}
      hosts: ["./shop.example.com", "*/api.example.com"]
      tls: {mode: SIMPLE, credentialName: shop-cert}
    - port: {number: 443, name: https-wild, protocol: HTTPS}
      hosts: ["*.example.org"]
      tls: {mode: MUTUAL, credentialName: org-cert}
    - port: {number: 80, name: http, protocol: HTTP}
      hosts: ["*"]
      tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: other, namespace: shop}
spec:
  selector: {istio: other}
  servers:
    - port: {number: 8080, protocol: HTTP}
      hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: ["shop.example.com", "www.example.org"]
  gateways: ["edge"]
  http:
    - match: [{uri: {prefix: /api}, gateways: [shop/edge]}, {uri: {prefix: /mesh}, gateways: [mesh]}]
      route: [{destination: {host: catalog}}]
    - route: [{destination: {host: frontend}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: tenant}
spec:
  hosts: ["api.example.com", "shop.example.com"]
  gateways: ["shop/edge"]
  http:
    - route: [{destination: {host: api}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mesh-only, namespace: shop}
spec:
  hosts: ["catalog"]
  http:
    - route: [{destination: {host: catalog}}]
""")
GATEWAYS = [r for r in RESOURCES if r.key.kind == "Gateway"]
SERVICES = [r for r in RESOURCES if r.key.kind == "VirtualService"]
SECRETS = {
    ResourceKey("Secret", "istio-system", "shop-cert"): TlsSecret(
        key=ResourceKey("Secret", "istio-system", "shop-cert"), cert_chain="CERT", private_key="KEY"
    ),
    ResourceKey("Secret", "istio-system", "org-cert"): TlsSecret(
        key=ResourceKey("Secret", "istio-system", "org-cert"),
        cert_chain="ORG",
        private_key="OKEY",
        ca="CA",
    ),
}


def config(namespace: str = "istio-system") -> dict[int, pb.GatewayListener]:
    selected = [g for g in GATEWAYS if selects(g, {"istio": "ingressgateway", "app": "x"})]
    result = gateway_config(selected, SERVICES, namespace=namespace, secrets=SECRETS.get)
    return {listener.port: listener for listener in result.listeners}


def test_gateways_are_selected_by_labels_and_servers_grouped_by_port() -> None:
    listeners = config()
    assert sorted(listeners) == [80, 443]
    https = listeners[443]
    assert https.name == "port-443"
    assert [s.name for s in https.servers] == [
        "shop/edge/servers[0] (https)",
        "shop/edge/servers[1] (https-wild)",
    ]
    assert list(https.servers[0].hosts) == ["shop.example.com", "api.example.com"]


def test_virtual_services_bind_by_gateway_name_and_server_host_namespace() -> None:
    https = config()[443]
    domains = {v.domains[0]: v.origin for v in https.virtual_hosts}
    # "./shop.example.com" takes VirtualServices of the Gateway's namespace only: tenant's api
    # VirtualService also names shop.example.com but gets only api.example.com ("*/...").
    assert domains == {
        "shop.example.com": "VirtualService shop/shop",
        "www.example.org": "VirtualService shop/shop",
        "api.example.com": "VirtualService tenant/api",
    }
    # The mesh-only VirtualService is on no gateway port.
    assert all(v.origin != "VirtualService shop/mesh-only" for v in https.virtual_hosts)


def test_match_entries_of_other_gateways_and_the_mesh_are_left_out() -> None:
    shop = next(v for v in config()[443].virtual_hosts if v.domains[0] == "shop.example.com")
    first, default = shop.routes
    assert [m.uri.prefix for m in first.matches] == ["/api"]
    assert default.clusters[0].cluster == "outbound||frontend.shop.svc.cluster.local"


def test_credentials_come_from_secrets_of_the_gateways_namespace() -> None:
    simple, mutual = config()[443].servers
    assert simple.tls.mode == pb.GATEWAY_TLS_SIMPLE
    assert (simple.tls.cert_chain_pem, simple.tls.private_key_pem, simple.tls.ca_pem) == (
        "CERT", "KEY", "",
    )  # fmt: skip
    assert mutual.tls.mode == pb.GATEWAY_TLS_MUTUAL and mutual.tls.ca_pem == "CA"
    # A gateway in another namespace does not see them.
    elsewhere = config("shop")[443].servers[0].tls
    assert elsewhere.cert_chain_pem == ""
    assert elsewhere.credential_error == "Secret shop/shop-cert not found"


def test_redirect_server_and_destinations() -> None:
    http = config()[80]
    assert http.servers[0].tls.https_redirect
    assert http.servers[0].tls.mode == pb.GATEWAY_TLS_NONE
    selected = [g for g in GATEWAYS if selects(g, {"istio": "ingressgateway"})]
    result = gateway_config(selected, SERVICES, namespace="istio-system", secrets=SECRETS.get)
    assert result.destinations == {
        "catalog.shop.svc.cluster.local",
        "frontend.shop.svc.cluster.local",
        "api.tenant.svc.cluster.local",
    }


def test_local_mode_credential_names_a_directory() -> None:
    (gateway,) = parse("""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: local, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
    - port: {number: 8443, protocol: HTTPS}
      hosts: ["*"]
      tls: {mode: MUTUAL, credentialName: /etc/certs/shop/}
""")
    (listener,) = gateway_config([gateway], [], namespace="shop", secrets=SECRETS.get).listeners
    tls = listener.servers[0].tls
    assert (tls.cert_file, tls.key_file, tls.ca_file) == (
        "/etc/certs/shop/tls.crt", "/etc/certs/shop/tls.key", "/etc/certs/shop/ca.crt",
    )  # fmt: skip


def test_host_matching_takes_the_narrower_host() -> None:
    assert host_matches("*", "shop.example.com") == "shop.example.com"
    assert host_matches("*.example.com", "shop.example.com") == "shop.example.com"
    assert host_matches("shop.example.com", "*.example.com") == "shop.example.com"
    assert host_matches("*.example.com", "example.com") is None
    assert host_matches("a.example.com", "b.example.com") is None
    assert host_matches("*.example.com", "*.example.com") == "*.example.com"


def test_passthrough_servers_take_the_tls_routes_of_their_sni_hosts() -> None:
    resources = parse("""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: pass, namespace: db}
spec:
  selector: {istio: ingressgateway}
  servers:
    - port: {number: 9443, name: tls, protocol: TLS}
      hosts: ["*.db.example.com"]
      tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: db}
spec:
  hosts: ["*.db.example.com"]
  gateways: ["pass"]
  tls:
    - match: [{sniHosts: ["eu.db.example.com"], port: 9443}]
      route: [{destination: {host: db-eu, port: {number: 5432}}}]
    - match: [{sniHosts: ["us.db.example.com"], port: 1234}]
      route: [{destination: {host: db-us}}]
    - match: [{sniHosts: ["*.db.example.com"]}]
      route:
        - {destination: {host: db-a}, weight: 50}
        - {destination: {host: db-b}, weight: 50}
""")
    gateway, vs = resources
    result = gateway_config([gateway], [vs], namespace="db", secrets=SECRETS.get)
    (listener,) = result.listeners
    assert listener.servers[0].tls.mode == pb.GATEWAY_TLS_PASSTHROUGH
    assert list(listener.virtual_hosts) == []
    routes = [(list(r.sni_hosts), [c.cluster for c in r.clusters]) for r in listener.tls_routes]
    assert routes == [
        (["eu.db.example.com"], ["outbound||db-eu.db.svc.cluster.local"]),
        (
            ["*.db.example.com"],
            ["outbound||db-a.db.svc.cluster.local", "outbound||db-b.db.svc.cluster.local"],
        ),
    ]
    assert "db-eu.db.svc.cluster.local" in result.destinations


def test_tls_route_sni_hosts_must_be_among_the_virtual_service_hosts() -> None:
    parsed = parse_document(
        yaml.safe_load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: db}
spec:
  hosts: ["db.example.com"]
  gateways: ["pass"]
  tls:
    - match: [{sniHosts: ["other.example.com"]}]
      route: [{destination: {host: db}}]
"""),
        origin="test",
    )
    assert parsed.resource is None
    (problem,) = parsed.problems
    assert problem.path == "spec.tls[0].match[0].sniHosts[0]"
    assert "not one of spec.hosts" in problem.message


def test_one_port_cannot_be_both_plain_text_and_tls() -> None:
    parsed = parse_document(
        yaml.safe_load("""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mixed, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
    - port: {number: 8443, name: https, protocol: HTTPS}
      hosts: ["*"]
      tls: {mode: SIMPLE, credentialName: cert}
    - port: {number: 8443, name: http, protocol: HTTP}
      hosts: ["*"]
"""),
        origin="test",
    )
    assert parsed.resource is None
    (problem,) = parsed.problems
    assert problem.path == "spec.servers[1].port"
    assert "spec.servers[0]'s, which is TLS" in problem.message
