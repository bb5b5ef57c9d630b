"""The injection template: which pods get a sidecar, and what is added to them. Pure.

The one place that knows what an injected pod looks like. The admission webhook turns its result
into a JSONPatch (`patch.py`); `lightmesh inject` writes it into the workload's pod template. A
pod object here is the plain JSON/YAML mapping (`{"metadata": ..., "spec": ...}`).

Start-up and shutdown ordering, without native-sidecar support from the cluster:
- the init container installs the redirect rules before any app container runs;
- the proxy is the first container and its postStart hook waits for its /ready, and the kubelet
  starts the next container only once that hook returns: the app never runs before its proxy
  (hold-application-until-proxy-starts);
- a Job's app ends by POSTing /quitquitquit to the admin port (127.0.0.1 only), so the proxy
  drains and exits and the pod completes;
- the kubelet's readiness probe and Prometheus reach the metrics port, which serves /ready,
  /healthz and /metrics and nothing else; the admin port listens on loopback only;
- on SIGTERM the proxy keeps serving for `drain_delay` seconds before it drains: the kubelet
  signals every container at once while the pod's endpoint is still being taken out of the other
  sidecars' endpoint lists, so a proxy that stopped at once would fail their requests in flight
  to it (a rolling update under traffic in tests/cluster saw 61 of 905 fail with a 502).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from lightmesh.intercept import (
    ADMIN_PORT,
    INBOUND_PORT,
    METRICS_PORT,
    OUTBOUND_PORT,
    PROXY_UID,
    parse_cidrs,
    parse_ports,
)

NAMESPACE_LABEL = "lightmesh-injection"  # value "enabled"
INJECT_ANNOTATION = "lightmesh.io/inject"  # "true" | "false"
STATUS_ANNOTATION = "lightmesh.io/status"  # set to "injected" on injected pods
EXCLUDE_INBOUND_PORTS = "lightmesh.io/exclude-inbound-ports"
EXCLUDE_OUTBOUND_PORTS = "lightmesh.io/exclude-outbound-ports"
EXCLUDE_OUTBOUND_CIDRS = "lightmesh.io/exclude-outbound-cidrs"
# The mesh's root certificate (PEM), which the proxy reads through a downward-API volume to
# verify the control plane. The webhook (which holds the CA) writes it at pod creation.
ROOT_ANNOTATION = "lightmesh.io/ca-root"

DNS_PORT = 53

PROXY_CONTAINER = "lightmesh-proxy"
INIT_CONTAINER = "lightmesh-init"
# A projected ServiceAccount token (names, not secrets).
TOKEN_VOLUME = "lightmesh-token"  # noqa: S105
TOKEN_DIR = "/var/run/secrets/lightmesh/tokens"  # noqa: S105
TOKEN_AUDIENCE = "lightmesh"  # noqa: S105
ROOT_VOLUME = "lightmesh-ca"
ROOT_DIR = "/var/run/secrets/lightmesh/ca"
IDENTITY_VOLUME = "lightmesh-identity"  # the proxy's key and certificate, in memory only
IDENTITY_DIR = "/var/run/lightmesh/identity"


class InjectionError(ValueError):
    """The pod asks for something injection cannot honour; the message names the field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InjectionConfig:
    """What the control plane (or `lightmesh inject`) injects with."""

    image: str = "lightmesh-proxy:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    control_plane: str = "lightmesh-controlplane.lightmesh-system.svc:15010"
    proxy_uid: int = PROXY_UID
    admin_port: int = ADMIN_PORT  # loopback only: the postStart hook and `kubectl port-forward`
    metrics_port: int = METRICS_PORT  # /metrics, /ready, /healthz: probes and Prometheus
    inbound_port: int = INBOUND_PORT
    outbound_port: int = OUTBOUND_PORT
    # Seconds the postStart hook waits for the proxy's /ready before the pod start fails.
    ready_timeout: int = 120
    drain_timeout: float = 5.0
    # Seconds the proxy keeps serving after SIGTERM (see the module docstring); with the drain,
    # well inside the default 30 s terminationGracePeriodSeconds.
    drain_delay: float = 5.0
    token_expiration_seconds: int = 3600
    # PEM root(s) written into the pod's ROOT_ANNOTATION; "" leaves that to the webhook.
    trust_root: str = ""
    resources: dict[str, Any] = field(
        default_factory=lambda: {
            "requests": {"cpu": "50m", "memory": "48Mi"},
            "limits": {"memory": "128Mi"},
        }
    )


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to inject, why (for logs and the admission response), and any warnings."""

    inject: bool
    reason: str
    warnings: tuple[str, ...] = ()


def decide(pod: dict[str, Any], *, namespace_enabled: bool) -> Decision:
    """Apply the injection rules to a pod whose namespace is (or is not) labelled for injection.

    The pod annotation wins: "false" opts out of a labelled namespace, "true" opts in from an
    unlabelled one. Host-network pods are never injected: the redirect rules would land in the
    node's own network namespace.
    """
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    spec = pod.get("spec") or {}
    warnings: list[str] = []
    if annotations.get(STATUS_ANNOTATION) == "injected" or any(
        c.get("name") == PROXY_CONTAINER for c in spec.get("containers") or []
    ):
        return Decision(False, "already injected")
    if spec.get("hostNetwork"):
        return Decision(False, "hostNetwork pod: redirect rules would apply to the node")
    value = annotations.get(INJECT_ANNOTATION)
    if value is not None and str(value).lower() not in ("true", "false"):
        warnings.append(
            f'metadata.annotations["{INJECT_ANNOTATION}"]: {value!r} is neither "true" nor '
            f'"false"; ignored'
        )
        value = None
    if value is not None and str(value).lower() == "false":
        return Decision(False, f"{INJECT_ANNOTATION}=false", tuple(warnings))
    if value is not None:
        return Decision(True, f"{INJECT_ANNOTATION}=true", tuple(warnings))
    if namespace_enabled:
        return Decision(True, f"namespace labelled {NAMESPACE_LABEL}=enabled", tuple(warnings))
    return Decision(False, "namespace not labelled for injection", tuple(warnings))


def inject(pod: dict[str, Any], config: InjectionConfig) -> dict[str, Any]:
    """A copy of `pod` with the proxy, the init container, the token volume and annotations.

    Raises InjectionError when an annotation is malformed (naming it). The caller decides
    whether to inject (`decide`); this function always does.
    """
    pod = copy.deepcopy(pod)
    metadata = pod.setdefault("metadata", {})
    spec = pod.setdefault("spec", {})
    annotations = metadata.get("annotations") or {}
    excluded = _exclusions(annotations, config)
    app_containers = spec.get("containers") or []
    if not app_containers:
        raise InjectionError("spec.containers: the pod has no containers")

    new_annotations = dict(annotations)
    new_annotations[STATUS_ANNOTATION] = "injected"
    # Scrape the proxy unless the app already asked Prometheus to scrape something else.
    if "prometheus.io/scrape" not in annotations:
        new_annotations["prometheus.io/scrape"] = "true"
        new_annotations["prometheus.io/port"] = str(config.metrics_port)
        new_annotations["prometheus.io/path"] = "/metrics"
    if config.trust_root:
        new_annotations[ROOT_ANNOTATION] = config.trust_root
    # `kubectl logs/exec` keep meaning the app, not the proxy that is now first.
    new_annotations.setdefault("kubectl.kubernetes.io/default-container", app_containers[0]["name"])
    metadata["annotations"] = new_annotations

    spec["initContainers"] = [
        *(spec.get("initContainers") or []),
        _init_container(config, excluded),
    ]
    spec["containers"] = [_proxy_container(pod, config), *app_containers]
    spec["volumes"] = [*(spec.get("volumes") or []), *_volumes(config)]
    # A projected token needs a named ServiceAccount. The API server's ServiceAccount admission
    # usually names "default" before webhooks run; a manifest (`lightmesh inject`) or a cluster
    # without that plugin may not, so name it here the same way.
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    return pod


@dataclass(frozen=True, slots=True)
class _Exclusions:
    inbound_ports: tuple[int, ...]
    outbound_ports: tuple[int, ...]
    outbound_cidrs: tuple[str, ...]


def trust_root_update(pod: dict[str, Any], config: InjectionConfig) -> dict[str, Any] | None:
    """An injected pod with the current trust root, or None when there is nothing to update.

    Pods injected offline (`lightmesh inject` without --ca-bundle) reach the API server without
    the root; the webhook fills it in when such a pod is created.
    """
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if annotations.get(STATUS_ANNOTATION) != "injected" or not config.trust_root:
        return None
    if annotations.get(ROOT_ANNOTATION) == config.trust_root:
        return None
    pod = copy.deepcopy(pod)
    pod["metadata"]["annotations"] = {**annotations, ROOT_ANNOTATION: config.trust_root}
    return pod


def _exclusions(annotations: dict[str, Any], config: InjectionConfig) -> _Exclusions:
    def field(name: str) -> str:
        return f'metadata.annotations["{name}"]'

    try:
        inbound = parse_ports(
            str(annotations.get(EXCLUDE_INBOUND_PORTS, "")), field=field(EXCLUDE_INBOUND_PORTS)
        )
        outbound = parse_ports(
            str(annotations.get(EXCLUDE_OUTBOUND_PORTS, "")), field=field(EXCLUDE_OUTBOUND_PORTS)
        )
        cidrs = parse_cidrs(
            str(annotations.get(EXCLUDE_OUTBOUND_CIDRS, "")), field=field(EXCLUDE_OUTBOUND_CIDRS)
        )
    except ValueError as error:
        raise InjectionError(str(error)) from None
    # The metrics port is always reached directly: probes and Prometheus must not need the proxy;
    # so is the admin port, so that a connection to it from outside is refused (it listens on
    # loopback), not redirected to the app.
    # DNS over TCP (port 53, used for large answers) is not HTTP: it always bypasses the proxy.
    own = (config.admin_port, config.metrics_port)
    return _Exclusions(
        (*own, *(p for p in inbound if p not in own)),
        (DNS_PORT, *(p for p in outbound if p != DNS_PORT)),
        cidrs,
    )


def _app_port(pod: dict[str, Any]) -> int:
    """The first TCP port an app container declares: where inbound traffic is delivered."""
    for container in pod["spec"].get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("protocol", "TCP") == "TCP" and port.get("containerPort"):
                return int(port["containerPort"])
    return 0


def _workload_env(pod: dict[str, Any]) -> dict[str, Any]:
    labels = pod["metadata"].get("labels") or {}
    name = labels.get("app.kubernetes.io/name") or labels.get("app")
    if name:
        return {"name": "LIGHTMESH_WORKLOAD", "value": str(name)}
    return {"name": "LIGHTMESH_WORKLOAD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}


def _field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _proxy_container(pod: dict[str, Any], config: InjectionConfig) -> dict[str, Any]:
    labels = pod["metadata"].get("labels") or {}
    admin = config.admin_port
    return {
        "name": PROXY_CONTAINER,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": ["sidecar"],
        "env": [
            _field("LIGHTMESH_POD_NAME", "metadata.name"),
            _field("LIGHTMESH_NAMESPACE", "metadata.namespace"),
            _field("LIGHTMESH_SERVICE_ACCOUNT", "spec.serviceAccountName"),
            _field("LIGHTMESH_ADVERTISE", "status.podIP"),
            _workload_env(pod),
            # The whole label set, as the pod was admitted (the sidecar takes k=v,k2=v2).
            {"name": "LIGHTMESH_LABELS", "value": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))},
            {"name": "LIGHTMESH_CONTROL_PLANE", "value": config.control_plane},
            {"name": "LIGHTMESH_BIND", "value": "0.0.0.0"},  # REDIRECT targets the pod IP
            {"name": "LIGHTMESH_APP_PORT", "value": str(_app_port(pod))},
            {"name": "LIGHTMESH_INBOUND_PORT", "value": str(config.inbound_port)},
            {"name": "LIGHTMESH_OUTBOUND_PORT", "value": str(config.outbound_port)},
            {"name": "LIGHTMESH_ADMIN_PORT", "value": str(admin)},
            {"name": "LIGHTMESH_METRICS_PORT", "value": str(config.metrics_port)},
            {"name": "LIGHTMESH_DRAIN_TIMEOUT", "value": str(config.drain_timeout)},
            {"name": "LIGHTMESH_DRAIN_DELAY", "value": str(config.drain_delay)},
            {"name": "LIGHTMESH_TOKEN_FILE", "value": f"{TOKEN_DIR}/{TOKEN_VOLUME}"},
            {"name": "LIGHTMESH_CA_BUNDLE", "value": f"{ROOT_DIR}/root.pem"},
            {"name": "LIGHTMESH_IDENTITY_DIR", "value": IDENTITY_DIR},
        ],
        "ports": [{"name": "lm-metrics", "containerPort": config.metrics_port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": config.metrics_port},
            "periodSeconds": 2,
            "failureThreshold": 30,
        },
        "lifecycle": {
            # The kubelet starts the next container only when this returns: the app waits for us.
            "postStart": {
                "exec": {
                    "command": [
                        "lightmesh", "wait-ready",
                        "--url", f"http://127.0.0.1:{admin}/ready",
                        "--timeout", str(config.ready_timeout),
                    ]
                }
            },
        },
        "resources": copy.deepcopy(config.resources),
        "securityContext": {
            "runAsUser": config.proxy_uid,
            "runAsGroup": config.proxy_uid,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": ROOT_VOLUME, "mountPath": ROOT_DIR, "readOnly": True},
            {"name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR},
        ],
    }  # fmt: skip


def _init_container(config: InjectionConfig, excluded: _Exclusions) -> dict[str, Any]:
    args = [
        "intercept", "install",
        "--inbound-port", str(config.inbound_port),
        "--outbound-port", str(config.outbound_port),
        "--proxy-uid", str(config.proxy_uid),
        "--exclude-inbound-ports", ",".join(map(str, excluded.inbound_ports)),
        "--exclude-outbound-ports", ",".join(map(str, excluded.outbound_ports)),
    ]  # fmt: skip
    if excluded.outbound_cidrs:
        args += ["--exclude-outbound-cidrs", ",".join(excluded.outbound_cidrs)]
    return {
        "name": INIT_CONTAINER,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": args,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        # Root with exactly the two capabilities iptables needs, only for the rules' install.
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }


def _volumes(config: InjectionConfig) -> list[dict[str, Any]]:
    token = {
        # A ServiceAccount token for our audience only: the proxy proves its identity with it
        # when asking for certificates, and it is useless against the API server.
        "name": TOKEN_VOLUME,
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": TOKEN_AUDIENCE,
                        "expirationSeconds": config.token_expiration_seconds,
                        "path": TOKEN_VOLUME,
                    }
                }
            ]
        },
    }
    root = {
        "name": ROOT_VOLUME,
        "downwardAPI": {
            "items": [
                {
                    "path": "root.pem",
                    "fieldRef": {"fieldPath": f"metadata.annotations['{ROOT_ANNOTATION}']"},
                }
            ]
        },
    }
    identity = {"name": IDENTITY_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    return [token, root, identity]
