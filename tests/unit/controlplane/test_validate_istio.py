"""Istio's YAML as it is written: its apiVersions, keywords, deprecated fields (warnings, never
rejections), `gateways`, `match.port`, `portLevelSettings`, and the Gateway and ServiceEntry
kinds, validated the way Istio validates them."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.model import (
    MESH,
    DestinationRule,
    Gateway,
    Resource,
    ServiceEntry,
    VirtualService,
)
from controlplane.schema import api_versions
from controlplane.validate import Parsed, parse_document
from controlplane.world import World

SAMPLES = Path(__file__).resolve().parents[3] / "tests" / "data" / "istio-samples"


def parse(doc: dict[str, Any]) -> Parsed:
    return parse_document(doc, origin="f.yaml")


def accepted(doc: dict[str, Any]) -> tuple[Resource, list[str]]:
    """The resource (which must be accepted) and its warnings as text."""
    parsed = parse(doc)
    errors = [str(p) for p in parsed.problems if p.severity == "error"]
    assert parsed.resource is not None and not errors, errors
    return parsed.resource, [f"{p.path}: {p.message}" for p in parsed.problems]


def errors(doc: dict[str, Any]) -> list[str]:
    parsed = parse(doc)
    assert parsed.resource is None
    return [f"{p.path}: {p.message}" for p in parsed.problems]


def vs(spec: dict[str, Any], api: str = "networking.istio.io/v1alpha3") -> dict[str, Any]:
    return {"apiVersion": api, "kind": "VirtualService",
            "metadata": {"name": "catalog", "namespace": "shop"}, "spec": spec}  # fmt: skip


def dr(policy: dict[str, Any], api: str = "networking.istio.io/v1") -> dict[str, Any]:
    return {"apiVersion": api, "kind": "DestinationRule",
            "metadata": {"name": "catalog", "namespace": "shop"},
            "spec": {"host": "catalog", "trafficPolicy": policy}}  # fmt: skip


ROUTE = {"route": [{"destination": {"host": "catalog"}}]}


@pytest.mark.parametrize(
    ("kind", "api"),
    [(k, v) for k in ("VirtualService", "DestinationRule", "Gateway", "ServiceEntry", "Sidecar",
                      "PeerAuthentication", "AuthorizationPolicy") for v in api_versions(k)],
)  # fmt: skip
def test_every_istio_api_version_is_an_alias_of_ours(kind: str, api: str) -> None:
    parsed = parse({"apiVersion": api, "kind": kind, "metadata": {"name": "x"}, "spec": None})
    # Only the (empty) spec is wrong: the apiVersion and kind were taken.
    assert [p.path for p in parsed.problems] == ["spec"], parsed.problems


def test_a_kind_under_the_other_istio_group_or_an_unknown_istio_kind_is_refused() -> None:
    assert errors({"apiVersion": "security.istio.io/v1", "kind": "DestinationRule"}) == [
        "apiVersion: DestinationRule is not in security.istio.io/v1 (one of: lightmesh.io/v1alpha1, "
        "networking.istio.io/v1alpha3, networking.istio.io/v1beta1, networking.istio.io/v1)"
    ]
    assert errors({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry"})[0].startswith(
        "kind: unknown kind 'WorkloadEntry'"
    )
    assert errors({"apiVersion": "networking.istio.io/v2", "kind": "VirtualService"})[0].startswith(
        "apiVersion: must be lightmesh.io/v1alpha1 (or Istio's"
    )


def test_kubernetes_objects_beside_mesh_resources_are_skipped() -> None:
    parsed = parse({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}})
    assert parsed.key is None and parsed.resource is None and parsed.problems == ()


def test_istio_mutual_is_mesh_mutual_and_tls_origination_a_warning() -> None:
    rule, warnings = accepted(dr({"tls": {"mode": "ISTIO_MUTUAL"}}))
    assert isinstance(rule, DestinationRule) and rule.policy.tls_mode == "MESH_MUTUAL"
    assert warnings == []
    rule, warnings = accepted(dr({"tls": {"mode": "SIMPLE", "sni": "example.com"}}))
    assert isinstance(rule, DestinationRule) and rule.policy.tls_mode is None
    assert warnings[0].startswith(
        "spec.trafficPolicy.tls.mode: SIMPLE (TLS origination) is accepted"
    )


def test_deprecated_percent_fields_are_read_as_percentage_with_a_warning() -> None:
    spec = {"hosts": ["catalog"], "http": [{
        **ROUTE,
        "fault": {"delay": {"percent": 30, "fixedDelay": "2s"},
                  "abort": {"httpStatus": 500, "percent": 20}},
        "mirror": {"host": "shadow"}, "mirrorPercent": 10,
    }]}  # fmt: skip
    service, warnings = accepted(vs(spec))
    assert isinstance(service, VirtualService)
    route = service.http[0]
    assert route.fault is not None
    assert (route.fault.delay_percent, route.fault.abort_percent, route.mirror_percent) == (
        30.0,
        20.0,
        10.0,
    )
    assert warnings == [
        "spec.http[0].fault.delay.percent: deprecated; read as percentage: {value: 30} (write that)",
        "spec.http[0].fault.abort.percent: deprecated; read as percentage: {value: 20} (write that)",
        "spec.http[0].mirrorPercent: deprecated; read as mirrorPercentage: {value: 10} (write that)",
    ]


def test_the_current_percentage_wins_over_the_deprecated_one() -> None:
    spec = {"hosts": ["catalog"], "http": [{
        **ROUTE, "mirror": {"host": "shadow"}, "mirrorPercent": 10,
        "mirrorPercentage": {"value": 2.5},
    }]}  # fmt: skip
    service, warnings = accepted(vs(spec))
    assert isinstance(service, VirtualService) and service.http[0].mirror_percent == 2.5
    assert warnings == ["spec.http[0].mirrorPercent: deprecated and ignored, spec.http[0]."
                        "mirrorPercentage is set"]  # fmt: skip


def test_consecutive_errors_keeps_istios_meaning_gateway_errors_only() -> None:
    rule, warnings = accepted(dr({"outlierDetection": {"consecutiveErrors": 3, "interval": "1s"}}))
    assert isinstance(rule, DestinationRule) and rule.policy.outlier is not None
    assert (rule.policy.outlier.consecutive_gateway, rule.policy.outlier.consecutive_5xx) == (3, 0)
    assert warnings[0].startswith(
        "spec.trafficPolicy.outlierDetection.consecutiveErrors: deprecated; read as "
        "consecutiveGatewayErrors: 3 with consecutive5xxErrors: 0"
    )
    # As Istio: a current field set beside it overrides its own part only.
    rule, warnings = accepted(
        dr({"outlierDetection": {"consecutiveErrors": 3, "consecutive5xxErrors": 7}})
    )
    assert isinstance(rule, DestinationRule) and rule.policy.outlier is not None
    assert (rule.policy.outlier.consecutive_gateway, rule.policy.outlier.consecutive_5xx) == (3, 7)
    assert warnings[0].endswith("then consecutive5xxErrors as set")


def test_port_level_settings_are_validated_and_kept() -> None:
    policy = {"portLevelSettings": [
        {"port": {"number": 443}, "tls": {"mode": "ISTIO_MUTUAL"},
         "loadBalancer": {"simple": "RANDOM"}},
    ]}  # fmt: skip
    rule, warnings = accepted(dr(policy))
    assert isinstance(rule, DestinationRule)
    ((port, settings),) = rule.policy.port_level
    assert (port, settings.lb_policy, settings.tls_mode) == (443, "RANDOM", "MESH_MUTUAL")
    assert warnings == [
        "spec.trafficPolicy.portLevelSettings: accepted, not yet applied per port: the host-wide "
        "settings apply to every port (docs/istio.md)"
    ]
    twice = {"portLevelSettings": [{"port": {"number": 443}}, {"port": {"number": 443}}]}
    assert errors(dr(twice)) == [
        "spec.trafficPolicy.portLevelSettings[1].port.number: port 443 is listed twice"
    ]
    assert errors(dr({"portLevelSettings": [{"tls": {"mode": "DISABLE"}}]})) == [
        "spec.trafficPolicy.portLevelSettings[0].port: required field is missing"
    ]


def test_match_port_is_carried() -> None:
    service, _ = accepted(
        vs({"hosts": ["catalog"], "http": [{**ROUTE, "match": [{"port": 8080}]}]})
    )
    assert isinstance(service, VirtualService) and service.http[0].matches[0].port == 8080
    assert errors(vs({"hosts": ["catalog"], "http": [{**ROUTE, "match": [{"port": 0}]}]})) == [
        "spec.http[0].match[0].port: 0 is below the minimum 1"
    ]


@pytest.mark.parametrize(
    ("gateways", "expected", "for_mesh"),
    [
        (None, (MESH,), True),
        (["mesh"], (MESH,), True),
        (["edge", "mesh"], ("shop/edge", MESH), True),
        (["istio-system/edge"], ("istio-system/edge",), False),
    ],
)
def test_gateways_keep_istios_semantics(
    gateways: list[str] | None, expected: tuple[str, ...], for_mesh: bool
) -> None:
    spec: dict[str, Any] = {"hosts": ["catalog"], "http": [ROUTE]}
    if gateways is not None:
        spec["gateways"] = gateways
    service, _ = accepted(vs(spec))
    assert isinstance(service, VirtualService)
    assert (service.gateways, service.for_mesh) == (expected, for_mesh)


def test_gateways_errors_name_the_entry() -> None:
    assert errors(vs({"hosts": ["catalog"], "gateways": ["edge", "shop/edge"]})) == [
        "spec.gateways[1]: 'shop/edge' is listed twice"
    ]
    assert errors(vs({"hosts": ["catalog"], "gateways": ["Bad_Name"]})) == [
        "spec.gateways[0]: 'Bad_Name' is not 'mesh', a Gateway name or 'namespace/name'"
    ]


def test_a_wildcard_host_is_for_gateways_only() -> None:
    assert errors(vs({"hosts": ["*"], "http": [ROUTE]})) == [
        "spec.hosts[0]: '*' is not allowed for a VirtualService bound to the mesh (set "
        "spec.gateways to the Gateways it is for)"
    ]
    service, warnings = accepted(vs({"hosts": ["*"], "gateways": ["edge"], "http": [ROUTE]}))
    assert isinstance(service, VirtualService) and service.hosts == ("*",) and warnings == []


def test_a_virtual_service_bound_only_to_gateways_does_not_route_sidecars() -> None:
    edge, _ = accepted(vs({"hosts": ["catalog"], "gateways": ["edge"], "http": [ROUTE]}))
    mesh, _ = accepted(vs({"hosts": ["catalog"], "http": [ROUTE]}))
    assert isinstance(edge, VirtualService) and isinstance(mesh, VirtualService)
    world = World(virtual_services=[edge])
    assert world.virtual_service("catalog.shop.svc.cluster.local", "shop") is None
    assert world.hosts() == set()
    world.put(edge.key, mesh)
    assert world.virtual_service("catalog.shop.svc.cluster.local", "shop") == mesh


def gateway(servers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "shop"},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": servers}}  # fmt: skip


HTTP = {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}
HTTPS = {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["shop/*.example.com"],
         "tls": {"mode": "SIMPLE", "credentialName": "shop-cert"}}  # fmt: skip


def test_gateway_servers_are_read_in_istios_shape() -> None:
    edge, _ = accepted(gateway([{**HTTP, "tls": {"httpsRedirect": True}}, HTTPS]))
    assert isinstance(edge, Gateway) and edge.selector == (("istio", "ingressgateway"),)
    plain, secure = edge.servers
    assert (plain.port, plain.protocol, plain.hosts, plain.https_redirect) == (
        80, "HTTP", ("*/*",), True,
    )  # fmt: skip
    assert (secure.tls_mode, secure.credential_name, secure.hosts) == (
        "SIMPLE", "shop-cert", ("shop/*.example.com",),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        ([{**HTTPS, "tls": None}], "spec.servers[0].tls: must be an object, got null"),
        ([{k: v for k, v in HTTPS.items() if k != "tls"}],
         "spec.servers[0].tls: required for protocol HTTPS"),
        ([{**HTTPS, "tls": {"mode": "SIMPLE"}}], "spec.servers[0].tls: mode SIMPLE needs credentialName"),
        ([{**HTTPS, "tls": {"mode": "MUTUAL", "serverCertificate": "/c", "privateKey": "/k"}}],
         "spec.servers[0].tls.caCertificates: mode MUTUAL needs the client CA"),
        ([{**HTTP, "tls": {"mode": "SIMPLE"}}], "spec.servers[0].tls: a HTTP server takes only"),
        ([HTTP, {**HTTPS, "port": {**HTTPS["port"], "name": "http"}}],  # type: ignore[dict-item]
         "spec.servers[1].port.name: 'http' is also the name of spec.servers[0]'s port"),
        ([{**HTTP, "hosts": ["a/b/c"]}], "spec.servers[0].hosts[0]: 'a/b' is not '*', '.' or"),
        ([{**HTTP, "hosts": ["*.*.example"]}], "spec.servers[0].hosts[0]: '*.*.example' is not"),
        ([{**HTTP, "hosts": []}], "spec.servers[0].hosts: at least one host is required"),
        ([{**HTTP, "port": {"number": 80, "protocol": "UDP"}}],
         "spec.servers[0].port.protocol: 'UDP' is not one of"),
        ([], "spec.servers: at least one server is required"),
    ],
)  # fmt: skip
def test_gateway_problems_name_the_field(servers: list[dict[str, Any]], expected: str) -> None:
    assert errors(gateway(servers))[0].startswith(expected)


def entry(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1beta1", "kind": "ServiceEntry",
            "metadata": {"name": "external", "namespace": "shop"}, "spec": spec}  # fmt: skip


PORTS = [{"number": 443, "name": "https", "protocol": "TLS"}]


def test_service_entry_in_istios_shape() -> None:
    se, _ = accepted(entry({
        "hosts": ["api.example.com"], "ports": PORTS, "resolution": "STATIC",
        "addresses": ["192.0.2.0/24"],
        "endpoints": [{"address": "192.0.2.10", "ports": {"https": 8443}, "labels": {"a": "b"}}],
    }))  # fmt: skip
    assert isinstance(se, ServiceEntry)
    assert (se.hosts, se.location, se.resolution) == (
        ("api.example.com",),
        "MESH_EXTERNAL",
        "STATIC",
    )
    assert se.endpoints[0].ports == (("https", 8443),)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"hosts": ["x.example.com"], "resolution": "STATIC"},
         "spec.endpoints: resolution STATIC needs at least one endpoint"),
        ({"hosts": ["x.example.com"], "endpoints": [{"address": "1.2.3.4"}]},
         "spec.endpoints: not allowed with resolution NONE"),
        ({"hosts": ["*.example.com"], "resolution": "DNS"},
         "spec.hosts[0]: a wildcard host cannot be resolved by DNS"),
        ({"hosts": ["*"]}, "spec.hosts[0]: '*' is not a host name or '*.suffix'"),
        ({"hosts": ["x.example.com"], "resolution": "STATIC", "ports": PORTS,
          "endpoints": [{"address": "not-an-ip"}]},
         "spec.endpoints[0].address: 'not-an-ip' is not an IP address"),
        ({"hosts": ["x.example.com"], "resolution": "DNS", "ports": PORTS,
          "endpoints": [{"address": "x.example.com", "ports": {"http": 80}}]},
         "spec.endpoints[0].ports.http: no port of spec.ports is named 'http'"),
        ({"hosts": ["x.example.com"], "ports": [*PORTS, {"number": 443, "name": "other"}]},
         "spec.ports[1].number: port 443 is listed twice"),
        ({"hosts": ["x.example.com"], "addresses": ["300.1.1.1"]},
         "spec.addresses[0]: '300.1.1.1' is not an IP address or CIDR block"),
        ({"hosts": ["x.example.com"], "resolution": "MAGIC"},
         "spec.resolution: 'MAGIC' is not one of"),
    ],
)  # fmt: skip
def test_service_entry_problems_name_the_field(spec: dict[str, Any], expected: str) -> None:
    assert errors(entry(spec))[0].startswith(expected)


@pytest.mark.parametrize(
    "sample", sorted(p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*.yaml"))
)
def test_every_document_of_every_istio_sample_is_accepted_as_written(sample: str) -> None:
    for doc in yaml.safe_load_all((SAMPLES / sample).read_text()):
        if doc is None:
            continue
        parsed = parse(doc)
        assert not [p for p in parsed.problems if p.severity == "error"], parsed.problems
        if doc["apiVersion"].partition("/")[0].endswith("istio.io"):
            assert parsed.resource is not None


def test_match_gateways_resolve_like_the_virtual_services() -> None:
    http = [{**ROUTE, "match": [{"gateways": ["edge", "mesh"]}, {"uri": {"prefix": "/"}}]}]
    service, _ = accepted(vs({"hosts": ["catalog"], "http": http}))
    assert isinstance(service, VirtualService)
    first, second = service.http[0].matches
    assert (first.gateways, first.for_mesh, second.for_mesh) == (("shop/edge", MESH), True, True)
    http = [{**ROUTE, "match": [{"gateways": ["a/b/c"]}]}]
    assert errors(vs({"hosts": ["catalog"], "http": http})) == [
        "spec.http[0].match[0].gateways[0]: 'a/b/c' is not 'mesh', a Gateway name or 'namespace/name'"
    ]
