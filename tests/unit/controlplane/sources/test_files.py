"""The directory source's pure part: last-known-good per resource and per file."""

from controlplane.model import ResourceKey
from controlplane.sources.files import FileSet

GOOD = """
apiVersion: lightmesh.io/v1alpha1
kind: VirtualService
metadata: {name: catalog}
spec:
  hosts: [catalog]
  http:
    - route: [{destination: {host: catalog}}]
"""
KEY = ResourceKey("VirtualService", "default", "catalog")


def test_invalid_edit_keeps_last_accepted_version() -> None:
    files = FileSet()
    accepted, problems = files.load({"vs.yaml": GOOD})
    assert problems == () and KEY in accepted
    first = accepted[KEY]
    accepted, problems = files.load(
        {"vs.yaml": GOOD.replace("{host: catalog}", "{host: catalog, x: 1}")}
    )
    assert accepted[KEY] is first
    texts = [str(p) for p in problems]
    assert any("spec.http[0].route[0].destination.x: unknown field" in t for t in texts)
    assert any(t.endswith("rejected; the last accepted version keeps serving") for t in texts)


def test_yaml_syntax_error_keeps_every_resource_of_the_file() -> None:
    files = FileSet()
    files.load({"vs.yaml": GOOD})
    accepted, problems = files.load({"vs.yaml": GOOD + "\n  : : ["})
    assert KEY in accepted
    assert "YAML syntax error, file ignored (1 resources" in str(problems[0])


def test_new_invalid_resource_is_rejected_outright() -> None:
    accepted, problems = FileSet().load({"vs.yaml": GOOD.replace("hosts: [catalog]", "hosts: []")})
    assert accepted == {}
    assert str(problems[0]).endswith("spec.hosts: at least one host is required")


def test_deleted_file_removes_its_resources() -> None:
    files = FileSet()
    files.load({"vs.yaml": GOOD})
    accepted, _ = files.load({})
    assert accepted == {}


def test_duplicate_resource_in_two_files_first_wins() -> None:
    accepted, problems = FileSet().load({"a.yaml": GOOD, "b.yaml": GOOD})
    assert list(accepted) == [KEY]
    assert "b.yaml: VirtualService default/catalog: metadata.name: also defined in a.yaml" in str(
        problems[0]
    )


RULE = """
apiVersion: lightmesh.io/v1alpha1
kind: DestinationRule
metadata: {name: catalog}
spec: {host: catalog, subsets: [{name: v1, labels: {version: v1}}]}
"""


def test_route_to_an_undefined_subset_is_served_with_a_warning_until_its_rule_defines_it() -> None:
    """As Istio: any apply order works; the route answers 503 NC until the subset exists."""
    files = FileSet()
    to_v3 = GOOD.replace("{host: catalog}", "{host: catalog, subset: v3}")
    accepted, problems = files.load({"vs.yaml": to_v3})  # new, and its rule not there yet
    assert accepted[KEY].http[0].destinations[0].subset == "v3"  # type: ignore[union-attr]
    (warning,) = problems
    assert warning.severity == "warning"
    assert str(warning) == (
        "vs.yaml: VirtualService default/catalog: spec.http[0].route[0].destination.subset: "
        "warning: subset 'v3' of catalog.default.svc.cluster.local is not defined by a "
        "DestinationRule (yet): its requests answer 503 (flag NC) until one defines it"
    )
    rule = RULE.replace("{name: v1, labels: {version: v1}}", "{name: v3, labels: {version: v3}}")
    accepted, problems = files.load({"vs.yaml": to_v3, "dr.yaml": rule})
    assert problems == ()
    assert KEY in accepted
