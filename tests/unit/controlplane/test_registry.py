"""The local registry: registrations, persistence and expiry of restored entries."""

from dataclasses import replace

from controlplane.sources.registry import LocalRegistry, Registration


def reg(node: str, port: int, version: str = "v1") -> Registration:
    return Registration(
        node_id=node, workload=node, namespace="default", service="catalog",
        address="127.0.0.1", port=port, labels=(("version", version),),
    )  # fmt: skip


def test_connect_and_disconnect_change_endpoints() -> None:
    registry = LocalRegistry()
    assert registry.connect("a", (reg("a", 1),))
    assert not registry.connect("a", (reg("a", 1),))
    assert registry.connect("b", (reg("b", 2, "v2"),))
    service = registry.services()["catalog.default.svc.cluster.local"]
    assert [(e.port, e.labels) for e in service.endpoints] == [
        (1, (("version", "v1"),)),
        (2, (("version", "v2"),)),
    ]
    assert registry.disconnect("a")
    assert [e.port for e in registry.services()["catalog.default.svc.cluster.local"].endpoints] == [
        2
    ]


def test_restored_entries_expire_unless_their_sidecar_reconnects() -> None:
    old = LocalRegistry()
    old.connect("a", (reg("a", 1),))
    old.connect("b", (reg("b", 2),))
    registry = LocalRegistry(grace=10)
    registry.restore(old.dump(), now=100)
    assert len(registry.services()["catalog.default.svc.cluster.local"].endpoints) == 2
    registry.connect("a", (reg("a", 1),))
    assert not registry.expire(now=109)
    assert registry.expire(now=110)
    assert [e.port for e in registry.services()["catalog.default.svc.cluster.local"].endpoints] == [
        1
    ]


def test_endpoints_keep_their_sidecars_service_account_across_a_restore() -> None:
    old = LocalRegistry()
    old.connect("a", (replace(reg("a", 1), service_account="catalog"),))
    registry = LocalRegistry()
    # A state file of an older version has no account: "default", as a sidecar without one.
    registry.restore([{k: v for k, v in old.dump()[0].items() if k != "service_account"}], now=0)
    (endpoint,) = registry.services()["catalog.default.svc.cluster.local"].endpoints
    assert endpoint.service_account == "default"
    registry = LocalRegistry()
    registry.restore(old.dump(), now=0)
    (endpoint,) = registry.services()["catalog.default.svc.cluster.local"].endpoints
    assert endpoint.service_account == "catalog"
