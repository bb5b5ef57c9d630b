"""Structural OpenAPI v3 schemas of the lightmesh.io/v1alpha1 resources, and a validator for them.

One source of truth: `scripts/gen_crds.py` writes these schemas into `crds/` (the API server enforces
them in cluster mode) and the file source validates against the very same schemas in local mode, so
a resource is accepted or rejected identically in both. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from lightmesh import durations
from lightmesh.protocols import GRPC_STATUSES

GROUP = "lightmesh.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Istio's API groups, accepted as aliases of ours (docs/istio.md): kind -> (group, versions, the
# version the optional CRDs in crds/istio/ store). The spec schema is the same in every group.
_NETWORKING = ("networking.istio.io", ("v1alpha3", "v1beta1", "v1"), "v1")
_SECURITY = ("security.istio.io", ("v1beta1", "v1"), "v1")
ISTIO_GROUPS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "VirtualService": _NETWORKING,
    "DestinationRule": _NETWORKING,
    "Gateway": _NETWORKING,
    "ServiceEntry": _NETWORKING,
    "Sidecar": _NETWORKING,
    "PeerAuthentication": _SECURITY,
    "AuthorizationPolicy": _SECURITY,
    "RequestAuthentication": _SECURITY,
}


def api_versions(kind: str) -> tuple[str, ...]:
    """Every apiVersion a document of `kind` may carry: ours, then Istio's (a kind of ours
    alone, such as HTTPLocalRateLimitPolicy, has no Istio group)."""
    if kind not in ISTIO_GROUPS:
        return (API_VERSION,)
    group, versions, _ = ISTIO_GROUPS[kind]
    return (API_VERSION, *(f"{group}/{version}" for version in versions))


Schema = dict[str, Any]


def _obj(
    properties: Mapping[str, Schema], *, required: Sequence[str] = (), desc: str = ""
) -> Schema:
    schema: Schema = {"type": "object", "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    if desc:
        schema["description"] = desc
    return schema


def _arr(
    items: Schema,
    *,
    desc: str = "",
    max_items: int | None = None,
    rules: Sequence[tuple[str, str]] = (),
) -> Schema:
    schema: Schema = {"type": "array", "items": items}
    if desc:
        schema["description"] = desc
    if max_items is not None:
        # Bounds also keep the API server's cost estimate of the CEL rules within its budget.
        schema["maxItems"] = max_items
    if rules:
        schema["x-kubernetes-validations"] = [{"rule": r, "message": m} for r, m in rules]
    return schema


# Cross-field rules the API server enforces with CEL; validate.py makes the same checks (with the
# same outcome) for the file source, so both accept exactly the same documents.
ROUTE_WEIGHT_RULES = (
    (
        "self.size() != 1 || !has(self[0].weight) || self[0].weight == 100",
        "a single destination takes all traffic; omit weight or use 100",
    ),
    (
        "self.size() <= 1 || self.all(d, has(d.weight))",
        "weight is required on every destination when a route has several",
    ),
    (
        "self.size() <= 1 || !self.all(d, has(d.weight)) || self.map(d, d.weight).sum() == 100",
        "weights must sum to 100",
    ),
)


def _str(*, enum: Sequence[str] = (), pattern: str = "", desc: str = "") -> Schema:
    schema: Schema = {"type": "string"}
    if enum:
        schema["enum"] = list(enum)
    if pattern:
        schema["pattern"] = pattern
    if desc:
        schema["description"] = desc
    return schema


def _int(*, minimum: int | None = None, maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


_STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = _str(pattern=durations.PATTERN, desc='Duration such as "500ms", "1.5s", "2m".')
_STRING_MATCH = _obj(
    {"exact": _str(), "prefix": _str(), "regex": _str(desc="RE2-style full match.")},
    desc="Exactly one of exact, prefix or regex.",
)

_PERCENT: Schema = {"type": "number", "minimum": 0, "maximum": 100}
_PERCENTAGE = _obj({"value": _PERCENT}, desc="Share of requests, 0-100 (fractions allowed).")
_HEADER_NAMES = _arr(_str())
# Istio's deprecated integer percentages (`percent`, `mirrorPercent`): accepted with a warning.
_DEPRECATED_PERCENT: Schema = {
    **_int(minimum=0, maximum=100),
    "description": "Deprecated (Istio): an integer share; use the percentage form.",
}

_HTTP_MATCH = _obj(
    {
        "name": _str(),
        "uri": _STRING_MATCH,
        "method": _STRING_MATCH,
        "headers": {"type": "object", "additionalProperties": _STRING_MATCH},
        "withoutHeaders": {
            "type": "object",
            "additionalProperties": _STRING_MATCH,
            "description": "Headers that must NOT match (an empty match {} means: absent).",
        },
        "queryParams": {"type": "object", "additionalProperties": _STRING_MATCH},
        "port": {
            **_int(minimum=1, maximum=65535),
            "description": "The service port the request was addressed to.",
        },
        "gateways": _arr(
            _str(),
            desc='Where this match applies, over spec.gateways: "mesh" and/or Gateway names.',
        ),
    }
)

_DESTINATION = _obj(
    {
        "host": _str(desc="Service name: short, name.namespace or FQDN."),
        "subset": _str(),
        "port": _obj({"number": _int(minimum=1, maximum=65535)}),
    },
    required=["host"],
)

_HEADER_OPS = _obj({"set": _STRING_MAP, "add": _STRING_MAP, "remove": _HEADER_NAMES})
_HEADERS = _obj({"request": _HEADER_OPS, "response": _HEADER_OPS})

_HTTP_ROUTE = _obj(
    {
        "name": _str(),
        "match": _arr(_HTTP_MATCH, desc="Alternatives (OR); fields within one entry are ANDed."),
        "route": _arr(
            _obj({"destination": _DESTINATION, "weight": _int(minimum=0, maximum=100)}),
            max_items=64,
            rules=ROUTE_WEIGHT_RULES,
        ),
        "redirect": _obj(
            {
                "uri": _str(),
                "authority": _str(),
                "redirectCode": _int(minimum=300, maximum=399),
            },
            desc="Answer with a redirect instead of routing (excludes route).",
        ),
        "rewrite": _obj(
            {
                "uri": _str(desc="Replaces the matched uri prefix (or the whole path)."),
                "authority": _str(),
            }
        ),
        "timeout": _DURATION,
        "retries": _obj(
            {
                "attempts": _int(minimum=0, maximum=10),
                "perTryTimeout": _DURATION,
                "retryOn": _str(desc="Comma-separated: 5xx, gateway-error, connect-failure, ..."),
            }
        ),
        "fault": _obj(
            {
                "delay": _obj(
                    {
                        "fixedDelay": _DURATION,
                        "percentage": _PERCENTAGE,
                        "percent": _DEPRECATED_PERCENT,
                    },
                    required=["fixedDelay"],
                ),
                "abort": _obj(
                    {
                        "httpStatus": _int(minimum=200, maximum=599),
                        "grpcStatus": _str(enum=tuple(GRPC_STATUSES)),
                        "percentage": _PERCENTAGE,
                        "percent": _DEPRECATED_PERCENT,
                    },
                ),
            }
        ),
        "headers": _HEADERS,
        "mirror": _DESTINATION,
        "mirrorPercentage": _PERCENTAGE,
        "mirrorPercent": _DEPRECATED_PERCENT,
    },
)

_TLS_ROUTE = _obj(
    {
        "match": _arr(
            _obj(
                {
                    "sniHosts": _arr(
                        _str(), desc="SNI values (names or *.suffix) of the connections taken."
                    ),
                    "port": _int(minimum=1, maximum=65535),
                    "gateways": _arr(_str(), desc="Where this match applies, over spec.gateways."),
                },
                required=["sniHosts"],
            ),
            desc="Alternatives (OR).",
        ),
        "route": _arr(
            _obj({"destination": _DESTINATION, "weight": _int(minimum=0, maximum=100)}),
            max_items=64,
            rules=ROUTE_WEIGHT_RULES,
        ),
    },
    required=["match", "route"],
)

_EXPORT_TO = _arr(
    _str(),
    desc='Namespaces whose sidecars see this resource: "." (its own), "*" (all) or names; '
    "omitted: the control plane's --default-export-to.",
)

VIRTUAL_SERVICE_SPEC = _obj(
    {
        "hosts": _arr(_str()),
        "exportTo": _EXPORT_TO,
        "gateways": _arr(
            _str(),
            desc='Where the routes apply: "mesh" (the sidecars; the default when omitted) and/or '
            'Gateways ("name" in this namespace, or "namespace/name").',
        ),
        "http": _arr(_HTTP_ROUTE, desc="Ordered routes; the first match wins.", max_items=512),
        "tls": _arr(
            _TLS_ROUTE,
            desc="Routes of TLS connections by SNI, not terminated (Gateway servers with tls.mode "
            "PASSTHROUGH); ordered, the first match wins.",
            max_items=512,
        ),
    },
    required=["hosts"],
)

_POLICY_FIELDS: dict[str, Schema] = {
    "loadBalancer": _obj(
        {
            "simple": _str(
                enum=["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "PEAK_EWMA"],
                desc="PEAK_EWMA (latency-aware P2C) when neither simple nor consistentHash is set.",
            ),
            "consistentHash": _obj(
                {
                    "httpHeaderName": _str(),
                    "httpCookie": _obj({"name": _str(), "ttl": _DURATION}, required=["name"]),
                    "useSourceIp": {"type": "boolean"},
                },
                desc="Exactly one of httpHeaderName, httpCookie, useSourceIp.",
            ),
        },
    ),
    "connectionPool": _obj(
        {
            "tcp": _obj(
                {
                    "maxConnections": _int(minimum=1),
                    "connectTimeout": _DURATION,
                    "idleTimeout": _DURATION,
                    "maxConnectionDuration": _DURATION,
                }
            ),
            "http": _obj(
                {
                    "http1MaxPendingRequests": _int(minimum=0),
                    "http2MaxRequests": _int(minimum=1),
                    "maxRequestsPerConnection": _int(minimum=0),
                    "maxConcurrentStreams": _int(minimum=1),
                    "h2UpgradePolicy": _str(enum=("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")),
                    "idleTimeout": _DURATION,
                }
            ),
        }
    ),
    "outlierDetection": _obj(
        {
            "consecutive5xxErrors": _int(minimum=0),
            "consecutiveGatewayErrors": _int(minimum=0),
            "consecutiveErrors": {
                **_int(minimum=0),
                "description": "Deprecated (Istio): consecutive 502, 503 and 504 answers; "
                "use consecutiveGatewayErrors.",
            },
            "interval": _DURATION,
            "baseEjectionTime": _DURATION,
            "maxEjectionPercent": _int(minimum=0, maximum=100),
            "minHealthPercent": _int(minimum=0, maximum=100),
        }
    ),
    "tls": _obj(
        {
            "mode": _str(
                enum=["DISABLE", "MESH_MUTUAL", "ISTIO_MUTUAL", "SIMPLE", "MUTUAL"],
                desc="MESH_MUTUAL (ISTIO_MUTUAL is a synonym; the default when the endpoints "
                "have sidecars): mutual TLS with the workload certificates; DISABLE: "
                "plaintext; SIMPLE and MUTUAL (TLS origination) are accepted, not applied.",
            ),
            "sni": _str(),
            "credentialName": _str(),
            "subjectAltNames": _arr(_str()),
            "insecureSkipVerify": {"type": "boolean"},
        }
    ),
}

_TRAFFIC_POLICY = _obj(
    {
        **_POLICY_FIELDS,
        "portLevelSettings": _arr(
            _obj(
                {
                    "port": _obj({"number": _int(minimum=1, maximum=65535)}, required=["number"]),
                    **_POLICY_FIELDS,
                },
                required=["port"],
            ),
            desc="Policies for one port of the destination, over the host-wide ones.",
            max_items=64,
        ),
    }
)

DESTINATION_RULE_SPEC = _obj(
    {
        "host": _str(),
        "exportTo": _EXPORT_TO,
        "trafficPolicy": _TRAFFIC_POLICY,
        "subsets": _arr(
            _obj(
                {"name": _str(), "labels": _STRING_MAP, "trafficPolicy": _TRAFFIC_POLICY},
                required=["name"],
            )
        ),
    },
    required=["host"],
)

_SELECTOR = _obj(
    {"matchLabels": _STRING_MAP},
    desc="Workloads of the resource's namespace with these labels; omit for the whole namespace "
    "(the whole mesh in lightmesh-system).",
)

PEER_AUTHENTICATION_SPEC = _obj(
    {
        "selector": _SELECTOR,
        "mtls": _obj(
            {
                "mode": _str(
                    enum=["STRICT", "PERMISSIVE", "DISABLE"],
                    desc="STRICT: mutual TLS only; PERMISSIVE: TLS and plaintext; DISABLE: plaintext.",
                )
            }
        ),
    }
)

_VALUES = _arr(_str(), desc="Exact, 'prefix*', '*suffix' or '*'.")

AUTHORIZATION_POLICY_SPEC = _obj(
    {
        "selector": _SELECTOR,
        "action": _str(enum=["ALLOW", "DENY"], desc="ALLOW when omitted."),
        "rules": _arr(
            _obj(
                {
                    "from": _arr(
                        _obj(
                            {
                                "source": _obj(
                                    {
                                        "principals": _arr(
                                            _str(),
                                            desc="cluster.local/ns/<namespace>/sa/<account>",
                                        ),
                                        "namespaces": _VALUES,
                                        "requestPrincipals": _arr(
                                            _str(),
                                            desc='"<issuer>/<subject>" of a verified JWT '
                                            "(RequestAuthentication); '*': any valid token.",
                                        ),
                                        "notRequestPrincipals": _arr(
                                            _str(),
                                            desc="Matches requests whose JWT principal is none "
                                            "of these ('*': requests without a valid token).",
                                        ),
                                    }
                                )
                            }
                        )
                    ),
                    "to": _arr(
                        _obj(
                            {
                                "operation": _obj(
                                    {"methods": _arr(_str()), "paths": _VALUES},
                                )
                            }
                        )
                    ),
                    "when": _arr(
                        _obj(
                            {
                                "key": _str(
                                    desc="request.auth.claims[name] (nested: claims[a][b]), "
                                    "request.auth.principal, request.auth.audiences, "
                                    "request.auth.presenter."
                                ),
                                "values": _VALUES,
                                "notValues": _VALUES,
                            },
                            required=["key"],
                        ),
                        desc="Conditions, all of which must hold (values: any of; notValues: "
                        "none of).",
                    ),
                }
            ),
            desc="OR of rules; a policy without rules matches nothing.",
        ),
    }
)

SIDECAR_SPEC = _obj(
    {
        "workloadSelector": _obj(
            {"labels": _STRING_MAP},
            desc="The workloads of the Sidecar's namespace it applies to; omit for the whole "
            "namespace (the whole mesh in lightmesh-system).",
        ),
        "egress": _arr(
            _obj(
                {
                    "hosts": _arr(
                        _str(),
                        desc='"namespace/host": namespace "*", "." or a name; host "*", '
                        '"*.suffix" or a service name (short names resolve in that namespace).',
                    )
                },
                required=["hosts"],
            ),
            desc="The hosts the selected sidecars receive config for (besides what routes to).",
        ),
    },
    required=["egress"],
)

_PORT = _int(minimum=1, maximum=65535)

REQUEST_AUTHENTICATION_SPEC = _obj(
    {
        "selector": _SELECTOR,
        "jwtRules": _arr(
            _obj(
                {
                    "issuer": _str(desc="The token's iss claim this rule verifies."),
                    "audiences": _arr(
                        _str(), desc="Accepted aud values (any of); omitted: any audience."
                    ),
                    "jwksUri": _str(
                        desc="http(s) URL of the issuer's JWKS; the control plane fetches it "
                        "and sends the keys to the sidecars."
                    ),
                    "jwks_uri": _str(
                        desc="Istio's proto name of jwksUri, which Istio's CRD also accepts: "
                        "read as jwksUri, with a warning."
                    ),
                    "jwks": _str(desc="The JWKS itself, as JSON text (instead of jwksUri)."),
                    "fromHeaders": _arr(
                        _obj({"name": _str(), "prefix": _str()}, required=["name"]),
                        desc='Where the token is; default: "Authorization: Bearer <token>" '
                        "and the access_token query parameter.",
                    ),
                    "fromParams": _arr(_str(), desc="Query parameters holding the token."),
                    "fromCookies": _arr(_str(), desc="Cookies holding the token."),
                    "forwardOriginalToken": {
                        "type": "boolean",
                        "description": "Keep the token in the request to the app (default: "
                        "removed).",
                    },
                    "outputPayloadToHeader": _str(
                        desc="Header given the verified payload (base64url of its JSON)."
                    ),
                    "outputClaimToHeaders": _arr(
                        _obj({"header": _str(), "claim": _str()}, required=["header", "claim"]),
                        desc="Headers given the value of one claim each.",
                    ),
                    "timeout": _DURATION,
                },
                required=["issuer"],
            ),
            max_items=64,
        ),
    }
)

_RATE = _obj(
    {
        "requestsPerSecond": _int(minimum=1),
        "burst": {
            **_int(minimum=1),
            "description": "Bucket size: requests admitted at once (default requestsPerSecond).",
        },
    },
    required=["requestsPerSecond"],
)

_OVERRIDE = _obj(
    {
        "requestsPerSecond": _int(minimum=1),
        "burst": _int(minimum=1),
        "clientRefs": _arr(
            _obj(
                {
                    "group": _str(),
                    "kind": _str(enum=["ServiceAccount"]),
                    "namespace": _str(),
                    "name": _str(),
                },
                required=["kind", "name"],
            )
        ),
    },
    required=["requestsPerSecond", "clientRefs"],
)

HTTP_LOCAL_RATE_LIMIT_POLICY_SPEC = _obj(
    {
        "targetRef": _obj(
            {"group": _str(), "kind": _str(), "name": _str()},
            required=["kind", "name"],
            desc="The workload limited: kind Deployment, StatefulSet or DaemonSet, by the name "
            "its sidecar registers with (its app label); or use selector.",
        ),
        "selector": _SELECTOR,
        "total": {**_RATE, "description": "One bucket for all requests to the workload."},
        "identity": {**_RATE, "description": "One bucket per client identity."},
        "overrides": _arr(
            _OVERRIDE,
            desc="The per-identity bucket of these clients instead of identity's.",
            max_items=64,
        ),
        "routes": _arr(
            _obj(
                {
                    "name": _str(),
                    "total": {**_RATE, "description": "One bucket for the route's requests."},
                    "identity": {**_RATE, "description": "One bucket per client identity."},
                    "overrides": _arr(_OVERRIDE, max_items=64),
                },
                required=["name"],
            ),
            desc="Buckets of named routes (VirtualService http[].name, on the workload's inbound "
            "or the gateway's routes), instead of the workload's for the requests they route.",
            max_items=64,
        ),
    }
)

GATEWAY_SPEC = _obj(
    {
        "selector": {
            **_STRING_MAP,
            "description": "Labels of the gateway workloads (in any namespace) that serve it.",
        },
        "servers": _arr(
            _obj(
                {
                    "port": _obj(
                        {
                            "number": _PORT,
                            "name": _str(),
                            "protocol": _str(
                                enum=["HTTP", "HTTPS", "HTTP2", "GRPC", "TCP", "TLS"],
                            ),
                            "targetPort": _PORT,
                        },
                        required=["number", "protocol"],
                    ),
                    "hosts": _arr(
                        _str(),
                        desc='Hosts served: "host", "*.suffix" or "*", optionally "namespace/" '
                        '(or "./", "*/") to take VirtualServices of that namespace only.',
                    ),
                    "name": _str(),
                    "bind": _str(),
                    "defaultEndpoint": _str(),
                    "tls": _obj(
                        {
                            "mode": _str(
                                enum=["SIMPLE", "MUTUAL", "PASSTHROUGH", "ISTIO_MUTUAL"],
                            ),
                            "httpsRedirect": {"type": "boolean"},
                            "credentialName": _str(
                                desc="A Kubernetes TLS Secret (tls.crt, tls.key[, ca.crt])."
                            ),
                            "serverCertificate": _str(),
                            "privateKey": _str(),
                            "caCertificates": _str(),
                            "subjectAltNames": _arr(_str()),
                            "minProtocolVersion": _str(
                                enum=["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"]
                            ),
                            "maxProtocolVersion": _str(
                                enum=["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"]
                            ),
                        }
                    ),
                },
                required=["port", "hosts"],
            ),
            max_items=128,
        ),
    },
    required=["servers"],
)

SERVICE_ENTRY_SPEC = _obj(
    {
        "hosts": _arr(_str(), desc="DNS names (a wildcard prefix only with resolution NONE)."),
        "addresses": _arr(_str(), desc="Virtual IPs or CIDR blocks of the hosts."),
        "ports": _arr(
            _obj(
                {
                    "number": _PORT,
                    "protocol": _str(
                        enum=["HTTP", "HTTPS", "HTTP2", "GRPC", "TCP", "TLS", "MONGO", "MYSQL"]
                    ),
                    "name": _str(),
                    "targetPort": _PORT,
                },
                required=["number", "name"],
            ),
            max_items=64,
        ),
        "location": _str(enum=["MESH_EXTERNAL", "MESH_INTERNAL"]),
        "resolution": _str(enum=["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"]),
        "endpoints": _arr(
            _obj(
                {
                    "address": _str(),
                    "ports": {"type": "object", "additionalProperties": _PORT},
                    "labels": _STRING_MAP,
                    "network": _str(),
                    "locality": _str(),
                    "weight": _int(minimum=0),
                    "serviceAccount": _str(),
                }
            ),
            max_items=1024,
        ),
        "exportTo": _EXPORT_TO,
        "subjectAltNames": _arr(_str()),
    },
    required=["hosts"],
)

# kind -> extra printer columns for `kubectl get` (name, JSONPath)
_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "VirtualService": [("Hosts", ".spec.hosts")],
    "DestinationRule": [("Host", ".spec.host")],
    "PeerAuthentication": [("Mode", ".spec.mtls.mode")],
    "AuthorizationPolicy": [("Action", ".spec.action")],
    "Sidecar": [("Egress", ".spec.egress[*].hosts")],
    "Gateway": [("Hosts", ".spec.servers[*].hosts")],
    "ServiceEntry": [("Hosts", ".spec.hosts"), ("Resolution", ".spec.resolution")],
    "RequestAuthentication": [("Issuers", ".spec.jwtRules[*].issuer")],
    "HTTPLocalRateLimitPolicy": [("Total", ".spec.total.requestsPerSecond")],
}

# kind -> (plural, short names, spec schema)
KINDS: dict[str, tuple[str, list[str], Schema]] = {
    "VirtualService": ("virtualservices", ["vs"], VIRTUAL_SERVICE_SPEC),
    "DestinationRule": ("destinationrules", ["dr"], DESTINATION_RULE_SPEC),
    "PeerAuthentication": ("peerauthentications", ["pa"], PEER_AUTHENTICATION_SPEC),
    "AuthorizationPolicy": ("authorizationpolicies", ["ap"], AUTHORIZATION_POLICY_SPEC),
    "Sidecar": ("sidecars", [], SIDECAR_SPEC),
    "Gateway": ("gateways", ["gw"], GATEWAY_SPEC),
    "ServiceEntry": ("serviceentries", ["se"], SERVICE_ENTRY_SPEC),
    "RequestAuthentication": ("requestauthentications", ["ra"], REQUEST_AUTHENTICATION_SPEC),
    "HTTPLocalRateLimitPolicy": (
        "httplocalratelimitpolicies",
        [],
        HTTP_LOCAL_RATE_LIMIT_POLICY_SPEC,
    ),
}

_TYPE_CHECKS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "object": (dict, "an object"),
    "array": (list, "a list"),
    "string": (str, "a string"),
    "integer": (int, "an integer"),
    "number": ((int, float), "a number"),
    "boolean": (bool, "a boolean"),
}


def validate_schema(value: Any, schema: Schema, path: str) -> list[str]:
    """Return one message per violation, each starting with the field path (e.g. `spec.http[0].route`).

    Implements the subset of structural OpenAPI v3 the CRDs use: type, properties (unknown fields
    rejected, as the API server prunes/rejects them), additionalProperties, items, maxItems,
    required, enum, pattern, minimum, maximum. (CEL rules are checked semantically in validate.py.)
    """
    expected = schema.get("type")
    if expected is not None:
        kinds, label = _TYPE_CHECKS[expected]
        # bool is an int in Python; YAML `true` is never a valid integer.
        if not isinstance(value, kinds) or (isinstance(value, bool) and expected != "boolean"):
            return [f"{path}: must be {label}, got {_describe(value)}"]
    problems: list[str] = []
    if isinstance(value, dict):
        props: dict[str, Schema] = schema.get("properties", {})
        extra: Schema | None = schema.get("additionalProperties")
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{path}.{key}: required field is missing")
        for key, item in value.items():
            child = f"{path}.{key}"
            if key in props:
                problems += validate_schema(item, props[key], child)
            elif extra is not None:
                problems += validate_schema(item, extra, child)
            else:
                known = ", ".join(sorted(props)) or "none"
                problems.append(f"{child}: unknown field (known fields: {known})")
    elif isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(f"{path}: {len(value)} items, at most {schema['maxItems']} allowed")
        items: Schema | None = schema.get("items")
        if items is not None:
            for index, item in enumerate(value):
                problems += validate_schema(item, items, f"{path}[{index}]")
    else:
        if "enum" in schema and value not in schema["enum"]:
            allowed = ", ".join(schema["enum"])
            problems.append(f"{path}: {value!r} is not one of {allowed}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{path}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{path}: {value} is above the maximum {schema['maximum']}")
    return problems


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


def crd_manifest(kind: str, *, istio: bool = False) -> dict[str, Any]:
    """Return the CustomResourceDefinition for one kind, as a plain mapping ready for YAML: in
    lightmesh.io, or (`istio`) in Istio's group with every version Istio serves, for clusters
    without Istio whose manifests say `networking.istio.io` or `security.istio.io`."""
    plural, short_names, spec = KINDS[kind]
    status: Schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if istio:
        group, versions, storage = ISTIO_GROUPS[kind]
        categories = ["istio-io", group.replace(".", "-")]
    else:
        group, versions, storage, categories = GROUP, (VERSION,), VERSION, ["lightmesh"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": categories,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": version == storage,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        *({"name": n, "type": "string", "jsonPath": p} for n, p in _COLUMNS[kind]),
                        {
                            "name": "Accepted",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Accepted")].status',
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": spec, "status": status},
                            "required": ["spec"],
                        }
                    },
                }
                for version in versions
            ],
        },
    }
