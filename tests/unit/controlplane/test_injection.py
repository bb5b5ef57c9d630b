"""The injection template, the admission review and offline injection of workload manifests."""

import base64
import copy
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.ca import CertificateAuthority, new_root
from controlplane.injection.patch import diff
from controlplane.injection.review import review
from controlplane.injection.template import (
    ROOT_ANNOTATION,
    InjectionConfig,
    InjectionError,
    decide,
    inject,
)
from controlplane.injection.webhook import MAX_OTHER_ROOTS, ca_bundle_patch, merged_bundle
from controlplane.injection.workloads import inject_document

CONFIG = InjectionConfig(image="registry.example/lightmesh-proxy:1", control_plane="cp:15010")


def pod(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "catalog-1",
            "labels": {"app": "catalog", "version": "v2"},
            "annotations": annotations or {},
        },
        "spec": {
            "containers": [
                {"name": "app", "image": "catalog:1", "ports": [{"containerPort": 8080}]}
            ],
            **spec,
        },
    }


# --- which pods -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespace_enabled", "annotation", "injected"),
    [
        (True, None, True),
        (True, "false", False),
        (True, "true", True),
        (False, None, False),
        (False, "true", True),
        (False, "false", False),
        (True, "False", False),  # annotation values are case-insensitive
    ],
)
def test_namespace_label_and_pod_annotation_decide(
    namespace_enabled: bool, annotation: str | None, injected: bool
) -> None:
    annotations = {"lightmesh.io/inject": annotation} if annotation is not None else {}
    assert decide(pod(annotations), namespace_enabled=namespace_enabled).inject is injected


def test_unknown_annotation_value_follows_the_namespace_with_a_warning() -> None:
    decision = decide(pod({"lightmesh.io/inject": "yes"}), namespace_enabled=True)
    assert decision.inject
    assert "'yes' is neither" in decision.warnings[0]


def test_injected_and_host_network_pods_are_left_alone() -> None:
    assert decide(inject(pod(), CONFIG), namespace_enabled=True).reason == "already injected"
    assert not decide(pod(hostNetwork=True), namespace_enabled=True).inject


# --- what is added ----------------------------------------------------------------------------


def test_proxy_goes_first_and_the_init_step_last() -> None:
    original = pod(initContainers=[{"name": "migrate", "image": "m:1"}])
    injected = inject(original, CONFIG)
    spec = injected["spec"]
    assert [c["name"] for c in spec["containers"]] == ["lightmesh-proxy", "app"]
    # After the app's own init containers, which keep working without a running proxy.
    assert [c["name"] for c in spec["initContainers"]] == ["migrate", "lightmesh-init"]
    assert spec["serviceAccountName"] == "default"
    assert original == pod(initContainers=[{"name": "migrate", "image": "m:1"}])  # not mutated


def test_proxy_waits_for_ready_before_the_app_starts_and_runs_unprivileged() -> None:
    proxy = inject(pod(), CONFIG)["spec"]["containers"][0]
    assert proxy["image"] == "registry.example/lightmesh-proxy:1"
    assert proxy["lifecycle"]["postStart"]["exec"]["command"][:2] == ["lightmesh", "wait-ready"]
    # The kubelet probes the metrics port; the admin port (loopback) serves the postStart hook.
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 15020}
    command = proxy["lifecycle"]["postStart"]["exec"]["command"]
    assert command[command.index("--url") + 1] == "http://127.0.0.1:15000/ready"
    assert proxy["ports"] == [{"name": "lm-metrics", "containerPort": 15020, "protocol": "TCP"}]
    assert proxy["securityContext"]["runAsUser"] == 1337
    assert proxy["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in proxy["env"]}
    assert env["LIGHTMESH_WORKLOAD"] == "catalog"
    assert env["LIGHTMESH_LABELS"] == "app=catalog,version=v2"
    assert env["LIGHTMESH_APP_PORT"] == "8080"
    assert env["LIGHTMESH_CONTROL_PLANE"] == "cp:15010"
    assert (env["LIGHTMESH_ADMIN_PORT"], env["LIGHTMESH_METRICS_PORT"]) == ("15000", "15020")
    assert env["LIGHTMESH_SERVICE_ACCOUNT"] == {
        "fieldRef": {"fieldPath": "spec.serviceAccountName"}
    }


def test_workload_name_falls_back_to_the_pod_name() -> None:
    unlabelled = pod()
    unlabelled["metadata"]["labels"] = {}
    proxy = inject(unlabelled, CONFIG)["spec"]["containers"][0]
    workload = next(e for e in proxy["env"] if e["name"] == "LIGHTMESH_WORKLOAD")
    assert workload["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_exclusion_annotations_reach_the_init_step() -> None:
    annotations = {
        "lightmesh.io/exclude-inbound-ports": "9090",
        "lightmesh.io/exclude-outbound-ports": "5432, 443",
        "lightmesh.io/exclude-outbound-cidrs": "169.254.169.254",
    }
    init = inject(pod(annotations), CONFIG)["spec"]["initContainers"][-1]
    args = init["args"]
    assert args[args.index("--exclude-inbound-ports") + 1] == "15000,15020,9090"
    assert args[args.index("--exclude-outbound-ports") + 1] == "53,5432,443"
    assert args[args.index("--exclude-outbound-cidrs") + 1] == "169.254.169.254/32"
    assert init["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]


def test_malformed_exclusion_is_an_error_naming_the_annotation() -> None:
    with pytest.raises(
        InjectionError, match=r'"lightmesh.io/exclude-outbound-cidrs"\]: \'10.0.0\''
    ):
        inject(pod({"lightmesh.io/exclude-outbound-cidrs": "10.0.0"}), CONFIG)


def test_apps_own_scrape_annotations_are_kept() -> None:
    mine = {"prometheus.io/scrape": "true", "prometheus.io/port": "9102"}
    annotations = inject(pod(mine), CONFIG)["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9102"
    fresh = inject(pod(), CONFIG)["metadata"]["annotations"]
    assert (fresh["prometheus.io/scrape"], fresh["prometheus.io/port"]) == ("true", "15020")
    assert fresh["kubectl.kubernetes.io/default-container"] == "app"


def test_proxy_reads_the_trust_root_from_an_annotation_through_the_downward_api() -> None:
    rooted = InjectionConfig(trust_root="-----BEGIN CERTIFICATE-----\nMII\n")
    injected = inject(pod(), rooted)
    assert injected["metadata"]["annotations"][ROOT_ANNOTATION] == rooted.trust_root
    volume = next(v for v in injected["spec"]["volumes"] if v["name"] == "lightmesh-ca")
    assert volume["downwardAPI"]["items"] == [
        {
            "path": "root.pem",
            "fieldRef": {"fieldPath": f"metadata.annotations['{ROOT_ANNOTATION}']"},
        }
    ]
    proxy = injected["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert env["LIGHTMESH_CA_BUNDLE"] == "/var/run/secrets/lightmesh/ca/root.pem"
    mounts = {m["name"]: m["mountPath"] for m in proxy["volumeMounts"]}
    assert mounts["lightmesh-ca"] == "/var/run/secrets/lightmesh/ca"
    # The key lives in memory, writable although the root filesystem is read-only.
    assert mounts["lightmesh-identity"] == env["LIGHTMESH_IDENTITY_DIR"]
    assert ROOT_ANNOTATION not in inject(pod(), CONFIG)["metadata"]["annotations"]


# --- the admission review ---------------------------------------------------------------------


def admission(obj: Any, **request: Any) -> bytes:
    body = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": obj,
            **request,
        },
    }
    return json.dumps(body).encode()


def apply_patch(document: Any, operations: list[dict[str, Any]]) -> Any:
    """A small RFC 6902 applier (add/remove by JSON pointer), independent of patch.py."""
    document = copy.deepcopy(document)
    for operation in operations:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]
        ]
        target = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if operation["op"] == "add":
            target[last] = operation["value"]
        elif operation["op"] == "remove":
            del target[last]
        else:
            raise AssertionError(operation)
    return document


def test_review_answers_with_a_patch_that_produces_the_template_output() -> None:
    outcome = review(admission(pod()), namespace_enabled=True, config=CONFIG)
    response = outcome.answer["response"]
    assert outcome.answer["apiVersion"] == "admission.k8s.io/v1"
    assert (response["uid"], response["allowed"], response["patchType"]) == (
        "u-1",
        True,
        "JSONPatch",
    )
    operations = json.loads(base64.b64decode(response["patch"]))
    assert apply_patch(pod(), operations) == inject(pod(), CONFIG)
    assert (outcome.namespace, outcome.pod) == ("shop", "catalog-1")


def test_review_fills_the_trust_root_of_a_pod_injected_offline_and_nothing_else() -> None:
    rooted = dataclasses.replace(CONFIG, trust_root="ROOT")
    offline = inject(pod(), CONFIG)
    outcome = review(admission(offline), namespace_enabled=True, config=rooted)
    operations = json.loads(base64.b64decode(outcome.answer["response"]["patch"]))
    assert [op["path"] for op in operations] == ["/metadata/annotations"]
    assert apply_patch(offline, operations) == inject(pod(), rooted)
    assert outcome.note == "trust root filled: already injected"
    # Injected by the webhook itself: nothing left to do.
    again = review(admission(inject(pod(), rooted)), namespace_enabled=True, config=rooted)
    assert again.answer["response"] == {"uid": "u-1", "allowed": True}


def test_review_of_a_pod_left_alone_has_no_patch() -> None:
    outcome = review(
        admission(pod({"lightmesh.io/inject": "false"})), namespace_enabled=True, config=CONFIG
    )
    assert outcome.answer["response"] == {"uid": "u-1", "allowed": True}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "expected an AdmissionReview"),
        (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1"}', "v1beta1"),
        (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}', "request.uid"),
        (admission("a string"), "request.object is not a pod"),
        (admission(pod({"lightmesh.io/exclude-inbound-ports": "-1"})), "exclude-inbound-ports"),
        (admission({"metadata": {}, "spec": {"containers": []}}), "spec.containers"),
        (admission({"metadata": {"annotations": ["x"]}, "spec": {}}), "not a valid pod"),
        (admission({"metadata": {}, "spec": {"containers": [{"ports": "80"}]}}), "not a valid pod"),
    ],
)
def test_malformed_reviews_are_denied_with_the_reason(body: bytes, message: str) -> None:
    response = review(body, namespace_enabled=True, config=CONFIG).answer["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert message in response["status"]["message"]


def test_review_of_another_kind_is_allowed_untouched() -> None:
    body = admission({}, kind={"group": "apps", "version": "v1", "kind": "Deployment"})
    assert review(body, namespace_enabled=True, config=CONFIG).answer["response"] == {
        "uid": "u-1",
        "allowed": True,
    }


def test_patch_replaces_changed_fields_whole_and_escapes_pointers() -> None:
    before = {"metadata": {"annotations": {"a/b": "1"}, "gone": 1}, "spec": {"x": 1}}
    after = {"metadata": {"annotations": {"a/b": "2"}}, "spec": {"x": 1, "y~": 2}}
    operations = diff(before, after)
    assert operations == [
        {"op": "remove", "path": "/metadata/gone"},
        {"op": "add", "path": "/metadata/annotations", "value": {"a/b": "2"}},
        {"op": "add", "path": "/spec/y~0", "value": 2},
    ]
    assert apply_patch(before, operations) == after


# --- offline injection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("Deployment", ("spec", "template")),
        ("StatefulSet", ("spec", "template")),
        ("DaemonSet", ("spec", "template")),
        ("Job", ("spec", "template")),
        ("CronJob", ("spec", "jobTemplate", "spec", "template")),
    ],
)
def test_workload_pod_templates_get_what_the_webhook_gives_their_pods(
    kind: str, path: tuple[str, ...]
) -> None:
    template: Any = pod()
    document: dict[str, Any] = template
    for key in reversed(path):
        document = {key: document}
    document = {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "w"}, **document}
    injected, note = inject_document(document, CONFIG, where="f.yaml: document 1")
    assert note == f"f.yaml: document 1 ({kind} w): injected"
    found = injected
    for key in path:
        found = found[key]
    assert found == inject(template, CONFIG)


def test_documents_without_pods_and_opted_out_pods_pass_unchanged() -> None:
    service = {"kind": "Service", "metadata": {"name": "catalog"}, "spec": {}}
    assert inject_document(service, CONFIG, where="w")[0] is service
    opted_out = {"kind": "Pod", **pod({"lightmesh.io/inject": "false"})}
    assert inject_document(opted_out, CONFIG, where="w")[0] == opted_out


def test_offline_errors_name_file_document_and_field() -> None:
    bad = {"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"template": pod()}}
    bad["spec"]["template"]["metadata"]["annotations"] = {
        "lightmesh.io/exclude-outbound-ports": "x"
    }
    with pytest.raises(InjectionError) as error:
        inject_document(bad, CONFIG, where="app.yaml: document 3")
    assert str(error.value).startswith(
        'app.yaml: document 3 (Deployment web): spec.template.metadata.annotations["lightmesh.io/'
        "exclude-outbound-ports\"]: 'x' is not a port number"
    )
    missing = {"kind": "Job", "metadata": {"name": "j"}, "spec": {}}
    with pytest.raises(InjectionError, match=r"\(Job j\): spec.template is missing"):
        inject_document(missing, CONFIG, where="w")


# --- caBundle ---------------------------------------------------------------------------------


def roots(count: int) -> list[bytes]:
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    return [
        CertificateAuthority(
            new_root("cluster.local", now=now), trust_domain="cluster.local"
        ).root_pem
        for _ in range(count)
    ]


def test_ca_bundle_gets_our_root_once_and_keeps_a_few_others() -> None:
    ours, *others = roots(MAX_OTHER_ROOTS + 2)
    empty = {"webhooks": [{"clientConfig": {}}, {"clientConfig": {"caBundle": ""}}]}
    patch = ca_bundle_patch(empty, ours)
    assert [op["path"] for op in patch] == [
        "/webhooks/0/clientConfig/caBundle",
        "/webhooks/1/clientConfig/caBundle",
    ]
    assert base64.b64decode(patch[0]["value"]) == ours
    # Already trusted (wherever it sits in the bundle): nothing to do, so replicas never flip it.
    trusted = base64.b64encode(others[0] + ours).decode()
    assert ca_bundle_patch({"webhooks": [{"clientConfig": {"caBundle": trusted}}]}, ours) == []
    # A new root goes first, followed by at most MAX_OTHER_ROOTS of the previous ones.
    crowded = base64.b64encode(b"".join(others)).decode()
    merged = base64.b64decode(merged_bundle(crowded, ours))
    assert merged == ours + b"".join(others[:MAX_OTHER_ROOTS])
    assert base64.b64decode(merged_bundle("!!not base64!!", ours)) == ours


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["metadata", "spec", "annotations", "containers", "name", "ports", "x"]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(obj=_json, enabled=st.booleans())
def test_any_pod_shaped_garbage_gets_an_answer_never_an_exception(obj: Any, enabled: bool) -> None:
    answer = review(admission(obj), namespace_enabled=enabled, config=CONFIG).answer
    assert answer["response"]["uid"] == "u-1"
    assert isinstance(answer["response"]["allowed"], bool)
