"""Route table compilation and matching, weighted cluster choice, and what the sidecar rejects."""

import dataclasses
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightmesh.v1 import config_pb2 as pb
from sidecar.contract import RequestHead
from sidecar.errors import ConfigError
from sidecar.routing.table import (
    WeightedClusters,
    compile_routes,
    literal_prefix,
    request_port,
)


def head(
    path: str = "/", *, host: str = "catalog", method: str = "GET", **headers: str
) -> RequestHead:
    return RequestHead(
        method=method,
        path=path,
        host=host,
        http_version="1.1",
        headers=[(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    )


def table(*routes: pb.Route, max_regex: int = 1024) -> object:
    config = [pb.VirtualHost(name="catalog.default.svc.cluster.local",
                             domains=["catalog", "catalog.default"], routes=routes)]  # fmt: skip
    return compile_routes(config, max_regex=max_regex)


def to(cluster: str, **match: object) -> pb.Route:
    return pb.Route(
        name=cluster, matches=[pb.RouteMatch(**match)] if match else [],  # type: ignore[arg-type]
        clusters=[pb.WeightedCluster(cluster=cluster, weight=100)],
    )  # fmt: skip


def picked(routes: object, request: RequestHead) -> str | None:
    _, route = routes.route(request)  # type: ignore[attr-defined]
    return None if route is None else route.name  # type: ignore[no-any-return]


def test_first_matching_route_wins() -> None:
    routes = table(
        to("exact", uri=pb.StringMatch(exact="/a")),
        to("prefix", uri=pb.StringMatch(prefix="/a")),
        to("regex", uri=pb.StringMatch(regex="/items/[0-9]+")),
        to("rest"),
    )
    assert picked(routes, head("/a")) == "exact"
    assert picked(routes, head("/a/b?x=1")) == "prefix"
    assert picked(routes, head("/items/42")) == "regex"
    assert picked(routes, head("/items/42/more")) == "rest"  # regex is a full match


def test_headers_method_and_query_params_are_anded() -> None:
    match = pb.RouteMatch(
        method=pb.StringMatch(exact="POST"),
        headers=[pb.HeaderMatch(name="end-user", value=pb.StringMatch(exact="jason"))],
        query_params=[pb.QueryParamMatch(name="debug", value=pb.StringMatch(exact="1"))],
    )
    routes = table(
        pb.Route(
            name="all", matches=[match], clusters=[pb.WeightedCluster(cluster="c", weight=100)]
        ),
        to("rest"),
    )
    assert picked(routes, head("/?debug=1", method="POST", end_user="jason")) == "all"
    assert picked(routes, head("/?debug=1", method="GET", end_user="jason")) == "rest"
    assert picked(routes, head("/?debug=0", method="POST", end_user="jason")) == "rest"
    assert picked(routes, head("/?debug=1", method="POST")) == "rest"


def test_unknown_host_and_no_matching_route() -> None:
    routes = table(to("only", uri=pb.StringMatch(prefix="/api")))
    host, route = routes.route(head("/", host="payments"))  # type: ignore[attr-defined]
    assert host is None and route is None
    host, route = routes.route(head("/web", host="catalog.default"))  # type: ignore[attr-defined]
    assert host is not None and route is None


def test_weighted_clusters_give_exact_interleaved_shares() -> None:
    weighted = WeightedClusters([("v1", 80), ("v2", 20), ("off", 0)])
    first = [weighted.pick() for _ in range(10)]
    assert Counter(first) == Counter({"v1": 8, "v2": 2})
    assert Counter(weighted.pick() for _ in range(1000)) == Counter({"v1": 800, "v2": 200})


def test_regex_over_the_sidecar_limit_is_rejected_naming_the_route() -> None:
    with pytest.raises(
        ConfigError,
        match=r"route catalog.default.svc.cluster.local long match\[0\].uri.regex: "
        r"pattern is 30 characters, over this sidecar's limit of 10",
    ):
        table(to("long", uri=pb.StringMatch(regex="x" * 30)), max_regex=10)


def test_route_without_destination_is_rejected() -> None:
    with pytest.raises(ConfigError, match="route has no destination"):
        table(pb.Route(name="empty"))


@pytest.mark.parametrize(
    ("pattern", "literal"),
    [
        ("/api/v1/items/[0-9]+", "/api/v1/items/"),
        ("/items/x?", "/items/"),
        ("/a|/b", ""),
        ("(?i)/items", ""),
        (r"/a\.b", "/a"),
        ("/a(b|c)", "/a"),
        ("/ab{2}", "/a"),
    ],
)
def test_literal_prefix_of_regex_is_conservative(pattern: str, literal: str) -> None:
    assert literal_prefix(pb.StringMatch(regex=pattern)) == literal


@given(st.data())
@settings(max_examples=60)
def test_every_value_a_regex_accepts_starts_with_its_literal_prefix(data: st.DataObject) -> None:
    pattern = data.draw(
        st.sampled_from(["/api/v[0-9]/items/[0-9]+", "/x/y*z", "/a(b|c)+d", r"/q\?r", "/m[|]n"])
    )
    value = data.draw(st.from_regex(pattern, fullmatch=True))
    assert value.startswith(literal_prefix(pb.StringMatch(regex=pattern)))


def test_without_headers_match_when_absent_or_different() -> None:
    routes = table(
        to("no-debug", headers=[pb.HeaderMatch(name="x-debug", value=pb.StringMatch(exact="1"),
                                               invert=True)]),
        to("rest"),
    )  # fmt: skip
    assert picked(routes, head()) == "no-debug"
    assert picked(routes, head(x_debug="0")) == "no-debug"
    assert picked(routes, head(x_debug="1")) == "rest"


@given(st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=6))
def test_weighted_clusters_give_exact_shares_every_cycle(weights: list[int]) -> None:
    chooser = WeightedClusters([(f"c{i}", w) for i, w in enumerate(weights)])
    total = sum(weights)
    picks = Counter(chooser.pick() for _ in range(total * 2))
    assert picks == Counter({f"c{i}": 2 * w for i, w in enumerate(weights) if w})


def test_unknown_retry_condition_from_a_newer_control_plane_is_nacked() -> None:
    route = pb.Route(
        name="r",
        clusters=[pb.WeightedCluster(cluster="c", weight=100)],
        retries=pb.RetryPolicy(attempts=2, retry_on=["5xx", "cosmic-rays"]),
    )
    with pytest.raises(ConfigError, match="retries: unknown retryOn condition 'cosmic-rays'"):
        table(route)


def test_match_port_is_the_host_headers_port_else_the_intercepted_one_else_80() -> None:
    """Istio's match.port: the port the request was addressed to."""

    def sent_to(authority: str) -> RequestHead:
        return dataclasses.replace(head(), headers=[(b"host", authority.encode())])

    routes = table(to("admin", port=9090), to("web", port=80), to("rest"))
    assert picked(routes, sent_to("catalog:9090")) == "admin"
    assert picked(routes, sent_to("catalog")) == "web"  # no port in the Host: HTTP's 80
    intercepted = dataclasses.replace(sent_to("catalog"), original_dst=("10.0.0.5", 9090))
    assert picked(routes, intercepted) == "admin"
    assert picked(routes, sent_to("catalog:8080")) == "rest"
    assert request_port(sent_to("[fd00::1]:9090")) == 9090
    assert request_port(sent_to("[fd00::1]")) == 80
    assert request_port(head()) == 80  # no Host header at all
