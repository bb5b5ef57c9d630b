"""Validation of raw resource documents into typed model values.

Two passes, as in cluster mode: the structural schema (the same one the CRDs carry) and semantic
checks the schema cannot express (weights sum to 100, regexes compile, subsets named once). Every
problem names the origin (file or Kubernetes object), the resource and the field. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from controlplane.model import (
    DestinationRule,
    HTTPMatch,
    HTTPRoute,
    LbPolicyName,
    MatchKind,
    Resource,
    ResourceKey,
    RouteDestination,
    StringMatch,
    Subset,
    TrafficPolicy,
    VirtualService,
    resolve_host,
)
from controlplane.schema import API_VERSION, KINDS, validate_schema

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """Why a resource (or a whole document) was rejected."""

    origin: str  # file path, or "kubernetes"
    resource: str  # "VirtualService default/catalog", or "" when the document has no identity
    path: str  # field path such as "spec.http[0].route"; "" for document-level problems
    message: str

    def __str__(self) -> str:
        parts = [p for p in (self.origin, self.resource, self.path) if p]
        return ": ".join([*parts, self.message])


@dataclass(frozen=True, slots=True, kw_only=True)
class Parsed:
    """Result of validating one document: the resource, or the problems, and its identity if known."""

    key: ResourceKey | None
    resource: Resource | None
    problems: tuple[Problem, ...] = ()


def parse_duration(text: str) -> float:
    """Parse "500ms", "1.5s", "2m", "1h" into seconds; raise ValueError otherwise."""
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"invalid duration {text!r}")
    return float(found.group(1)) * _UNIT_SECONDS[found.group(2)]


def parse_document(doc: Any, *, origin: str, default_namespace: str = "default") -> Parsed:
    """Validate one raw document (a YAML/JSON mapping) into a typed resource."""

    def problem(path: str, message: str, key: ResourceKey | None = None) -> Parsed:
        return Parsed(
            key=key,
            resource=None,
            problems=(Problem(origin=origin, resource=str(key or ""), path=path, message=message),),
        )

    if not isinstance(doc, dict):
        return problem("", "document must be a mapping with apiVersion, kind, metadata and spec")
    kind = doc.get("kind")
    if doc.get("apiVersion") != API_VERSION:
        return problem("apiVersion", f"must be {API_VERSION}, got {doc.get('apiVersion')!r}")
    if kind not in KINDS:
        return problem("kind", f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return problem("metadata.name", "required string is missing")
    name = meta["name"]
    namespace = meta.get("namespace", default_namespace)
    if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
        return problem("metadata.namespace", f"{namespace!r} is not a valid namespace name")
    key = ResourceKey(kind, namespace, name)
    if not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        return problem("metadata.name", f"{name!r} is not a valid DNS subdomain name", key)

    messages = [f"{field}: unknown field" for field in sorted(set(doc) - _TOP_LEVEL)]
    messages += validate_schema(doc.get("spec"), KINDS[kind][2], "spec")
    if not messages:
        try:
            return Parsed(key=key, resource=_BUILDERS[kind](key, doc["spec"]))
        except _Invalid as invalid:
            messages.append(str(invalid))
    problems = tuple(
        Problem(origin=origin, resource=str(key), path=path, message=message)
        for path, _, message in (m.partition(": ") for m in messages)
    )
    return Parsed(key=key, resource=None, problems=problems)


_TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec", "status"}


class _Invalid(Exception):
    """A semantic problem found while building; message is "path: text"."""


def _string_match(raw: Mapping[str, str], path: str) -> StringMatch:
    if len(raw) != 1:
        raise _Invalid(f"{path}: exactly one of exact, prefix, regex must be set")
    ((kind, value),) = raw.items()
    if kind == "regex":
        try:
            re.compile(value)
        except re.error as error:
            raise _Invalid(f"{path}.regex: {value!r} does not compile: {error}") from None
    return StringMatch(kind=cast(MatchKind, kind), value=value)


def _http_match(raw: Mapping[str, Any], path: str) -> HTTPMatch:
    headers = []
    for name, value in sorted(raw.get("headers", {}).items()):
        if name != name.lower():
            raise _Invalid(f"{path}.headers.{name}: header names must be lower case")
        headers.append((name, _string_match(value, f"{path}.headers.{name}")))
    params = tuple(
        (name, _string_match(value, f"{path}.queryParams.{name}"))
        for name, value in sorted(raw.get("queryParams", {}).items())
    )
    return HTTPMatch(
        uri=_string_match(raw["uri"], f"{path}.uri") if "uri" in raw else None,
        method=_string_match(raw["method"], f"{path}.method") if "method" in raw else None,
        headers=tuple(headers),
        query_params=params,
    )


def _destinations(
    raw: list[dict[str, Any]], path: str, namespace: str
) -> tuple[RouteDestination, ...]:
    if not raw:
        raise _Invalid(f"{path}: at least one destination is required")
    if len(raw) == 1:
        if raw[0].get("weight", 100) != 100:
            raise _Invalid(
                f"{path}[0].weight: a single destination takes all traffic; omit it or use 100"
            )
        weights = [100]
    else:
        missing = [i for i, d in enumerate(raw) if "weight" not in d]
        if missing:
            raise _Invalid(
                f"{path}[{missing[0]}].weight: required when a route has several destinations"
            )
        weights = [d["weight"] for d in raw]
        if sum(weights) != 100:
            raise _Invalid(f"{path}: weights sum to {sum(weights)}, must be 100")
    out = []
    for index, (entry, weight) in enumerate(zip(raw, weights, strict=True)):
        dest = entry.get("destination")
        if dest is None:
            raise _Invalid(f"{path}[{index}].destination: required field is missing")
        out.append(
            RouteDestination(
                host=resolve_host(dest["host"], namespace),
                subset=dest.get("subset", ""),
                port=dest.get("port", {}).get("number"),
                weight=weight,
            )
        )
    return tuple(out)


def _virtual_service(key: ResourceKey, spec: dict[str, Any]) -> VirtualService:
    if not spec["hosts"]:
        raise _Invalid("spec.hosts: at least one host is required")
    routes = []
    for index, raw in enumerate(spec.get("http", [])):
        path = f"spec.http[{index}]"
        timeout = raw.get("timeout")
        routes.append(
            HTTPRoute(
                name=raw.get("name", ""),
                matches=tuple(
                    _http_match(m, f"{path}.match[{i}]") for i, m in enumerate(raw.get("match", []))
                ),
                destinations=_destinations(raw["route"], f"{path}.route", key.namespace),
                timeout=parse_duration(timeout) if timeout is not None else None,
            )
        )
    return VirtualService(
        key=key,
        hosts=tuple(resolve_host(h, key.namespace) for h in spec["hosts"]),
        http=tuple(routes),
    )


def _traffic_policy(raw: Mapping[str, Any] | None) -> TrafficPolicy:
    if raw is None:
        return TrafficPolicy()
    lb = raw.get("loadBalancer", {}).get("simple")
    timeout = raw.get("connectionPool", {}).get("tcp", {}).get("connectTimeout")
    return TrafficPolicy(
        lb_policy=cast(LbPolicyName | None, lb),
        connect_timeout=parse_duration(timeout) if timeout is not None else None,
    )


def _destination_rule(key: ResourceKey, spec: dict[str, Any]) -> DestinationRule:
    subsets = []
    seen: set[str] = set()
    for index, raw in enumerate(spec.get("subsets", [])):
        if raw["name"] in seen:
            raise _Invalid(f"spec.subsets[{index}].name: subset {raw['name']!r} is defined twice")
        seen.add(raw["name"])
        subsets.append(
            Subset(
                name=raw["name"],
                labels=tuple(sorted(raw.get("labels", {}).items())),
                policy=_traffic_policy(raw.get("trafficPolicy")),
            )
        )
    return DestinationRule(
        key=key,
        host=resolve_host(spec["host"], key.namespace),
        policy=_traffic_policy(spec.get("trafficPolicy")),
        subsets=tuple(subsets),
    )


_BUILDERS: dict[str, Callable[[ResourceKey, dict[str, Any]], Resource]] = {
    "VirtualService": _virtual_service,
    "DestinationRule": _destination_rule,
}


def check_references(
    resources: Mapping[ResourceKey, Resource], *, origin: Callable[[ResourceKey], str]
) -> dict[ResourceKey, tuple[Problem, ...]]:
    """Cross-resource checks, per referring resource: every subset a VirtualService routes to is
    defined by the DestinationRule of that host (otherwise its traffic could only fail)."""
    subsets: dict[str, set[str]] = {}
    for resource in resources.values():
        if isinstance(resource, DestinationRule):
            subsets.setdefault(resource.host, set()).update(s.name for s in resource.subsets)
    found: dict[ResourceKey, tuple[Problem, ...]] = {}
    for key, resource in resources.items():
        if not isinstance(resource, VirtualService):
            continue
        problems = tuple(
            Problem(
                origin=origin(key),
                resource=str(key),
                path=f"spec.http[{i}].route[{j}].destination.subset",
                message=f"subset {dest.subset!r} of {dest.host} is not defined by a DestinationRule",
            )
            for i, route in enumerate(resource.http)
            for j, dest in enumerate(route.destinations)
            if dest.subset and dest.subset not in subsets.get(dest.host, set())
        )
        if problems:
            found[key] = problems
    return found
