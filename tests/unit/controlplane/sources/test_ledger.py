"""The ledger both sources share: last known good, references re-checked only where they can
change, deletions."""

from controlplane.model import ResourceKey
from controlplane.sources.ledger import REJECTED, Ledger
from controlplane.validate import parse_document

DR = {"apiVersion": "lightmesh.io/v1alpha1", "kind": "DestinationRule",
      "metadata": {"name": "catalog", "namespace": "shop"},
      "spec": {"host": "catalog", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}}  # fmt: skip
VS = {"apiVersion": "lightmesh.io/v1alpha1", "kind": "VirtualService",
      "metadata": {"name": "catalog", "namespace": "shop"},
      "spec": {"hosts": ["catalog"], "http": [{"route": [{"destination": {"host": "catalog", "subset": "v1"}}]}]}}  # fmt: skip
DR_KEY = ResourceKey("DestinationRule", "shop", "catalog")
VS_KEY = ResourceKey("VirtualService", "shop", "catalog")


def submit(ledger: Ledger, doc: dict[str, object]) -> None:
    parsed = parse_document(doc, origin="f.yaml")
    assert parsed.key is not None
    ledger.submit(parsed.key, parsed, origin="f.yaml")


def test_a_route_to_an_undefined_subset_serves_with_a_warning_until_the_rule_arrives() -> None:
    ledger = Ledger()
    submit(ledger, VS)
    committed = ledger.commit()
    assert set(committed.served) == {VS_KEY}  # served; subset v1 answers 503 NC for now
    (warning,) = ledger.problems()
    assert warning.severity == "warning" and "not defined by a DestinationRule" in warning.message
    submit(ledger, DR)
    committed = ledger.commit()  # the rule arrives: the VirtualService is re-checked
    assert set(committed.served) == {DR_KEY}
    assert VS_KEY in committed.evaluated
    assert ledger.problems() == ()
    bad = {**VS, "spec": {"hosts": ["catalog"], "http": [{"route": []}]}}
    submit(ledger, bad)
    committed = ledger.commit()
    assert committed.served == {}  # invalid: the last good version keeps serving
    assert [p.message for p in ledger.problems()][-1] == REJECTED
    ledger.submit(VS_KEY, None, origin="f.yaml")
    assert ledger.commit().served == {VS_KEY: None}


def test_commit_evaluates_only_what_the_submission_can_affect() -> None:
    ledger = Ledger()
    submit(ledger, DR)
    submit(ledger, VS)
    ledger.commit()
    other = {**DR, "metadata": {"name": "other", "namespace": "shop"}, "spec": {"host": "other"}}
    submit(ledger, other)
    assert ledger.commit().evaluated == {ResourceKey("DestinationRule", "shop", "other")}
    submit(
        ledger,
        {**DR, "spec": {**DR["spec"], "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}},
    )  # type: ignore[dict-item]
    assert ledger.commit().evaluated == {DR_KEY, VS_KEY}  # catalog's subsets: its router re-checked


LIMIT = {"apiVersion": "lightmesh.io/v1alpha1", "kind": "HTTPLocalRateLimitPolicy",
         "metadata": {"name": "limit", "namespace": "shop"},
         "spec": {"targetRef": {"kind": "Deployment", "name": "catalog"},
                  "routes": [{"name": "search", "total": {"requestsPerSecond": 1}}]}}  # fmt: skip
LIMIT_KEY = ResourceKey("HTTPLocalRateLimitPolicy", "shop", "limit")


def test_a_rate_limit_naming_an_unknown_route_serves_with_a_warning_until_it_exists() -> None:
    ledger = Ledger()
    submit(ledger, LIMIT)
    assert set(ledger.commit().served) == {LIMIT_KEY}
    (warning,) = ledger.problems()
    assert (warning.severity, warning.path) == ("warning", "spec.routes[0].name")
    assert "route 'search' is not the name of any VirtualService http route" in warning.message
    named = {"name": "search", "route": [{"destination": {"host": "catalog"}}]}
    submit(ledger, {**VS, "spec": {"hosts": ["catalog"], "http": [named]}})
    committed = ledger.commit()  # the VirtualService arrives: the policy is re-checked
    assert LIMIT_KEY in committed.evaluated
    assert ledger.problems() == ()
    ledger.submit(VS_KEY, None, origin="f.yaml")
    ledger.commit()
    assert [p.path for p in ledger.problems()] == ["spec.routes[0].name"]
