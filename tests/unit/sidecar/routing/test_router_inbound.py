"""The inbound router while its app refuses connections: refused at once, marked never-processed."""

from sidecar.cluster.app_health import AppHealth
from sidecar.config.apply import DataPlane
from sidecar.contract import Forward, LocalReply, RequestHead
from sidecar.http.http1 import UNPROCESSED
from sidecar.routing.router import InboundRouter


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
