"""The local registry: registrations, persistence and expiry of restored entries."""

import asyncio
import json
from dataclasses import replace
from pathlib import Path

from controlplane.sources.registry import LocalRegistry, Registration, RegistrySource
from controlplane.store import Store

CATALOG = "catalog.default.svc.cluster.local"


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


def test_a_slow_reconnect_herd_keeps_restored_endpoints_until_it_is_over() -> None:
    """Expiry waits `grace` after the last restored sidecar came back, not after the restart."""
    old = LocalRegistry()
    for n in range(5):
        old.connect(f"n{n}", (reg(f"n{n}", n),))
    registry = LocalRegistry(grace=10, max_wait=100)
    registry.restore(old.dump(), now=0)
    for n in range(4):  # one sidecar every 8 s: longer than the grace in total
        assert registry.connect(f"n{n}", (reg(f"n{n}", n),), now=8.0 * (n + 1)) == set()
        assert registry.expire(now=8.0 * (n + 1) + 9) == set()
    assert registry.expire(now=42) == {("default", "catalog")}  # n4 never came back
    assert len(registry.services()["catalog.default.svc.cluster.local"].endpoints) == 4


def test_restored_entries_expire_by_max_wait_even_while_a_herd_trickles_in() -> None:
    old = LocalRegistry()
    for n in range(50):
        old.connect(f"n{n}", (reg(f"n{n}", n),))
    registry = LocalRegistry(grace=10, max_wait=30)
    registry.restore(old.dump(), now=0)
    for n in range(40):
        registry.connect(f"n{n}", (reg(f"n{n}", n),), now=float(n))
    assert registry.expire(now=29) == set()
    assert registry.expire(now=30) == {("default", "catalog")}


async def test_a_registration_is_served_only_once_it_is_on_disk(tmp_path: Path) -> None:
    """A control plane killed right after serving an endpoint must find it on disk when back."""
    state = tmp_path / "registry.json"
    store = Store()
    seen_on_disk: list[int] = []
    # Whenever the store learns of an endpoint, the file already holds it.
    store.subscribe(lambda change: seen_on_disk.append(len(json.loads(state.read_text()))))
    source = RegistrySource(LocalRegistry(), store, state, persist_interval=60.0)
    stop = asyncio.Event()
    writer = asyncio.create_task(source.run(stop))
    await asyncio.wait_for(source.connect("a", (reg("a", 1),)), timeout=10)
    await asyncio.wait_for(source.connect("b", (reg("b", 2),)), timeout=10)
    assert seen_on_disk == [1, 2]
    # A reconnect with the same registrations changes nothing and waits for no write.
    await asyncio.wait_for(source.connect("a", (reg("a", 1),)), timeout=10)
    assert seen_on_disk == [1, 2]
    restarted = LocalRegistry()
    restarted.restore(json.loads(state.read_text()), now=0.0)
    assert {e.port for e in restarted.services()[CATALOG].endpoints} == {1, 2}
    stop.set()
    await writer


async def test_a_stopped_writer_releases_streams_waiting_for_it(tmp_path: Path) -> None:
    source = RegistrySource(LocalRegistry(), Store(), tmp_path / "registry.json")
    stop = asyncio.Event()
    stop.set()
    await source.run(stop)  # the writer is gone (shutdown): nobody may hang on it
    await asyncio.wait_for(source.connect("a", (reg("a", 1),)), timeout=10)
