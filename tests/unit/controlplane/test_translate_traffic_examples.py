"""examples/traffic/: every file validates, and translates into the sidecar config it documents."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.model import (
    DestinationRule,
    Resource,
    ResourceKey,
    Service,
    ServiceEndpoint,
    VirtualService,
)
from controlplane.translate import translate
from controlplane.validate import check_references, parse_document
from controlplane.world import NodeInfo, World
from lightmesh import types
from lightmesh.v1 import config_pb2 as pb

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "traffic"
CATALOG = "catalog.default.svc.cluster.local"
NODE = NodeInfo(id="client-1.default", workload="client", namespace="default")


def load(*names: str) -> list[Resource]:
    out: list[Resource] = []
    for name in names:
        for doc in yaml.safe_load_all((EXAMPLES / name).read_text()):
            parsed = parse_document(doc, origin=name)
            assert parsed.problems == (), [str(p) for p in parsed.problems]
            assert parsed.resource is not None
            out.append(parsed.resource)
    return out


def config(*names: str) -> tuple[dict[str, pb.Cluster], list[pb.Route]]:
    resources = load(*names)
    services = {
        host: Service(name=host.split(".")[0], namespace="default", endpoints=(
            ServiceEndpoint(address="127.0.0.1", port=1, workload="a-v1", labels=(("version", "v1"),)),
            ServiceEndpoint(address="127.0.0.1", port=2, workload="a-v2", labels=(("version", "v2"),)),
        ))
        for host in (CATALOG, "catalog-shadow.default.svc.cluster.local")
    }  # fmt: skip
    world = World(
        revision=1,
        virtual_services=tuple(r for r in resources if isinstance(r, VirtualService)),
        destination_rules=tuple(r for r in resources if isinstance(r, DestinationRule)),
        services=services,
    )
    out = translate(world, NODE)
    clusters = {c.name: c for c in out[types.CLUSTER] if isinstance(c, pb.Cluster)}
    host = next(
        vh for vh in out[types.ROUTES] if isinstance(vh, pb.VirtualHost) and vh.name == CATALOG
    )
    return clusters, list(host.routes)


def test_every_example_validates_and_references_resolve() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert len(names) >= 12
    for name in names:
        resources = load(name) + ([] if name == "subsets.yaml" else load("subsets.yaml"))
        keyed: dict[ResourceKey, Resource] = {r.key: r for r in resources}
        assert check_references(keyed, origin=lambda _, n=name: n) == {}


def test_subset_policy_overrides_the_host_policy_field_by_field() -> None:
    clusters, _ = config("subsets.yaml")
    v1, v2 = clusters[f"outbound|v1|{CATALOG}"], clusters[f"outbound|v2|{CATALOG}"]
    assert (v1.lb_policy, v1.connect_timeout_ms) == (pb.ROUND_ROBIN, 2000)
    assert (v2.lb_policy, v2.connect_timeout_ms) == (pb.LEAST_REQUEST, 2000)


def test_default_load_balancer_is_peak_ewma() -> None:
    clusters, _ = config("split-90-10.yaml")
    assert clusters[f"outbound||{CATALOG}"].lb_policy == pb.PEAK_EWMA


def test_route_actions_reach_the_route_config() -> None:
    (_, routes) = config("redirect.yaml")
    assert (routes[0].redirect.uri, routes[0].redirect.code) == ("/new/items", 301)
    (_, routes) = config("rewrite.yaml")
    assert (routes[0].rewrite.uri, routes[0].rewrite.authority) == ("/", "catalog.internal")
    assert not routes[1].HasField("rewrite")
    (_, routes) = config("headers.yaml")
    assert [(h.name, h.value) for h in routes[0].request_headers.set] == [("x-mesh-env", "staging")]
    assert list(routes[0].response_headers.remove) == ["server"]
    (_, routes) = config("fault-abort.yaml")
    assert routes[0].fault == pb.Fault(
        abort_status=503, abort_percent=30, delay_ms=100, delay_percent=10
    )
    (_, routes) = config("retries.yaml")
    assert routes[0].retries == pb.RetryPolicy(
        attempts=3, per_try_timeout_ms=1000, retry_on=["5xx", "connect-failure", "reset"]
    )
    assert routes[0].timeout_ms == 3000
    (_, routes) = config("mirror.yaml")
    assert routes[0].mirror == pb.Mirror(
        cluster="outbound||catalog-shadow.default.svc.cluster.local", percent=25
    )
    (_, routes) = config("header-match.yaml", "subsets.yaml")
    assert routes[1].matches[0].headers[0] == pb.HeaderMatch(
        name="authorization", value=pb.StringMatch(present=True), invert=True
    )


def test_cluster_policies_reach_the_cluster_config() -> None:
    clusters, _ = config("circuit-breaker.yaml")
    c = clusters[f"outbound||{CATALOG}"]
    assert (c.max_connections, c.max_pending_requests, c.max_requests_per_connection) == (1, 1, 100)
    assert (c.connect_timeout_ms, c.idle_timeout_ms) == (1000, 30_000)
    clusters, _ = config("outlier-detection.yaml")
    assert clusters[f"outbound||{CATALOG}"].outlier == pb.OutlierDetection(
        consecutive_5xx=5, interval_ms=1000, base_ejection_ms=8000, max_ejection_percent=50
    )
    clusters, _ = config("consistent-hash.yaml")
    c = clusters[f"outbound||{CATALOG}"]
    assert (c.lb_policy, c.hash.header) == (pb.RING_HASH, "x-user")


def vs(http: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "lightmesh.io/v1alpha1",
        "kind": "VirtualService",
        "metadata": {"name": "catalog", "namespace": "shop"},
        "spec": {"hosts": ["catalog"], "http": http},
    }


ROUTE = {"route": [{"destination": {"host": "catalog"}}]}


@pytest.mark.parametrize(
    ("http", "expected"),
    [
        ([{**ROUTE, "redirect": {"uri": "/x"}}], "spec.http[0]: exactly one of route or redirect"),
        ([{"redirect": {"uri": "/x", "redirectCode": 305}}], "spec.http[0].redirect.redirectCode: 305"),
        ([{**ROUTE, "retries": {"attempts": 2, "retryOn": "5xx,sometimes"}}],
         "spec.http[0].retries.retryOn: unknown condition 'sometimes'"),
        ([{**ROUTE, "timeout": "2x"}], "spec.http[0].timeout: '2x' does not match"),
        ([{**ROUTE, "headers": {"request": {"set": {"Host": "x"}}}}],
         "spec.http[0].headers.request.set.Host: 'Host' cannot be edited here"),
        ([{**ROUTE, "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 120}}}}],
         "spec.http[0].fault.abort.percentage.value: 120 is above the maximum 100"),
        ([{**ROUTE, "match": [{"withoutHeaders": {"x": {"regex": "(["}}}]}],
         "spec.http[0].match[0].withoutHeaders.x.regex: '([' does not compile"),
        ([{**ROUTE, "match": [{"uri": {}}]}], "spec.http[0].match[0].uri: exactly one of"),
        ([{**ROUTE, "mirrorPercentage": {"value": 101}}], "spec.http[0].mirrorPercentage.value: 101 is above"),
    ],
)  # fmt: skip
def test_invalid_route_fields_are_named(http: list[dict[str, Any]], expected: str) -> None:
    found = [str(p) for p in parse_document(vs(http), origin="f.yaml").problems]
    assert any(expected in p for p in found), found


def test_per_try_timeout_over_timeout_is_a_warning_not_a_rejection() -> None:
    http = [{**ROUTE, "timeout": "1s", "retries": {"attempts": 2, "perTryTimeout": "2s"}}]
    parsed = parse_document(vs(http), origin="f.yaml")
    assert parsed.resource is not None
    (warning,) = parsed.problems
    assert warning.severity == "warning" and warning.path == "spec.http[0].retries.perTryTimeout"
    assert "warning: 2s is longer than the route timeout 1s" in str(warning)


def test_mirror_to_an_undefined_subset_is_a_reference_problem() -> None:
    http = [{**ROUTE, "mirror": {"host": "catalog", "subset": "shadow"}}]
    parsed = parse_document(vs(http), origin="f.yaml")
    assert parsed.resource is not None and parsed.key is not None
    (problems,) = check_references(
        {parsed.key: parsed.resource}, origin=lambda _: "f.yaml"
    ).values()
    assert problems[0].path == "spec.http[0].mirror.subset"


def test_consistent_hash_needs_exactly_one_key() -> None:
    doc = {
        "apiVersion": "lightmesh.io/v1alpha1",
        "kind": "DestinationRule",
        "metadata": {"name": "catalog"},
        "spec": {"host": "catalog", "trafficPolicy": {"loadBalancer": {"consistentHash": {
            "httpHeaderName": "x-user", "useSourceIp": True}}}},
    }  # fmt: skip
    (problem,) = parse_document(doc, origin="f.yaml").problems
    assert problem.path == "spec.trafficPolicy.loadBalancer.consistentHash"
    assert "exactly one of httpHeaderName, httpCookie, useSourceIp" in problem.message
