"""examples/scoping/: every file validates, and narrows what sidecars receive as it says; the
validation of exportTo and Sidecar names the resource and the field."""

from pathlib import Path

from controlplane.model import Service, ServiceEndpoint
from controlplane.sources.files import FileSet, read_directory
from controlplane.sources.kube_index import KubeIndex
from controlplane.store import Store
from controlplane.translate import translate
from controlplane.validate import parse_document
from controlplane.world import NodeInfo, service_key
from lightmesh import types
from lightmesh.v1 import config_pb2 as pb

ROOT = Path(__file__).resolve().parents[4] / "examples"


def world_with_examples() -> Store:
    resources, problems = FileSet().load(read_directory(ROOT / "scoping"))
    assert problems == ()
    store = Store()
    store.update("files", resources, at=0)  # type: ignore[arg-type]
    services = [
        Service(name=name, namespace=ns, endpoints=(
            ServiceEndpoint(address="127.0.0.1", port=1, workload=name, labels=(("version", "v1"),)),
            ServiceEndpoint(address="127.0.0.1", port=2, workload=name, labels=(("version", "v2"),)),
        ))
        for name, ns in (("catalog", "inventory"), ("web", "shop"), ("orders", "shop"),
                         ("audit", "platform"), ("other", "elsewhere"))
    ]  # fmt: skip
    store.update("registry", {service_key(s): s for s in services}, at=0)
    return store


def hosts(store: Store, namespace: str, **labels: str) -> list[str]:
    node = NodeInfo(id="n", workload="n", namespace=namespace, labels=tuple(labels.items()))
    return [
        v.name.split(".svc")[0]
        for v in translate(store.world, node)[types.ROUTES]
        if isinstance(v, pb.VirtualHost)
    ]


def test_scoping_examples_narrow_what_each_sidecar_receives() -> None:
    store = world_with_examples()
    assert hosts(store, "shop") == ["catalog.inventory", "orders.shop", "web.shop"]
    assert hosts(store, "shop", app="frontend") == ["catalog.inventory"]
    assert hosts(store, "elsewhere") == ["audit.platform", "other.elsewhere"]  # mesh default


def test_a_namespace_private_virtual_service_applies_only_in_its_namespace() -> None:
    store = world_with_examples()

    def routes(namespace: str) -> list[str]:
        node = NodeInfo(id="n", workload="n", namespace=namespace)
        (vhost,) = [
            v for v in translate(store.world, node)[types.ROUTES]
            if isinstance(v, pb.VirtualHost) and v.name.startswith("catalog.")
        ]  # fmt: skip
        return [c.cluster for c in vhost.routes[0].clusters]

    assert routes("inventory") == [
        "outbound|v2|catalog.inventory.svc.cluster.local",
        "outbound|v1|catalog.inventory.svc.cluster.local",
    ]
    assert routes("shop") == ["outbound||catalog.inventory.svc.cluster.local"]


def test_service_export_to_annotation_and_its_problems() -> None:
    index = KubeIndex()
    import yaml

    (service,) = yaml.safe_load_all((ROOT / "kubernetes/exported-service.yaml").read_text())
    index.replace("Service", [service])
    assert index.services()["ledger.billing.svc.cluster.local"].export_to == (".", "shop")
    changed = {**service, "metadata": {**service["metadata"], "annotations": {
        "networking.istio.io/exportTo": "*,shop"}}}  # fmt: skip
    index.replace("Service", [changed])
    (problem,) = index.problems()
    assert problem.resource == "Service billing/ledger"
    assert problem.path == "metadata.annotations[networking.istio.io/exportTo]"
    assert "'*' exports to every namespace" in problem.message


def test_invalid_export_to_and_sidecar_hosts_name_the_field() -> None:
    def problems(kind: str, spec: dict[str, object]) -> list[str]:
        doc = {"apiVersion": "lightmesh.io/v1alpha1", "kind": kind,
               "metadata": {"name": "x", "namespace": "shop"}, "spec": spec}  # fmt: skip
        return [f"{p.path}: {p.message}" for p in parse_document(doc, origin="f").problems]

    assert problems("VirtualService", {"hosts": ["a"], "exportTo": ["Bad_NS"]}) == [
        "spec.exportTo[0]: 'Bad_NS' is not '.', '*' or a namespace name"
    ]
    assert problems("DestinationRule", {"host": "a", "exportTo": [".", "."]}) == [
        "spec.exportTo[1]: '.' is listed twice"
    ]
    assert problems("Sidecar", {"egress": [{"hosts": ["catalog"]}]}) == [
        "spec.egress[0].hosts[0]: 'catalog' must be 'namespace/host' (e.g. './*', '*/catalog.shop')"
    ]
    assert problems("Sidecar", {"egress": []}) == [
        "spec.egress: at least one egress entry is required"
    ]
    assert problems("Sidecar", {"egress": [{"hosts": ["./*"]}], "outboundTrafficPolicy": {}}) == [
        "spec.outboundTrafficPolicy: unknown field (known fields: egress, workloadSelector)"
    ]
