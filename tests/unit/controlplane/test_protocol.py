"""The server side of the config stream: subscriptions, ACK, NACK, stale nonces, reconnects."""

from controlplane.xds.protocol import Acked, Ignored, Nacked, StreamProtocol, Subscribed, SyncState
from lightmesh import types

R = types.ROUTES


def subscribed(held: str = "") -> StreamProtocol:
    protocol = StreamProtocol()
    assert isinstance(
        protocol.on_request(type_url=R, version=held, nonce="", error=None, now=0), Subscribed
    )
    return protocol


def test_new_subscription_is_sent_the_snapshot() -> None:
    protocol = subscribed()
    assert protocol.due({R: "v1"}) == [R]
    assert protocol.sync_state(R, "v1") is SyncState.STALE


def test_ack_marks_synced_and_nothing_is_resent() -> None:
    protocol = subscribed()
    nonce = protocol.mark_sent(R, "v1", now=1.0)
    outcome = protocol.on_request(type_url=R, version="v1", nonce=nonce, error=None, now=1.25)
    assert outcome == Acked(type_url=R, version="v1", latency=0.25)
    assert protocol.due({R: "v1"}) == []
    assert protocol.sync_state(R, "v1") is SyncState.SYNCED


def test_nack_keeps_old_version_and_is_not_resent_until_config_changes() -> None:
    protocol = subscribed()
    protocol.on_request(
        type_url=R, version="v1", nonce=protocol.mark_sent(R, "v1", now=0), error=None, now=0
    )
    nonce = protocol.mark_sent(R, "v2", now=1)
    outcome = protocol.on_request(type_url=R, version="v1", nonce=nonce, error="bad regex", now=2)
    assert outcome == Nacked(type_url=R, version="v2", kept_version="v1", message="bad regex")
    assert protocol.sync_state(R, "v2") is SyncState.NACKED
    assert protocol.types[R].acked_version == "v1"
    assert protocol.due({R: "v2"}) == []
    assert protocol.due({R: "v3"}) == [R]


def test_stale_nonce_is_ignored() -> None:
    protocol = subscribed()
    old = protocol.mark_sent(R, "v1", now=0)
    protocol.mark_sent(R, "v2", now=0)
    outcome = protocol.on_request(type_url=R, version="v1", nonce=old, error=None, now=0)
    assert isinstance(outcome, Ignored)
    assert protocol.types[R].acked_version == ""


def test_reconnect_with_current_version_sends_nothing() -> None:
    protocol = subscribed(held="v7")
    assert protocol.due({R: "v7"}) == []
    assert protocol.sync_state(R, "v7") is SyncState.SYNCED
    assert protocol.due({R: "v8"}) == [R]


def test_push_order_is_clusters_endpoints_routes() -> None:
    protocol = StreamProtocol()
    for type_url in reversed(types.PUSH_ORDER):
        protocol.on_request(type_url=type_url, version="", nonce="", error=None, now=0)
    assert protocol.due(dict.fromkeys(types.PUSH_ORDER, "x")) == list(types.PUSH_ORDER)


def test_unknown_type_is_ignored() -> None:
    outcome = StreamProtocol().on_request(type_url="nope", version="", nonce="", error=None, now=0)
    assert isinstance(outcome, Ignored)
