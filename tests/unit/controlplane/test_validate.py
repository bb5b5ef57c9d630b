"""Schema and semantic validation of resource documents."""

from typing import Any

import pytest

from controlplane.model import DestinationRule, VirtualService, resolve_host
from controlplane.validate import parse_document


def vs(spec: dict[str, Any], **meta: str) -> dict[str, Any]:
    return {
        "apiVersion": "lightmesh.io/v1alpha1",
        "kind": "VirtualService",
        "metadata": {"name": "catalog", "namespace": "shop", **meta},
        "spec": spec,
    }


SPLIT = {
    "hosts": ["catalog"],
    "http": [
        {
            "route": [
                {"destination": {"host": "catalog", "subset": "v1"}, "weight": 90},
                {"destination": {"host": "catalog.shop", "subset": "v2"}, "weight": 10},
            ],
            "timeout": "1.5s",
        }
    ],
}


def problems(doc: Any) -> list[str]:
    return [str(p) for p in parse_document(doc, origin="f.yaml").problems]


def test_valid_virtual_service_resolves_hosts_and_weights() -> None:
    parsed = parse_document(vs(SPLIT), origin="f.yaml")
    assert parsed.problems == ()
    assert isinstance(parsed.resource, VirtualService)
    route = parsed.resource.http[0]
    assert parsed.resource.hosts == ("catalog.shop.svc.cluster.local",)
    assert [(d.host, d.subset, d.weight) for d in route.destinations] == [
        ("catalog.shop.svc.cluster.local", "v1", 90),
        ("catalog.shop.svc.cluster.local", "v2", 10),
    ]
    assert route.timeout == 1.5


def test_unknown_field_is_named_with_its_path() -> None:
    spec = {**SPLIT, "http": [{**SPLIT["http"][0], "retriez": 3}]}  # type: ignore[dict-item]
    assert problems(vs(spec)) == [
        "f.yaml: VirtualService shop/catalog: spec.http[0].retriez: unknown field "
        "(known fields: fault, headers, match, mirror, mirrorPercent, mirrorPercentage, name, "
        "redirect, retries, rewrite, route, timeout)"
    ]


def test_weights_must_sum_to_100() -> None:
    spec = {"hosts": ["catalog"], "http": [{"route": [
        {"destination": {"host": "a"}, "weight": 70},
        {"destination": {"host": "b"}, "weight": 40},
    ]}]}  # fmt: skip
    assert problems(vs(spec)) == [
        "f.yaml: VirtualService shop/catalog: spec.http[0].route: weights sum to 110, must be 100"
    ]


def test_missing_weight_with_several_destinations() -> None:
    spec = {"hosts": ["c"], "http": [{"route": [
        {"destination": {"host": "a"}, "weight": 100}, {"destination": {"host": "b"}},
    ]}]}  # fmt: skip
    assert "spec.http[0].route[1].weight: required" in problems(vs(spec))[0]


def test_regex_that_does_not_compile() -> None:
    spec = {"hosts": ["c"], "http": [{"match": [{"uri": {"regex": "(["}}],
                                      "route": [{"destination": {"host": "a"}}]}]}  # fmt: skip
    (message,) = problems(vs(spec))
    assert "spec.http[0].match[0].uri.regex: '([' does not compile" in message


def test_wrong_type_and_bad_duration() -> None:
    spec = {"hosts": "catalog", "http": [{"route": [{"destination": {"host": "a"}}],
                                          "timeout": "5 seconds"}]}  # fmt: skip
    found = problems(vs(spec))
    assert any("spec.hosts: must be a list, got the string 'catalog'" in p for p in found)
    assert any("spec.http[0].timeout: '5 seconds' does not match" in p for p in found)


def test_string_match_needs_exactly_one_kind() -> None:
    spec = {"hosts": ["c"], "http": [{"match": [{"uri": {"exact": "/a", "prefix": "/"}}],
                                      "route": [{"destination": {"host": "a"}}]}]}  # fmt: skip
    assert "spec.http[0].match[0].uri: exactly one of" in problems(vs(spec))[0]


def test_header_names_must_be_lower_case() -> None:
    spec = {"hosts": ["c"], "http": [{"match": [{"headers": {"End-User": {"exact": "j"}}}],
                                      "route": [{"destination": {"host": "a"}}]}]}  # fmt: skip
    assert (
        "spec.http[0].match[0].headers.End-User: header names must be lower case"
        in (problems(vs(spec))[0])
    )


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("text", "f.yaml: document must be a mapping"),
        ({"apiVersion": "v1", "kind": "VirtualService"}, "f.yaml: apiVersion: must be lightmesh.io/v1alpha1"),
        ({"apiVersion": "lightmesh.io/v1alpha1", "kind": "Ingress"}, "f.yaml: kind: unknown kind 'Ingress'"),
        ({"apiVersion": "security.istio.io/v1", "kind": "VirtualService"},
         "f.yaml: apiVersion: VirtualService is not in security.istio.io/v1"),
        ({"apiVersion": "lightmesh.io/v1alpha1", "kind": "VirtualService", "metadata": {}},
         "f.yaml: metadata.name: required string is missing"),
    ],
)  # fmt: skip
def test_document_level_problems(doc: Any, expected: str) -> None:
    assert problems(doc)[0].startswith(expected)


def test_destination_rule_subsets_and_duplicate_names() -> None:
    doc = {
        "apiVersion": "lightmesh.io/v1alpha1",
        "kind": "DestinationRule",
        "metadata": {"name": "catalog"},
        "spec": {
            "host": "catalog",
            "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}},
            "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
        },
    }
    parsed = parse_document(doc, origin="f.yaml")
    assert isinstance(parsed.resource, DestinationRule)
    assert parsed.resource.host == "catalog.default.svc.cluster.local"
    assert parsed.resource.policy.lb_policy == "RANDOM"
    doc["spec"]["subsets"].append({"name": "v1"})
    assert "spec.subsets[1].name: subset 'v1' is defined twice" in problems(doc)[0]
    doc["spec"]["trafficPolicy"]["loadBalancer"]["simple"] = "FASTEST"
    assert "'FASTEST' is not one of ROUND_ROBIN, LEAST_REQUEST, RANDOM" in problems(doc)[0]


@pytest.mark.parametrize(
    ("host", "fqdn"),
    [
        ("catalog", "catalog.shop.svc.cluster.local"),
        ("catalog.shop", "catalog.shop.svc.cluster.local"),
        ("catalog.other.svc", "catalog.other.svc.cluster.local"),
        ("catalog.shop.svc.cluster.local", "catalog.shop.svc.cluster.local"),
        ("api.example.com", "api.example.com"),
    ],
)
def test_host_forms_resolve_to_one_fqdn(host: str, fqdn: str) -> None:
    assert resolve_host(host, "shop") == fqdn


def test_list_bounds_match_the_crd() -> None:
    # The CRD bounds the lists (maxItems, which also keeps its CEL rules within the API server's
    # cost budget); the file source enforces the same bound.
    many = [{"destination": {"host": "catalog"}, "weight": 0} for _ in range(65)]
    found = problems(vs({"hosts": ["catalog"], "http": [{"route": many}]}))
    assert found == [
        "f.yaml: VirtualService shop/catalog: spec.http[0].route: 65 items, at most 64 allowed"
    ]
