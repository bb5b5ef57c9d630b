"""The inbound router while its app refuses connections (refused at once, marked
never-processed), and its per-route rate limit: the route found by the pushed VirtualHosts."""

import pytest

from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from sidecar.cluster.app_health import AppHealth
from sidecar.config.apply import DataPlane
from sidecar.contract import Forward, LocalReply, RequestHead
from sidecar.errors import ConfigError
from sidecar.http.http1 import UNPROCESSED
from sidecar.routing.router import InboundRouter
from tests.support.config import pack


def head(method: str = "POST") -> RequestHead:
    return RequestHead(method=method, path="/orders", host="catalog", http_version="1.1")


def test_requests_are_refused_at_once_with_the_mark_while_the_app_is_down() -> None:
    health = AppHealth()
    router = InboundRouter(
        app_host="127.0.0.1", app_port=8080, dataplane=DataPlane(), app_health=health
    )
    assert isinstance(router.resolve(head()), Forward)
    health.refused(0.0)
    refused = router.resolve(head())
    assert isinstance(refused, LocalReply)
    assert (refused.status, refused.flags) == (503, "UF")
    assert (UNPROCESSED, b"1") in refused.headers
    health.probed(ok=True, now=0.2)
    assert isinstance(router.resolve(head()), Forward)


def test_without_app_health_every_request_is_forwarded() -> None:
    router = InboundRouter(app_host="127.0.0.1", app_port=8080)
    assert isinstance(router.resolve(head("GET")), Forward)


def limited_inbound() -> pb.InboundPolicy:
    """A workload limited to 3 requests, its route "search" (GET /search...) to 1 of its own."""
    search = pb.Route(name="search")
    search.matches.add().uri.prefix = "/search"
    rest = pb.Route(name="rest")
    vhost = pb.VirtualHost(name="catalog.shop.svc.cluster.local", domains=["catalog"],
                           routes=[search, rest])  # fmt: skip
    one = pb.RateLimitBucket(requests_per_second=1, burst=1)
    return pb.InboundPolicy(
        rate_limit=pb.LocalRateLimit(
            name="shop/limit",
            total=pb.RateLimitBucket(requests_per_second=1, burst=3),
            routes=[pb.RouteRateLimit(route="search", total=one)],
            inbound_hosts=[vhost],
        )
    )


def test_a_pushed_route_limit_limits_the_requests_its_route_matches() -> None:
    dataplane = DataPlane()
    dataplane.apply(types.INBOUND, pack(limited_inbound()))
    router = InboundRouter(app_host="127.0.0.1", app_port=8080, dataplane=dataplane,
                           clock=lambda: 0.0)  # fmt: skip

    def status(path: str, host: str = "catalog") -> int:
        decided = router.resolve(RequestHead(method="GET", path=path, host=host,
                                             http_version="1.1"))  # fmt: skip
        return decided.status if isinstance(decided, LocalReply) else 200

    assert [status("/search?q=1") for _ in range(2)] == [200, 429]
    # Other routes, and a host the VirtualService does not name, take the workload's buckets.
    assert [status("/items"), status("/search", host="other"), status("/x")] == [200, 200, 200]
    assert status("/items") == 429
    assert router.admission.rate_limited_routes == {"search": 1}


def test_a_route_match_that_does_not_compile_is_refused_naming_it() -> None:
    policy = limited_inbound()
    policy.rate_limit.inbound_hosts[0].routes[0].matches[0].uri.regex = "a" * 6
    with pytest.raises(ConfigError, match="search"):
        DataPlane(max_regex_length=5).apply(types.INBOUND, pack(policy))


def test_the_pushed_app_protocol_picks_http2_and_the_flag_overrides_it() -> None:
    dataplane = DataPlane()
    plain = InboundRouter(app_host="127.0.0.1", app_port=8080, dataplane=dataplane)
    forced = InboundRouter(app_host="127.0.0.1", app_port=8080, dataplane=dataplane,
                           app_protocol="http")  # fmt: skip

    def http2(router: InboundRouter) -> bool:
        decided = router.resolve(head())
        assert isinstance(decided, Forward)
        return decided.http2

    assert (http2(plain), http2(forced)) == (False, False)  # undeclared: HTTP/1.1 stays
    dataplane.apply(types.INBOUND, pack(pb.InboundPolicy(app_protocol="grpc")))
    assert (http2(plain), http2(forced)) == (True, False)
    with pytest.raises(ConfigError, match="app_protocol 'spdy'"):
        dataplane.apply(types.INBOUND, pack(pb.InboundPolicy(app_protocol="spdy")))
