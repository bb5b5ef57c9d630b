"""Validation of raw resource documents into typed model values.

Two passes, as in cluster mode: the structural schema (the same one the CRDs carry) and semantic
checks the schema cannot express (weights sum to 100, regexes compile, subsets named once). Every
problem names the origin (file or Kubernetes object), the resource and the field. Pure.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from controlplane.model import (
    MESH,
    ConsistentHash,
    DestinationRule,
    EgressHost,
    Fault,
    Gateway,
    GatewayProtocol,
    GatewayServer,
    GatewayTlsMode,
    HeaderOps,
    HTTPLocalRateLimitPolicy,
    HTTPMatch,
    HTTPRoute,
    LbPolicyName,
    Location,
    MatchKind,
    OutlierDetection,
    Redirect,
    Resolution,
    Resource,
    ResourceKey,
    Retries,
    Rewrite,
    RouteDestination,
    ServiceEntry,
    ServiceEntryEndpoint,
    ServiceEntryPort,
    Sidecar,
    StringMatch,
    Subset,
    TLSMatch,
    TlsMode,
    TLSRoute,
    TrafficPolicy,
    VirtualService,
    resolve_host,
)
from controlplane.schema import API_VERSION, KINDS, api_versions, validate_schema
from controlplane.security import (
    ROOT_NAMESPACE,
    SpecError,
    authorization_policy,
    http_local_rate_limit_policy,
    peer_authentication,
    request_authentication,
)
from lightmesh.durations import parse_duration

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """Why a resource (or a whole document) was rejected."""

    origin: str  # file path, or "kubernetes"
    resource: str  # "VirtualService default/catalog", or "" when the document has no identity
    path: str  # field path such as "spec.http[0].route"; "" for document-level problems
    message: str
    # A warning does not reject the resource (e.g. perTryTimeout larger than timeout).
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        parts = [p for p in (self.origin, self.resource, self.path) if p]
        prefix = "warning: " if self.severity == "warning" else ""
        return ": ".join([*parts, prefix + self.message])


@dataclass(frozen=True, slots=True, kw_only=True)
class Parsed:
    """Result of validating one document: the resource, or the problems, and its identity if known."""

    key: ResourceKey | None
    resource: Resource | None
    problems: tuple[Problem, ...] = ()


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
    version = doc.get("apiVersion")
    if kind not in KINDS and isinstance(version, str) and not _mesh_group(version):
        # A Kubernetes object (Service, Deployment, ...) in a manifest that also holds mesh
        # resources, as Istio's samples do: not ours to validate (kubectl applies it).
        return Parsed(key=None, resource=None)
    if version not in _API_VERSIONS:
        return problem(
            "apiVersion",
            f"must be {API_VERSION} (or Istio's networking.istio.io or security.istio.io), "
            f"got {version!r}",
        )
    if kind not in KINDS:
        return problem("kind", f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    if version not in api_versions(kind):
        return problem(
            "apiVersion", f"{kind} is not in {version} (one of: {', '.join(api_versions(kind))})"
        )
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
        warnings: list[str] = []
        try:
            resource = _BUILDERS[kind](key, doc["spec"], warnings)
        except _Invalid as invalid:
            messages.append(str(invalid))
        else:
            return Parsed(
                key=key,
                resource=resource,
                problems=tuple(
                    Problem(
                        origin=origin,
                        resource=str(key),
                        path=path,
                        message=message,
                        severity="warning",
                    )
                    for path, _, message in (w.partition(": ") for w in warnings)
                ),
            )
    problems = tuple(
        Problem(origin=origin, resource=str(key), path=path, message=message)
        for path, _, message in (m.partition(": ") for m in messages)
    )
    return Parsed(key=key, resource=None, problems=problems)


_TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec", "status"}
_API_VERSIONS = frozenset(v for kind in KINDS for v in api_versions(kind))


def _mesh_group(api_version: str) -> bool:
    """Whether an apiVersion is in our group or one of Istio's (where every kind must be known)."""
    group = api_version.rpartition("/")[0]
    return group == API_VERSION.partition("/")[0] or group.endswith(".istio.io")


class _Invalid(Exception):
    """A semantic problem found while building; message is "path: text"."""


_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_REDIRECT_CODES = (301, 302, 303, 307, 308)
# retryOn conditions (Envoy's names, as Istio passes them through); numbers are status codes.
RETRY_ON = frozenset(
    {
        "5xx",
        "gateway-error",
        "connect-failure",
        "reset",
        "refused-stream",
        "retriable-4xx",
        "retriable-status-codes",
        # gRPC statuses (Envoy's x-envoy-retry-grpc-on names), read from trailers-only replies.
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)


def _string_match(raw: Mapping[str, str], path: str, *, presence: bool = False) -> StringMatch:
    if not raw and presence:
        return StringMatch(kind="present")
    if len(raw) != 1:
        allowed = "exactly one of exact, prefix, regex" + (
            " (or {} for presence)" if presence else ""
        )
        raise _Invalid(f"{path}: {allowed} must be set")
    ((kind, value),) = raw.items()
    if kind == "regex":
        try:
            re.compile(value)
        except re.error as error:
            raise _Invalid(f"{path}.regex: {value!r} does not compile: {error}") from None
    return StringMatch(kind=cast(MatchKind, kind), value=value)


def _header_matches(
    raw: Mapping[str, Mapping[str, str]], path: str
) -> tuple[tuple[str, StringMatch], ...]:
    out = []
    for name, value in sorted(raw.items()):
        if name != name.lower():
            raise _Invalid(f"{path}.{name}: header names must be lower case")
        out.append((name, _string_match(value, f"{path}.{name}", presence=True)))
    return tuple(out)


def _http_match(raw: Mapping[str, Any], path: str, namespace: str) -> HTTPMatch:
    params = tuple(
        (name, _string_match(value, f"{path}.queryParams.{name}", presence=True))
        for name, value in sorted(raw.get("queryParams", {}).items())
    )
    return HTTPMatch(
        uri=_string_match(raw["uri"], f"{path}.uri") if "uri" in raw else None,
        method=_string_match(raw["method"], f"{path}.method") if "method" in raw else None,
        headers=_header_matches(raw.get("headers", {}), f"{path}.headers"),
        without_headers=_header_matches(raw.get("withoutHeaders", {}), f"{path}.withoutHeaders"),
        query_params=params,
        port=raw.get("port"),
        gateways=_gateways(raw, namespace, f"{path}.gateways") if "gateways" in raw else (),
    )


def _destination(raw: Mapping[str, Any], namespace: str, *, weight: int = 100) -> RouteDestination:
    return RouteDestination(
        host=resolve_host(raw["host"], namespace),
        subset=raw.get("subset", ""),
        port=raw.get("port", {}).get("number"),
        weight=weight,
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
        out.append(_destination(dest, namespace, weight=weight))
    return tuple(out)


def _header_ops(raw: Mapping[str, Any] | None, path: str) -> HeaderOps:
    if raw is None:
        return HeaderOps()
    for op in ("set", "add"):
        for name, value in raw.get(op, {}).items():
            _check_header_name(name, f"{path}.{op}.{name}")
            if "\r" in value or "\n" in value:
                raise _Invalid(f"{path}.{op}.{name}: header values cannot contain line breaks")
    for index, name in enumerate(raw.get("remove", [])):
        _check_header_name(name, f"{path}.remove[{index}]")
    return HeaderOps(
        set=tuple((k.lower(), v) for k, v in sorted(raw.get("set", {}).items())),
        add=tuple((k.lower(), v) for k, v in sorted(raw.get("add", {}).items())),
        remove=tuple(name.lower() for name in raw.get("remove", [])),
    )


def _check_header_name(name: str, path: str) -> None:
    if not _HEADER_NAME.match(name.lower()):
        raise _Invalid(f"{path}: {name!r} is not a valid header name")
    if name.lower() in ("host", ":authority", "content-length", "transfer-encoding", "connection"):
        raise _Invalid(
            f"{path}: {name!r} cannot be edited here (use rewrite.authority for the host)"
        )


def _retries(raw: Mapping[str, Any], path: str) -> Retries:
    conditions = tuple(c.strip() for c in raw.get("retryOn", "").split(",") if c.strip())
    for condition in conditions:
        if condition not in RETRY_ON and not (condition.isdigit() and 100 <= int(condition) < 600):
            known = ", ".join(sorted(RETRY_ON))
            raise _Invalid(
                f"{path}.retryOn: unknown condition {condition!r} (known: {known}, or a status code)"
            )
    per_try = raw.get("perTryTimeout")
    return Retries(
        attempts=raw.get("attempts", 0),
        per_try_timeout=parse_duration(per_try) if per_try is not None else None,
        retry_on=conditions,
    )


def _percentage(
    raw: Mapping[str, Any], path: str, warnings: list[str], *, new: str, old: str
) -> float:
    """Istio's `percentage: {value}` (default 100), or its deprecated integer form `old`, mapped
    to it with a warning (the new form wins when both are set, as in Istio)."""
    if old in raw:
        if new in raw:
            warnings.append(f"{path}.{old}: deprecated and ignored, {path}.{new} is set")
        else:
            warnings.append(
                f"{path}.{old}: deprecated; read as {new}: {{value: {raw[old]}}} (write that)"
            )
            return float(raw[old])
    return float(raw.get(new, {}).get("value", 100))


def _fault(raw: Mapping[str, Any], path: str, warnings: list[str]) -> Fault:
    delay = raw.get("delay")
    abort = raw.get("abort")
    if abort is not None and "httpStatus" not in abort and "grpcStatus" not in abort:
        raise _Invalid(f"{path}.abort: set httpStatus or grpcStatus")
    return Fault(
        delay=parse_duration(delay["fixedDelay"]) if delay else None,
        delay_percent=(
            _percentage(delay, f"{path}.delay", warnings, new="percentage", old="percent")
            if delay
            else 100.0
        ),
        abort_status=abort.get("httpStatus") if abort else None,
        abort_grpc=abort.get("grpcStatus") if abort else None,
        abort_percent=(
            _percentage(abort, f"{path}.abort", warnings, new="percentage", old="percent")
            if abort
            else 100.0
        ),
    )


def _http_route(
    raw: Mapping[str, Any], path: str, namespace: str, warnings: list[str]
) -> HTTPRoute:
    has_route, redirect_raw = "route" in raw, raw.get("redirect")
    if has_route == (redirect_raw is not None):
        raise _Invalid(f"{path}: exactly one of route or redirect must be set")
    redirect = None
    if redirect_raw is not None:
        for other in ("rewrite", "retries", "mirror", "timeout"):
            if other in raw:
                raise _Invalid(f"{path}.{other}: not allowed with redirect (nothing is forwarded)")
        code = redirect_raw.get("redirectCode", 301)
        if code not in _REDIRECT_CODES:
            raise _Invalid(
                f"{path}.redirect.redirectCode: {code} is not one of "
                + ", ".join(map(str, _REDIRECT_CODES))
            )
        if not redirect_raw.get("uri") and not redirect_raw.get("authority"):
            raise _Invalid(f"{path}.redirect: set uri, authority or both")
        redirect = Redirect(
            uri=redirect_raw.get("uri", ""), authority=redirect_raw.get("authority", ""), code=code
        )
    rewrite = None
    if "rewrite" in raw:
        rewrite = Rewrite(
            uri=raw["rewrite"].get("uri"), authority=raw["rewrite"].get("authority", "")
        )
        if rewrite.uri is None and not rewrite.authority:
            raise _Invalid(f"{path}.rewrite: set uri, authority or both")
    timeout = parse_duration(raw["timeout"]) if "timeout" in raw else None
    retries = _retries(raw["retries"], f"{path}.retries") if "retries" in raw else None
    if (
        retries is not None
        and retries.per_try_timeout is not None
        and timeout is not None
        and retries.per_try_timeout > timeout
    ):
        warnings.append(
            f"{path}.retries.perTryTimeout: {raw['retries']['perTryTimeout']} is longer than the "
            f"route timeout {raw['timeout']}, which bounds all attempts; only one try can finish"
        )
    headers = raw.get("headers", {})
    return HTTPRoute(
        name=raw.get("name", ""),
        matches=tuple(
            _http_match(m, f"{path}.match[{i}]", namespace)
            for i, m in enumerate(raw.get("match", []))
        ),
        destinations=_destinations(raw["route"], f"{path}.route", namespace) if has_route else (),
        redirect=redirect,
        rewrite=rewrite,
        timeout=timeout,
        retries=retries,
        fault=_fault(raw["fault"], f"{path}.fault", warnings) if "fault" in raw else None,
        request_headers=_header_ops(headers.get("request"), f"{path}.headers.request"),
        response_headers=_header_ops(headers.get("response"), f"{path}.headers.response"),
        mirror=_destination(raw["mirror"], namespace) if "mirror" in raw else None,
        mirror_percent=_percentage(
            raw, path, warnings, new="mirrorPercentage", old="mirrorPercent"
        ),
    )


def parse_export_to(values: list[str], path: str) -> tuple[str, ...]:
    """Istio's exportTo: ".", "*" or namespace names; "*" alone; no repeats. Raises ValueError
    with "path: text"."""
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value not in (".", "*") and not _DNS_LABEL.match(value):
            raise ValueError(f"{path}[{index}]: {value!r} is not '.', '*' or a namespace name")
        if value in seen:
            raise ValueError(f"{path}[{index}]: {value!r} is listed twice")
        seen.add(value)
    if "*" in seen and len(seen) > 1:
        raise ValueError(f"{path}: '*' exports to every namespace; list nothing else with it")
    return tuple(values)


def _export_to(spec: Mapping[str, Any]) -> tuple[str, ...]:
    if "exportTo" not in spec:
        return ()
    if not spec["exportTo"]:
        raise _Invalid("spec.exportTo: give at least one namespace, '.' or '*' (or omit it)")
    try:
        return parse_export_to(spec["exportTo"], "spec.exportTo")
    except ValueError as error:
        raise _Invalid(str(error)) from None


def _gateways(
    spec: Mapping[str, Any], namespace: str, path: str = "spec.gateways"
) -> tuple[str, ...]:
    """Istio's `gateways`: omitted means the mesh only; otherwise MESH and Gateways as
    "namespace/name" (a bare name is in the VirtualService's namespace)."""
    if "gateways" not in spec:
        return (MESH,)
    if not spec["gateways"]:
        raise _Invalid(f"{path}: give 'mesh' and/or Gateway names (or omit it)")
    out: list[str] = []
    for index, value in enumerate(spec["gateways"]):
        where = f"{path}[{index}]"
        if value == MESH:
            resolved = MESH
        else:
            space, slash, name = value.rpartition("/")
            space = space if slash else namespace
            if not _DNS_LABEL.match(space) or not _DNS_SUBDOMAIN.match(name):
                raise _Invalid(
                    f"{where}: {value!r} is not 'mesh', a Gateway name or 'namespace/name'"
                )
            resolved = f"{space}/{name}"
        if resolved in out:
            raise _Invalid(f"{where}: {value!r} is listed twice")
        out.append(resolved)
    return tuple(out)


def _virtual_service(key: ResourceKey, spec: dict[str, Any], warnings: list[str]) -> VirtualService:
    if not spec["hosts"]:
        raise _Invalid("spec.hosts: at least one host is required")
    gateways = _gateways(spec, key.namespace)
    for index, host in enumerate(spec["hosts"]):
        if not host.startswith("*") or MESH not in gateways:
            continue
        if host == "*":
            # As Istio: sidecars cannot take every host; bind it to gateways only.
            raise _Invalid(
                f"spec.hosts[{index}]: '*' is not allowed for a VirtualService bound to the mesh "
                "(set spec.gateways to the Gateways it is for)"
            )
        warnings.append(
            f"spec.hosts[{index}]: sidecars route exact host names only; {host!r} applies to "
            "gateways, not to the mesh"
        )
    return VirtualService(
        key=key,
        export_to=_export_to(spec),
        gateways=gateways,
        hosts=tuple(resolve_host(h, key.namespace) for h in spec["hosts"]),
        http=tuple(
            _http_route(raw, f"spec.http[{index}]", key.namespace, warnings)
            for index, raw in enumerate(spec.get("http", []))
        ),
        tls=_tls_routes(spec, key.namespace, gateways, warnings),
    )


def _tls_routes(
    spec: Mapping[str, Any], namespace: str, gateways: tuple[str, ...], warnings: list[str]
) -> tuple[TLSRoute, ...]:
    """Istio's `tls` routes: every sniHosts entry must be one of the VirtualService's hosts (or
    within a wildcard of them); sidecars do not apply them (gateways' PASSTHROUGH servers do)."""
    raw_routes = spec.get("tls", [])
    if raw_routes and MESH in gateways:
        warnings.append(
            "spec.tls: TLS routes apply to gateways (PASSTHROUGH servers), not to sidecars"
        )
    hosts = [h.lower() for h in spec["hosts"]]
    routes = []
    for index, raw in enumerate(raw_routes):
        path = f"spec.tls[{index}]"
        if not raw["match"]:
            raise _Invalid(f"{path}.match: at least one match (with sniHosts) is required")
        matches = []
        for m_index, match in enumerate(raw["match"]):
            where = f"{path}.match[{m_index}].sniHosts"
            if not match["sniHosts"]:
                raise _Invalid(f"{where}: at least one SNI host is required")
            sni = []
            for s_index, value in enumerate(match["sniHosts"]):
                name = _scoped_host("*", value, f"{where}[{s_index}]")
                if not any(_host_covers(h, name) for h in hosts):
                    raise _Invalid(
                        f"{where}[{s_index}]: {value!r} is not one of spec.hosts (or within a "
                        "wildcard of them)"
                    )
                sni.append(name)
            matches.append(
                TLSMatch(
                    sni_hosts=tuple(sni),
                    port=match.get("port"),
                    gateways=_gateways(match, namespace, f"{path}.match[{m_index}].gateways")
                    if "gateways" in match
                    else (),
                )
            )
        routes.append(
            TLSRoute(
                matches=tuple(matches),
                destinations=_destinations(raw["route"], f"{path}.route", namespace),
            )
        )
    return tuple(routes)


def _host_covers(host: str, name: str) -> bool:
    if host in ("*", name):
        return True
    return host.startswith("*.") and name.endswith(host[1:])


def _optional_duration(raw: Mapping[str, Any], name: str) -> float | None:
    return parse_duration(raw[name]) if name in raw else None


_TLS_MODES: dict[str, TlsMode | None] = {
    "DISABLE": "DISABLE",
    "MESH_MUTUAL": "MESH_MUTUAL",
    "ISTIO_MUTUAL": "MESH_MUTUAL",  # Istio's name of the same mode
}


def _tls_mode(raw: Mapping[str, Any], path: str, warnings: list[str]) -> TlsMode | None:
    mode = raw.get("mode")
    if mode is None:
        return None
    if mode in _TLS_MODES:
        return _TLS_MODES[mode]
    warnings.append(
        f"{path}.mode: {mode} (TLS origination) is accepted but not implemented; the mesh "
        "default applies (mutual TLS to meshed endpoints, plaintext otherwise)"
    )
    return None


def _outlier(od: Mapping[str, Any], path: str, warnings: list[str]) -> OutlierDetection:
    defaults = OutlierDetection()
    consecutive_5xx, consecutive_gateway = defaults.consecutive_5xx, defaults.consecutive_gateway
    if od.get("consecutiveErrors"):
        # Istio's meaning of the deprecated field: only 502, 503 and 504 count (gateway errors)
        # and the 5xx detector is off; the current fields, when set, override it field by field.
        errors = od["consecutiveErrors"]
        consecutive_5xx, consecutive_gateway = 0, errors
        overridden = [f for f in ("consecutive5xxErrors", "consecutiveGatewayErrors") if f in od]
        warnings.append(
            f"{path}.consecutiveErrors: deprecated; read as consecutiveGatewayErrors: {errors} "
            "with consecutive5xxErrors: 0 (Istio's meaning: 502, 503 and 504 count)"
            + (f", then {' and '.join(overridden)} as set" if overridden else "; write those")
        )
    return OutlierDetection(
        consecutive_5xx=od.get("consecutive5xxErrors", consecutive_5xx),
        consecutive_gateway=od.get("consecutiveGatewayErrors", consecutive_gateway),
        interval=_optional_duration(od, "interval") or defaults.interval,
        base_ejection=_optional_duration(od, "baseEjectionTime") or defaults.base_ejection,
        max_ejection_percent=od.get("maxEjectionPercent", defaults.max_ejection_percent),
        min_health_percent=od.get("minHealthPercent", defaults.min_health_percent),
    )


def _port_level(
    raw: list[dict[str, Any]], path: str, warnings: list[str]
) -> tuple[tuple[int, TrafficPolicy], ...]:
    out: list[tuple[int, TrafficPolicy]] = []
    for index, entry in enumerate(raw):
        number = entry["port"]["number"]
        if any(number == seen for seen, _ in out):
            raise _Invalid(f"{path}[{index}].port.number: port {number} is listed twice")
        policy = {k: v for k, v in entry.items() if k != "port"}
        out.append((number, _traffic_policy(policy, f"{path}[{index}]", warnings)))
    if out:
        warnings.append(
            f"{path}: accepted, not yet applied per port: the host-wide settings apply to every "
            "port (docs/istio.md)"
        )
    return tuple(out)


def _traffic_policy(raw: Mapping[str, Any] | None, path: str, warnings: list[str]) -> TrafficPolicy:
    if raw is None:
        return TrafficPolicy()
    lb = raw.get("loadBalancer", {})
    hashing = None
    if "consistentHash" in lb:
        if "simple" in lb:
            raise _Invalid(f"{path}.loadBalancer: set simple or consistentHash, not both")
        ch = lb["consistentHash"]
        keys = [k for k in ("httpHeaderName", "httpCookie", "useSourceIp") if ch.get(k)]
        if len(keys) != 1:
            raise _Invalid(
                f"{path}.loadBalancer.consistentHash: exactly one of httpHeaderName, httpCookie, "
                "useSourceIp must be set"
            )
        hashing = ConsistentHash(
            header=ch.get("httpHeaderName", "").lower(),
            cookie=ch.get("httpCookie", {}).get("name", ""),
            source_ip=bool(ch.get("useSourceIp")),
        )
    tcp = raw.get("connectionPool", {}).get("tcp", {})
    http = raw.get("connectionPool", {}).get("http", {})
    outlier = None
    if "outlierDetection" in raw:
        outlier = _outlier(raw["outlierDetection"], f"{path}.outlierDetection", warnings)
    idle = _optional_duration(http, "idleTimeout")
    return TrafficPolicy(
        lb_policy=cast(LbPolicyName | None, lb.get("simple")),
        consistent_hash=hashing,
        connect_timeout=_optional_duration(tcp, "connectTimeout"),
        max_connections=tcp.get("maxConnections"),
        max_pending_requests=http.get("http1MaxPendingRequests"),
        max_requests_per_connection=http.get("maxRequestsPerConnection"),
        idle_timeout=idle if idle is not None else _optional_duration(tcp, "idleTimeout"),
        max_connection_duration=_optional_duration(tcp, "maxConnectionDuration"),
        http2_max_requests=http.get("http2MaxRequests"),
        max_concurrent_streams=http.get("maxConcurrentStreams"),
        h2_upgrade_policy=http.get("h2UpgradePolicy"),
        outlier=outlier,
        tls_mode=_tls_mode(raw.get("tls", {}), f"{path}.tls", warnings),
        port_level=_port_level(
            raw.get("portLevelSettings", []), f"{path}.portLevelSettings", warnings
        ),
    )


def _destination_rule(
    key: ResourceKey, spec: dict[str, Any], warnings: list[str]
) -> DestinationRule:
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
                policy=_traffic_policy(
                    raw.get("trafficPolicy"), f"spec.subsets[{index}].trafficPolicy", warnings
                ),
            )
        )
    return DestinationRule(
        key=key,
        export_to=_export_to(spec),
        host=resolve_host(spec["host"], key.namespace),
        policy=_traffic_policy(spec.get("trafficPolicy"), "spec.trafficPolicy", warnings),
        subsets=tuple(subsets),
    )


Builder = Callable[[ResourceKey, dict[str, Any], list[str]], Resource]


def _spec_checked(build: Builder) -> Builder:
    """A builder of controlplane/security.py, whose SpecError becomes this module's _Invalid."""

    def checked(key: ResourceKey, spec: dict[str, Any], warnings: list[str]) -> Resource:
        try:
            return build(key, spec, warnings)
        except SpecError as exc:
            raise _Invalid(str(exc)) from exc

    return checked


def _scoped_host(space: str, host: str, path: str) -> str:
    """The host of a "namespace/host" entry (Sidecar egress, Gateway servers), lower-cased: the
    namespace "*", "." or a name; the host "*", "*.suffix" or a DNS name."""
    if space not in ("*", ".") and not _DNS_LABEL.match(space):
        raise _Invalid(f"{path}: {space!r} is not '*', '.' or a namespace name")
    host = host.lower().rstrip(".")
    pattern = host[2:] if host.startswith("*.") else host
    if host != "*" and (not pattern or "*" in pattern or not _DNS_SUBDOMAIN.match(pattern)):
        raise _Invalid(f"{path}: {host!r} is not '*', '*.suffix' or a host name")
    return host


def _egress_host(value: str, namespace: str, path: str) -> EgressHost:
    del namespace  # "." means the namespace of the sidecar it applies to, resolved at lookup
    space, slash, host = value.partition("/")
    if not slash or not space or not host:
        raise _Invalid(f"{path}: {value!r} must be 'namespace/host' (e.g. './*', '*/catalog.shop')")
    host = _scoped_host(space, host, path)
    if host != "*" and not host.startswith("*.") and space == "*" and "." not in host:
        raise _Invalid(
            f"{path}: short name {host!r} needs a namespace (write 'ns/{host}' or the FQDN)"
        )
    if host != "*" and not host.startswith("*.") and "." in host:
        host = resolve_host(host, "")  # name.namespace[.svc[.cluster.local]]: the FQDN
    return EgressHost(namespace=space, host=host)


def _sidecar(key: ResourceKey, spec: dict[str, Any], warnings: list[str]) -> Resource:
    del warnings
    selector = None
    if "workloadSelector" in spec:
        labels = spec["workloadSelector"].get("labels") or {}
        if not labels:
            raise _Invalid("spec.workloadSelector.labels: give at least one label, or omit it")
        selector = tuple(sorted(labels.items()))
    if selector is not None and key.namespace == ROOT_NAMESPACE:
        raise _Invalid(
            f"spec.workloadSelector: a Sidecar in {ROOT_NAMESPACE} is the mesh-wide default and "
            "cannot select workloads"
        )
    if not spec["egress"]:
        raise _Invalid("spec.egress: at least one egress entry is required")
    egress = []
    for i, entry in enumerate(spec["egress"]):
        if not entry["hosts"]:
            raise _Invalid(f"spec.egress[{i}].hosts: at least one host is required")
        egress += [
            _egress_host(value, key.namespace, f"spec.egress[{i}].hosts[{j}]")
            for j, value in enumerate(entry["hosts"])
        ]
    return Sidecar(key=key, selector=selector, egress=tuple(egress))


def _gateway_host(value: str, path: str) -> str:
    """A Gateway server host: "[namespace/]host", the namespace "*", "." or a name (omitted:
    "*"), the host "*", "*.suffix" or a DNS name; returned as "namespace/host"."""
    space, slash, host = value.rpartition("/")
    space = space if slash else "*"
    return f"{space}/{_scoped_host(space, host, path)}"


_TLS_PROTOCOLS = ("HTTPS", "TLS")


def _gateway_server(raw: Mapping[str, Any], path: str) -> GatewayServer:
    port = raw["port"]
    protocol: GatewayProtocol = port["protocol"]
    if not raw["hosts"]:
        raise _Invalid(f"{path}.hosts: at least one host is required")
    hosts = tuple(_gateway_host(h, f"{path}.hosts[{i}]") for i, h in enumerate(raw["hosts"]))
    tls = raw.get("tls")
    mode: GatewayTlsMode | None = None
    if protocol in _TLS_PROTOCOLS:
        if tls is None:
            raise _Invalid(f"{path}.tls: required for protocol {protocol}")
        mode = tls.get("mode", "PASSTHROUGH")  # Istio's default mode
    elif tls is not None and set(tls) - {"httpsRedirect"}:
        raise _Invalid(
            f"{path}.tls: a {protocol} server takes only tls.httpsRedirect (TLS settings need "
            "protocol HTTPS or TLS)"
        )
    if tls is not None and mode in ("SIMPLE", "MUTUAL"):
        files = "serverCertificate" in tls and "privateKey" in tls
        if not tls.get("credentialName") and not files:
            raise _Invalid(
                f"{path}.tls: mode {mode} needs credentialName (a TLS Secret) or "
                "serverCertificate and privateKey (files)"
            )
        if mode == "MUTUAL" and not tls.get("credentialName") and "caCertificates" not in tls:
            raise _Invalid(f"{path}.tls.caCertificates: mode MUTUAL needs the client CA")
    return GatewayServer(
        port=port["number"],
        protocol=protocol,
        port_name=port.get("name", ""),
        hosts=hosts,
        tls_mode=mode,
        credential_name=(tls or {}).get("credentialName", ""),
        https_redirect=bool((tls or {}).get("httpsRedirect", False)),
        server_certificate=(tls or {}).get("serverCertificate", ""),
        private_key=(tls or {}).get("privateKey", ""),
        ca_certificates=(tls or {}).get("caCertificates", ""),
        subject_alt_names=tuple((tls or {}).get("subjectAltNames", ())),
        min_protocol=_tls_version(tls or {}, "minProtocolVersion", f"{path}.tls"),
        max_protocol=_tls_version(tls or {}, "maxProtocolVersion", f"{path}.tls"),
    )


def _tls_version(tls: Mapping[str, Any], name: str, path: str) -> str:
    """TLS_AUTO is the gateway's default; TLS 1.0 and 1.1 are refused (Python's ssl and modern
    OpenSSL builds disable them: a listener configured so would fail every handshake)."""
    value: str = tls.get(name, "")
    if value in ("TLSV1_0", "TLSV1_1"):
        raise _Invalid(
            f"{path}.{name}: {value} is not supported by lightmesh gateways (TLSV1_2 or later)"
        )
    return "" if value == "TLS_AUTO" else value


def _gateway(key: ResourceKey, spec: dict[str, Any], warnings: list[str]) -> Resource:
    del warnings
    if not spec["servers"]:
        raise _Invalid("spec.servers: at least one server is required")
    servers = []
    names: dict[str, int] = {}
    tls_of_port: dict[int, tuple[bool, int]] = {}
    for index, raw in enumerate(spec["servers"]):
        server = _gateway_server(raw, f"spec.servers[{index}]")
        # A gateway port either terminates or passes TLS, or speaks plain text: its first bytes
        # decide, so one port cannot be both (Istio refuses such a port conflict too).
        is_tls = server.protocol in _TLS_PROTOCOLS
        first = tls_of_port.setdefault(server.port, (is_tls, index))
        if first[0] != is_tls:
            raise _Invalid(
                f"spec.servers[{index}].port: {server.port} is also spec.servers[{first[1]}]'s, "
                f"which is {'TLS' if first[0] else 'plain text'}; a port is one or the other"
            )
        if server.port_name:
            if server.port_name in names:
                raise _Invalid(
                    f"spec.servers[{index}].port.name: {server.port_name!r} is also the name of "
                    f"spec.servers[{names[server.port_name]}]'s port"
                )
            names[server.port_name] = index
        servers.append(server)
    return Gateway(
        key=key,
        selector=tuple(sorted((spec.get("selector") or {}).items())),
        servers=tuple(servers),
    )


def _address(value: str, path: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _Invalid(f"{path}: {value!r} is not an IP address or CIDR block") from None
    return value


def _service_entry(key: ResourceKey, spec: dict[str, Any], warnings: list[str]) -> Resource:
    del warnings
    if not spec["hosts"]:
        raise _Invalid("spec.hosts: at least one host is required")
    resolution: Resolution = spec.get("resolution", "NONE")
    location: Location = spec.get("location", "MESH_EXTERNAL")
    hosts = []
    for index, value in enumerate(spec["hosts"]):
        host = value.lower().rstrip(".")
        pattern = host[2:] if host.startswith("*.") else host
        if host == "*" or not pattern or "*" in pattern or not _DNS_SUBDOMAIN.match(pattern):
            raise _Invalid(f"spec.hosts[{index}]: {value!r} is not a host name or '*.suffix'")
        dns = resolution in ("DNS", "DNS_ROUND_ROBIN")
        if host.startswith("*") and dns and not spec.get("endpoints"):
            raise _Invalid(
                f"spec.hosts[{index}]: a wildcard host cannot be resolved by DNS; give "
                "endpoints or use resolution NONE"
            )
        hosts.append(resolve_host(host, key.namespace))
    ports: list[ServiceEntryPort] = []
    for index, raw in enumerate(spec.get("ports", [])):
        path = f"spec.ports[{index}]"
        if any(p.number == raw["number"] for p in ports):
            raise _Invalid(f"{path}.number: port {raw['number']} is listed twice")
        if any(p.name == raw["name"] for p in ports):
            raise _Invalid(f"{path}.name: {raw['name']!r} is listed twice")
        ports.append(
            ServiceEntryPort(
                number=raw["number"],
                name=raw["name"],
                protocol=raw.get("protocol", ""),
                target_port=raw.get("targetPort"),
            )
        )
    endpoints = spec.get("endpoints", [])
    if resolution == "STATIC" and not endpoints:
        raise _Invalid("spec.endpoints: resolution STATIC needs at least one endpoint")
    if resolution == "NONE" and endpoints:
        raise _Invalid("spec.endpoints: not allowed with resolution NONE")
    found = []
    for index, raw in enumerate(endpoints):
        path = f"spec.endpoints[{index}]"
        address = raw.get("address", "")
        if not address:
            raise _Invalid(f"{path}.address: required field is missing")
        if resolution == "STATIC":
            _address(address, f"{path}.address")
        elif not _DNS_SUBDOMAIN.match(address.lower()):
            raise _Invalid(f"{path}.address: {address!r} is not a host name or IP address")
        for name in raw.get("ports", {}):
            if not any(p.name == name for p in ports):
                raise _Invalid(f"{path}.ports.{name}: no port of spec.ports is named {name!r}")
        found.append(
            ServiceEntryEndpoint(
                address=address,
                ports=tuple(sorted(raw.get("ports", {}).items())),
                labels=tuple(sorted(raw.get("labels", {}).items())),
                weight=raw.get("weight", 0),
            )
        )
    return ServiceEntry(
        key=key,
        hosts=tuple(hosts),
        ports=tuple(ports),
        addresses=tuple(
            _address(a, f"spec.addresses[{i}]") for i, a in enumerate(spec.get("addresses", []))
        ),
        location=location,
        resolution=resolution,
        endpoints=tuple(found),
        export_to=_export_to(spec),
    )


_BUILDERS: dict[str, Builder] = {
    "VirtualService": _virtual_service,
    "DestinationRule": _destination_rule,
    "PeerAuthentication": _spec_checked(lambda key, spec, _: peer_authentication(key, spec)),
    "AuthorizationPolicy": _spec_checked(lambda key, spec, _: authorization_policy(key, spec)),
    "Sidecar": _sidecar,
    "Gateway": _gateway,
    "ServiceEntry": _service_entry,
    "RequestAuthentication": _spec_checked(request_authentication),
    "HTTPLocalRateLimitPolicy": _spec_checked(
        lambda key, spec, _: http_local_rate_limit_policy(key, spec)
    ),
}


def subset_references(vs: VirtualService) -> list[tuple[str, RouteDestination]]:
    """Every (field path, destination) of a VirtualService that names a subset."""
    used = [
        (f"spec.http[{i}].route[{j}].destination.subset", dest)
        for i, route in enumerate(vs.http)
        for j, dest in enumerate(route.destinations)
    ] + [
        (f"spec.http[{i}].mirror.subset", route.mirror)
        for i, route in enumerate(vs.http)
        if route.mirror is not None
    ]
    return [(path, dest) for path, dest in used if dest.subset]


def missing_subsets(
    vs: VirtualService, *, origin: str, defined: Callable[[str], Collection[str]]
) -> tuple[Problem, ...]:
    """A warning for each subset the VirtualService routes to that `defined(host)` lacks: as in
    Istio, the VirtualService is accepted (apply order is free) and those routes answer 503 NC."""
    return tuple(
        Problem(
            origin=origin,
            resource=str(vs.key),
            path=path,
            message=f"subset {dest.subset!r} of {dest.host} is not defined by a DestinationRule "
            "(yet): its requests answer 503 (flag NC) until one defines it",
            severity="warning",
        )
        for path, dest in subset_references(vs)
        if dest.subset not in defined(dest.host)
    )


def limitable_routes(policy: HTTPLocalRateLimitPolicy, served: Iterable[Resource]) -> set[str]:
    """The route names a rate-limit policy can target: `http[].name` of the VirtualServices of
    its namespace (a sidecar's inbound) and of those bound to a Gateway (a gateway's routes)."""
    return {
        route.name
        for vs in served
        if isinstance(vs, VirtualService)
        and (vs.key.namespace == policy.key.namespace or any(g != MESH for g in vs.gateways))
        for route in vs.http
        if route.name
    }


def unknown_routes(
    policy: HTTPLocalRateLimitPolicy, *, origin: str, known: Collection[str]
) -> tuple[Problem, ...]:
    """A warning for each route of the policy no VirtualService names (`known`): as Istio's
    unknown subset, accepted (apply order is free), its buckets unused until the route exists."""
    return tuple(
        Problem(
            origin=origin,
            resource=str(policy.key),
            path=f"spec.routes[{i}].name",
            message=f"route {route.route!r} is not the name of any VirtualService http route "
            f"of namespace {policy.key.namespace} or of a Gateway (yet): its buckets are "
            "unused, its requests take the workload's limit",
            severity="warning",
        )
        for i, route in enumerate(policy.routes)
        if route.route not in known
    )


def check_references(
    resources: Mapping[ResourceKey, Resource], *, origin: Callable[[ResourceKey], str]
) -> dict[ResourceKey, tuple[Problem, ...]]:
    """Cross-resource checks, per referring resource: a warning for every subset a VirtualService
    routes to that the DestinationRule of that host does not define (its traffic fails, NC), and
    for every route an HTTPLocalRateLimitPolicy names that no VirtualService has."""
    subsets: dict[str, set[str]] = {}
    for resource in resources.values():
        if isinstance(resource, DestinationRule):
            subsets.setdefault(resource.host, set()).update(s.name for s in resource.subsets)
    found: dict[ResourceKey, tuple[Problem, ...]] = {}
    for key, resource in resources.items():
        if not isinstance(resource, VirtualService):
            continue
        problems = missing_subsets(
            resource, origin=origin(key), defined=lambda host: subsets.get(host, set())
        )
        if problems:
            found[key] = problems
    for key, resource in resources.items():
        if isinstance(resource, HTTPLocalRateLimitPolicy) and resource.routes:
            known = limitable_routes(resource, resources.values())
            problems = unknown_routes(resource, origin=origin(key), known=known)
            if problems:
                found[key] = problems
    return found
