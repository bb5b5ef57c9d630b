"""The protocol an inbound sidecar speaks to its app, pushed in its InboundPolicy: from the
Kubernetes Service ports whose endpoints are the workload (appProtocol or port-name prefix,
Istio's rules), or in local mode from what the sidecars register (`--service catalog:grpc`);
and the push stage re-keying a sidecar's inbound view when its Services' protocol changes."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.model import Service, ServiceEndpoint
from controlplane.push.pusher import Pusher
from controlplane.sources.kube_index import KubeIndex
from controlplane.sources.registry import LocalRegistry, Registration
from controlplane.store import Store
from controlplane.translate.inbound import inbound_policy
from controlplane.world import NodeInfo, World, service_key
from lightmesh import types
from lightmesh.protocols import agreed_protocol
from lightmesh.v1 import config_pb2 as pb

NODE = NodeInfo(id="catalog-1.shop", workload="catalog-1", namespace="shop")


@pytest.mark.parametrize(
    ("protocols", "agreed"),
    [
        (["grpc"], "grpc"),
        (["grpc", "tcp"], "grpc"),  # a TCP port aside
        (["http2", "http2"], "http2"),
        (["grpc", "http"], ""),  # one app port cannot be both
        (["grpc", ""], ""),  # one undeclared: the sidecar decides
        (["tcp"], ""),
        ([], ""),
    ],
)
def test_the_protocol_the_ports_agree_on(protocols: list[str], agreed: str) -> None:
    assert agreed_protocol(protocols) == agreed


def _kube_service(name: str, ports: list[dict[str, Any]], workload: str = "catalog-1") -> Service:
    index = KubeIndex()
    index.replace(
        "Service",
        [{"metadata": {"name": name, "namespace": "shop"},
          "spec": {"clusterIP": "10.0.0.9", "ports": ports}}],
    )  # fmt: skip
    service = index.services()[f"{name}.shop.svc.cluster.local"]
    endpoint = ServiceEndpoint(address="10.1.0.1", port=9000, workload=workload)
    return Service(
        name=service.name,
        namespace=service.namespace,
        endpoints=(endpoint,),
        http2=service.http2,
        protocol=service.protocol,
    )


def _world(*services: Service) -> World:
    world = World()
    for service in services:
        world.put(service_key(service), service)
    return world


@pytest.mark.parametrize(
    ("ports", "protocol"),
    [
        ([{"name": "web", "port": 80, "appProtocol": "grpc"}], "grpc"),
        ([{"name": "web", "port": 80, "appProtocol": "kubernetes.io/h2c"}], "http2"),
        ([{"name": "http2-api", "port": 80}], "http2"),
        ([{"name": "grpc-api", "port": 80}, {"name": "tcp-db", "port": 5432}], "grpc"),
        ([{"name": "http", "port": 80}], "http"),
        ([{"name": "web", "port": 80}], ""),
        ([{"name": "grpc", "port": 80}, {"name": "http", "port": 81}], ""),
    ],
)
def test_the_workloads_service_ports_are_pushed_as_its_app_protocol(
    ports: list[dict[str, Any]], protocol: str
) -> None:
    world = _world(_kube_service("catalog", ports))
    assert inbound_policy(world, NODE).app_protocol == protocol
    # Another workload's sidecar, and a gateway of the same name, are told nothing.
    assert (
        inbound_policy(world, NodeInfo(id="x", workload="other", namespace="shop")).app_protocol
        == ""
    )
    gateway = NodeInfo(id="g", workload="catalog-1", namespace="shop", gateway=True)
    assert inbound_policy(world, gateway).app_protocol == ""


def test_two_services_of_one_workload_must_agree() -> None:
    grpc = _kube_service("catalog", [{"name": "grpc", "port": 80}])
    also = _kube_service("catalog-internal", [{"name": "web", "port": 80, "appProtocol": "grpc"}])
    assert inbound_policy(_world(grpc, also), NODE).app_protocol == "grpc"
    web = _kube_service("catalog-web", [{"name": "http", "port": 80}])
    assert inbound_policy(_world(grpc, web), NODE).app_protocol == ""
    undeclared = _kube_service("catalog-any", [{"name": "web", "port": 80}])
    assert inbound_policy(_world(grpc, undeclared), NODE).app_protocol == ""


def _registration(node: str, protocol: str) -> Registration:
    return Registration(node_id=node, workload=node, namespace="shop", service="catalog",
                        address="127.0.0.1", port=1, app_protocol=protocol)  # fmt: skip


def test_local_registrations_declare_the_services_protocol() -> None:
    registry = LocalRegistry()
    registry.connect("catalog-1", (_registration("catalog-1", "grpc"),))
    service = registry.services()["catalog.shop.svc.cluster.local"]
    assert (service.protocol, service.http2) == ("grpc", True)
    assert inbound_policy(_world(service), NODE).app_protocol == "grpc"
    # An instance that declares nothing (mid-rollout) leaves the service undeclared.
    registry.connect("catalog-2", (_registration("catalog-2", ""),))
    service = registry.services()["catalog.shop.svc.cluster.local"]
    assert (service.protocol, service.http2) == ("", False)
    # Persisted and restored with the rest of the registration.
    restored = LocalRegistry()
    restored.restore(registry.dump(), now=0.0)
    assert restored.services() == registry.services()


async def test_a_service_change_rekeys_the_sidecars_of_its_workloads() -> None:
    store = Store()
    undeclared = _kube_service("catalog", [{"name": "web", "port": 80}])
    store.update("test", {service_key(undeclared): undeclared}, at=0)
    pusher = Pusher(store)
    conn = await pusher.open(NODE)
    other = await pusher.open(NodeInfo(id="o", workload="other", namespace="shop"))
    assert conn.inbound.key.app_protocol == "" and conn.inbound is other.inbound

    def pushed() -> str:
        resource = conn.inbound.set.current.resources[types.INBOUND_NAME]
        message = pb.InboundPolicy()
        resource.decode().Unpack(message)
        return message.app_protocol

    declared = _kube_service("catalog", [{"name": "web", "port": 80, "appProtocol": "grpc"}])
    change = store.update("test", {service_key(declared): declared}, at=1)
    assert change is not None
    await pusher.flush(change)
    assert conn.inbound.key.app_protocol == "grpc" and pushed() == "grpc"
    assert conn.wake.is_set() and other.inbound.key.app_protocol == ""
    conn.wake.clear()
    change = store.update("test", {service_key(declared): None}, at=2)
    assert change is not None
    await pusher.flush(change)
    assert conn.inbound.key.app_protocol == "" and conn.wake.is_set()
    assert conn.inbound is other.inbound
