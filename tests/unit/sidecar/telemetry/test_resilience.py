"""Resilience counters read at scrape time: retries, overflows, ejections, mirror copies."""

from prometheus_client.parser import text_string_to_metric_families

from sidecar.contract import Forward
from sidecar.routing.router import OutboundRouter
from sidecar.telemetry.exposition import Registry, render_text
from sidecar.telemetry.resilience import ResilienceCollector
from sidecar.upstream.mirror import Mirrors
from tests.unit.sidecar.routing.test_router import CLUSTER, dataplane, head


def scrape(collector: ResilienceCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = Registry()
    registry.register(collector)
    text = render_text(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_retries_and_mirror_outcomes_are_exposed() -> None:
    plane = dataplane(1, 2)
    router = OutboundRouter(plane)
    first = router.resolve(head())
    assert isinstance(first, Forward)
    assert router.retry_target(first, tried=["127.0.0.1:1"], now=0.0) is not None
    plane.clusters[CLUSTER].retries_refused = 4
    mirrors = Mirrors()
    mirrors.dropped = 2
    values = scrape(ResilienceCollector(clusters=lambda: plane.clusters, mirrors=mirrors))
    service = plane.clusters[CLUSTER].service or CLUSTER
    labels = (("destination_service", service), ("destination_subset", ""))
    assert values[("lightmesh_upstream_retries_total", (*labels, ("outcome", "retried")))] == 1
    refused = ("lightmesh_upstream_retries_total", (*labels, ("outcome", "budget_exhausted")))
    assert values[refused] == 4
    assert values[("lightmesh_upstream_overflows_total", labels)] == 0
    assert values[("lightmesh_mirror_requests_total", (("outcome", "dropped"),))] == 2
    assert values[("lightmesh_mirror_requests_total", (("outcome", "sent"),))] == 0
