"""AdmissionReview v1 in, AdmissionReview v1 out: the webhook's decision for one pod. Pure.

Anything malformed gets a denial that says what is wrong, never an exception: the API server
shows the message to whoever created the pod.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from controlplane.injection.patch import diff
from controlplane.injection.template import (
    InjectionConfig,
    InjectionError,
    decide,
    inject,
    trust_root_update,
)

API_VERSION = "admission.k8s.io/v1"


def _response(uid: str, **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AdmissionReview",
        "response": {"uid": uid, **fields},
    }


def deny(uid: str, message: str, *, code: int = 400) -> dict[str, Any]:
    """A refusal with a readable reason."""
    return _response(uid, allowed=False, status={"code": code, "message": message})


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to send, and what the log says about it."""

    answer: dict[str, Any]
    note: str
    namespace: str = ""
    pod: str = ""  # name, or generateName for pods a controller creates


def review(body: bytes, *, namespace_enabled: bool, config: InjectionConfig) -> Outcome:
    """The AdmissionReview answer for a request body."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        return Outcome(deny("", f"lightmesh injector: the body is not JSON: {error}"), "malformed")
    if not isinstance(document, dict) or document.get("kind") != "AdmissionReview":
        return Outcome(deny("", "lightmesh injector: expected an AdmissionReview"), "malformed")
    if document.get("apiVersion") != API_VERSION:
        version = document.get("apiVersion")
        message = f"lightmesh injector: apiVersion {version!r} is not {API_VERSION}"
        return Outcome(deny("", message), "malformed")
    request = document.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        return Outcome(deny("", "lightmesh injector: request.uid is missing"), "malformed")
    uid = request["uid"]
    namespace = str(request.get("namespace") or "")
    kind = request.get("kind") or {}
    if not isinstance(kind, dict) or (kind.get("group"), kind.get("kind")) != ("", "Pod"):
        # Registered for pods only; anything else is allowed untouched rather than blocked.
        return Outcome(_response(uid, allowed=True), f"not a pod ({kind})", namespace)
    pod = request.get("object")
    if not isinstance(pod, dict) or not isinstance(pod.get("spec"), dict):
        message = "lightmesh injector: request.object is not a pod with a spec"
        return Outcome(deny(uid, message), "malformed", namespace)
    metadata = pod.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    name = str(metadata.get("name") or metadata.get("generateName") or "")
    try:
        return _admit(uid, pod, name, namespace, namespace_enabled=namespace_enabled, config=config)
    except (AttributeError, TypeError, KeyError, ValueError) as error:
        # The API server decodes pods before admission, so only a hand-made review gets here
        # (e.g. annotations that are a list): say so rather than fail the request.
        message = f"lightmesh injector: request.object is not a valid pod ({error!r})"
        return Outcome(deny(uid, message), "malformed", namespace, name)


def _admit(
    uid: str,
    pod: dict[str, Any],
    name: str,
    namespace: str,
    *,
    namespace_enabled: bool,
    config: InjectionConfig,
) -> Outcome:
    decision = decide(pod, namespace_enabled=namespace_enabled)
    extra = {"warnings": list(decision.warnings)} if decision.warnings else {}
    if not decision.inject:
        updated = trust_root_update(pod, config)
        if updated is not None:
            answer = _patched(uid, pod, updated, extra)
            return Outcome(answer, f"trust root filled: {decision.reason}", namespace, name)
        answer = _response(uid, allowed=True, **extra)
        return Outcome(answer, f"skipped: {decision.reason}", namespace, name)
    try:
        injected = inject(pod, config)
    except InjectionError as error:
        return Outcome(
            deny(uid, f"lightmesh injector: {error}"), f"denied: {error}", namespace, name
        )
    answer = _patched(uid, pod, injected, extra)
    return Outcome(answer, f"injected: {decision.reason}", namespace, name)


def _patched(
    uid: str, pod: dict[str, Any], result: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    """Allowed, with the JSONPatch that turns `pod` into `result`."""
    patch = json.dumps(diff(pod, result), separators=(",", ":")).encode()
    return _response(
        uid,
        allowed=True,
        patchType="JSONPatch",
        patch=base64.b64encode(patch).decode("ascii"),
        **extra,
    )
