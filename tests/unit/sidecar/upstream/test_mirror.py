"""The head of a mirrored request: Host suffixed with -shadow (as Istio does), Connection: close."""

import pytest

from sidecar.contract import RequestHead
from sidecar.http.http1 import BodyKind, Framing
from sidecar.upstream.mirror import shadow_host, shadow_request


@pytest.mark.parametrize(
    ("host", "shadow"),
    [
        (b"catalog", b"catalog-shadow"),
        (b"catalog:8080", b"catalog-shadow:8080"),
        (b"catalog.default.svc.cluster.local", b"catalog.default.svc.cluster.local-shadow"),
        (b"[::1]:80", b"[::1]-shadow:80"),
    ],
)
def test_shadow_host_keeps_the_port(host: bytes, shadow: bytes) -> None:
    assert shadow_host(host) == shadow


def test_shadow_request_changes_only_host_and_connection() -> None:
    head = RequestHead(
        method="POST",
        path="/orders?x=1",
        host="catalog",
        http_version="1.1",
        headers=[(b"host", b"catalog"), (b"content-length", b"3"), (b"x-request-id", b"r1")],
    )
    data = shadow_request(head, Framing(BodyKind.LENGTH, 3))
    assert data.startswith(b"POST /orders?x=1 HTTP/1.1\r\n")
    assert b"host: catalog-shadow\r\n" in data
    assert b"x-request-id: r1\r\n" in data
    assert b"connection: close\r\n" in data
    assert head.headers[0] == (b"host", b"catalog")  # the original is untouched
