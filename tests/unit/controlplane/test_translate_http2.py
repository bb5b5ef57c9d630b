"""HTTP/2 towards a service: its ports' declared protocol (Istio's rules) and the
DestinationRule's connectionPool.http fields, validated and translated into its clusters."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from controlplane.model import DestinationRule, ServiceEndpoint
from controlplane.sources.kube_index import KubeIndex
from controlplane.translate.clusters import host_clusters
from controlplane.validate import parse_document
from lightmesh.protocols import port_protocol


@pytest.mark.parametrize(
    ("name", "app_protocol", "protocol"),
    [
        ("grpc", "", "grpc"),
        ("grpc-api", "", "grpc"),
        ("http2", "", "http2"),
        ("http2-web", "", "http2"),
        ("http", "", "http"),
        ("http-web", "", "http"),
        ("grpc-web", "", "http"),  # gRPC-Web is HTTP/1.1
        ("web", "", ""),  # undeclared: the caller's protocol
        ("", "", ""),
        ("http", "grpc", "grpc"),  # appProtocol wins over the name
        ("web", "kubernetes.io/h2c", "http2"),
        ("web", "HTTP2", "http2"),
        ("grpc", "http", "http"),
        ("web", "mysql", "tcp"),
        ("tcp-db", "", "tcp"),
    ],
)
def test_istio_protocol_selection_for_http2(name: str, app_protocol: str, protocol: str) -> None:
    assert port_protocol(name, app_protocol) == protocol


def _rule(http: dict[str, Any]) -> Any:
    return parse_document(
        {
            "apiVersion": "lightmesh.io/v1alpha1",
            "kind": "DestinationRule",
            "metadata": {"name": "catalog", "namespace": "shop"},
            "spec": {
                "host": "catalog",
                "trafficPolicy": {"connectionPool": {"http": http}},
                "subsets": [
                    {
                        "name": "v2",
                        "labels": {"version": "v2"},
                        "trafficPolicy": {"connectionPool": {"http": {"maxConcurrentStreams": 7}}},
                    }
                ],
            },
        },
        origin="f.yaml",
    )


def _service(ports: list[dict[str, Any]]) -> Any:
    index = KubeIndex()
    index.replace(
        "Service",
        [{"metadata": {"name": "catalog", "namespace": "shop"},
          "spec": {"clusterIP": "10.0.0.9", "ports": ports}}],
    )  # fmt: skip
    service = index.services()["catalog.shop.svc.cluster.local"]
    endpoint = ServiceEndpoint(address="10.1.0.1", port=9000, workload="catalog-1", sidecar=True)
    return dataclasses.replace(service, endpoints=(endpoint,))


def test_connection_pool_http2_fields_are_validated_and_reach_the_clusters() -> None:
    parsed = _rule(
        {"http2MaxRequests": 50, "maxConcurrentStreams": 20, "h2UpgradePolicy": "UPGRADE"}
    )
    assert isinstance(parsed.resource, DestinationRule), parsed.problems
    policy = parsed.resource.policy
    assert (policy.http2_max_requests, policy.max_concurrent_streams) == (50, 20)
    assert policy.h2_upgrade_policy == "UPGRADE"
    service = _service([{"name": "http", "port": 80}])
    whole, v2 = host_clusters(service, parsed.resource, trust_domain="cluster.local")
    assert (whole.http2, whole.max_concurrent_streams, whole.http2_max_requests) == (True, 20, 50)
    assert (v2.http2, v2.max_concurrent_streams, v2.http2_max_requests) == (True, 7, 50)


@pytest.mark.parametrize(
    ("http", "problem"),
    [
        ({"h2UpgradePolicy": "SOMETIMES"}, "h2UpgradePolicy"),
        ({"http2MaxRequests": 0}, "http2MaxRequests"),
        ({"maxConcurrentStreams": -1}, "maxConcurrentStreams"),
        ({"http2MaxRequest": 1}, "http2MaxRequest"),
    ],
)
def test_bad_http2_fields_are_refused_naming_the_field(http: dict[str, Any], problem: str) -> None:
    parsed = _rule(http)
    assert parsed.resource is None
    assert any(problem in str(p) and "connectionPool.http" in str(p) for p in parsed.problems)


@pytest.mark.parametrize(
    ("ports", "upgrade", "http2"),
    [
        ([{"name": "grpc", "port": 9000}], None, True),
        ([{"name": "web", "port": 9000, "appProtocol": "kubernetes.io/h2c"}], None, True),
        ([{"name": "grpc", "port": 9000}, {"name": "tcp-db", "port": 5432}], None, True),
        ([{"name": "grpc", "port": 9000}, {"name": "http", "port": 80}], None, False),
        ([{"name": "http", "port": 80}], None, False),
        ([{"name": "http", "port": 80}], "UPGRADE", True),
        ([{"name": "http", "port": 80}], "DO_NOT_UPGRADE", False),
        ([{"name": "grpc", "port": 9000}], "DO_NOT_UPGRADE", True),  # gRPC is HTTP/2 anyway
    ],
)
def test_clusters_speak_http2_when_the_ports_or_the_rule_say_so(
    ports: list[dict[str, Any]], upgrade: str | None, http2: bool
) -> None:
    rule = _rule({"h2UpgradePolicy": upgrade} if upgrade else {}).resource
    [whole, _] = host_clusters(_service(ports), rule, trust_domain="cluster.local")
    assert whole.http2 is http2


def _vs(abort: dict[str, Any]) -> Any:
    return parse_document(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "pricing", "namespace": "shop"},
            "spec": {
                "hosts": ["pricing"],
                "http": [
                    {
                        "fault": {"abort": {**abort, "percentage": {"value": 50}}},
                        "route": [{"destination": {"host": "pricing"}}],
                    }
                ],
            },
        },
        origin="f.yaml",
    )


def test_fault_abort_takes_a_grpc_status() -> None:
    parsed = _vs({"grpcStatus": "UNAVAILABLE"})
    assert parsed.resource is not None, parsed.problems
    fault = parsed.resource.http[0].fault
    assert (fault.abort_grpc, fault.abort_status, fault.abort_percent) == ("UNAVAILABLE", None, 50)
    assert any("grpcStatus" in str(p) for p in _vs({"grpcStatus": "BROKEN"}).problems)
    assert any("httpStatus or grpcStatus" in str(p) for p in _vs({}).problems)


def test_max_connection_duration_reaches_the_clusters_and_a_subset_may_narrow_it() -> None:
    parsed = parse_document(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "catalog", "namespace": "shop"},
            "spec": {
                "host": "catalog",
                "trafficPolicy": {"connectionPool": {"tcp": {"maxConnectionDuration": "5m"}}},
                "subsets": [
                    {
                        "name": "v2",
                        "labels": {"version": "v2"},
                        "trafficPolicy": {
                            "connectionPool": {"tcp": {"maxConnectionDuration": "30s"}}
                        },
                    }
                ],
            },
        },
        origin="f.yaml",
    )
    assert isinstance(parsed.resource, DestinationRule), parsed.problems
    whole, v2 = host_clusters(_service([{"name": "grpc", "port": 80}]), parsed.resource,
                              trust_domain="cluster.local")  # fmt: skip
    assert (whole.max_connection_duration_ms, v2.max_connection_duration_ms) == (300_000, 30_000)
    refused = parse_document(
        {"apiVersion": "lightmesh.io/v1alpha1", "kind": "DestinationRule",
         "metadata": {"name": "c", "namespace": "shop"},
         "spec": {"host": "c", "trafficPolicy": {"connectionPool": {"tcp": {
             "maxConnectionDuration": "soon"}}}}},
        origin="f.yaml",
    )  # fmt: skip
    assert refused.resource is None
    assert any("maxConnectionDuration" in str(p) for p in refused.problems)
