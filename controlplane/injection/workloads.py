"""Offline injection of workload manifests (`lightmesh inject -f`): find each pod template. Pure.

Handles Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and CronJob documents; every
other document passes through unchanged. The pod templates get exactly what the webhook would
add to the pods created from them (`template.inject`), with the namespace treated as labelled:
only the pod's own `lightmesh.io/inject: "false"` opts it out.
"""

from __future__ import annotations

from typing import Any

from controlplane.injection.template import InjectionConfig, InjectionError, decide, inject

# kind → path from the document to its pod (an object with metadata and spec).
POD_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def inject_document(document: Any, config: InjectionConfig, *, where: str) -> tuple[Any, str]:
    """The injected document and a one-line note of what happened; `where` names it in errors."""
    if not isinstance(document, dict):
        return document, f"{where}: not a mapping, unchanged"
    kind = document.get("kind")
    name = (document.get("metadata") or {}).get("name", "?")
    label = f"{where} ({kind} {name})"
    path = POD_PATHS.get(str(kind))
    if path is None:
        return document, f"{label}: no pod template, unchanged"
    parent: Any = document
    for key in path:
        parent = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(parent, dict):
        raise InjectionError(f"{label}: {'.'.join(path) or 'the document'} is missing")
    decision = decide(parent, namespace_enabled=True)
    if not decision.inject:
        return document, f"{label}: not injected ({decision.reason})"
    try:
        pod = inject(parent, config)
    except InjectionError as error:
        prefix = ".".join(path)
        raise InjectionError(f"{label}: {prefix + '.' if prefix else ''}{error}") from None
    if not path:
        return pod, f"{label}: injected"
    result = dict(document)
    cursor = result
    for key in path[:-1]:
        cursor[key] = dict(cursor[key])
        cursor = cursor[key]
    cursor[path[-1]] = pod
    return result, f"{label}: injected"
