"""Control-plane metrics read from the store at scrape time: resources by kind and validity."""

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.metrics import ControlPlaneMetrics
from controlplane.model import ResourceKey, VirtualService
from controlplane.store import Store
from controlplane.validate import Problem


def samples(metrics: ControlPlaneMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_resources_by_kind_and_validity_and_watch_restarts() -> None:
    store = Store()
    key = ResourceKey("VirtualService", "default", "catalog")
    store.update(
        "files", {key: VirtualService(key=key, hosts=("catalog.default.svc.cluster.local",))}, at=0
    )
    store.set_problems(
        "files",
        "dir",
        (
            Problem(origin="a.yaml", resource="VirtualService default/bad", path="spec.http",
                    message="x"),
            Problem(origin="a.yaml", resource="VirtualService default/bad", path="spec.hosts",
                    message="y"),
            Problem(origin="b.yaml", resource="DestinationRule shop/reviews", path="spec",
                    message="z"),
            # A warning: the resource is served, not counted invalid.
            Problem(origin="c.yaml", resource="VirtualService default/early", path="spec.http",
                    message="subset not defined yet", severity="warning"),
        ),
    )  # fmt: skip
    restarts = {("Pod", "expired"): 2}
    metrics = ControlPlaneMetrics.create()
    metrics.observe_store(store, watch_restarts=lambda: restarts)
    got = samples(metrics)

    def resources(kind: str, valid: str) -> float:
        return got[("lightmesh_controlplane_resources", (("kind", kind), ("valid", valid)))]

    assert resources("VirtualService", "true") == 1
    assert resources("VirtualService", "false") == 1  # one resource, two problems
    assert resources("DestinationRule", "true") == 0
    assert resources("DestinationRule", "false") == 1
    key_restarts = (("kind", "Pod"), ("reason", "expired"))
    assert got[("lightmesh_controlplane_watch_restarts_total", key_restarts)] == 2
    # Each series once (a duplicate would make the exposition invalid).
    text = generate_latest(metrics.registry).decode()
    series = [line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")]
    assert len(series) == len(set(series))
