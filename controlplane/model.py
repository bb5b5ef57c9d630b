"""Typed world state of the control plane: validated resources and the service registry.

Everything here is immutable; sources produce these values and the store versions them. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple, TypeAlias

CLUSTER_DOMAIN = "cluster.local"

MatchKind = Literal["exact", "prefix", "regex", "present"]
LbPolicyName = Literal["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "PEAK_EWMA"]
TlsMode = Literal["DISABLE", "MESH_MUTUAL"]
MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
Action = Literal["ALLOW", "DENY"]
# The `gateways` keyword of a VirtualService that means: the sidecars of the mesh.
MESH = "mesh"


class ResourceKey(NamedTuple):
    """Identity of a resource: kind, namespace, name."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class StringMatch:
    """One of exact / prefix / regex (full match), or `present` (headers and query params: `{}`)."""

    kind: MatchKind
    value: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPMatch:
    """One `match` entry: every present field must match."""

    uri: StringMatch | None = None
    method: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()
    # Istio's `withoutHeaders`: each must NOT match; `present` there means "header is absent".
    without_headers: tuple[tuple[str, StringMatch], ...] = ()
    query_params: tuple[tuple[str, StringMatch], ...] = ()
    # Istio's `port`: the service port the request was addressed to.
    port: int | None = None
    # Istio's match `gateways` (resolved like VirtualService.gateways); () = the VirtualService's.
    gateways: tuple[str, ...] = ()

    @property
    def for_mesh(self) -> bool:
        """Whether sidecars evaluate this entry (its own `gateways`, when set, must list mesh)."""
        return not self.gateways or MESH in self.gateways


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteDestination:
    """A weighted destination; `host` is resolved to a service FQDN."""

    host: str
    subset: str = ""
    port: int | None = None
    weight: int = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderOps:
    """Header edits, applied in the order remove, set, add (names lower case)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Redirect:
    """Answer with a redirect: replace the path and/or authority of the request's URL."""

    uri: str = ""
    authority: str = ""
    code: int = 301


@dataclass(frozen=True, slots=True, kw_only=True)
class Rewrite:
    """Rewrite before forwarding: the matched uri prefix (or whole path) and/or the authority."""

    uri: str | None = None
    authority: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Retries:
    """Retry policy of a route (carried to the sidecar; the engine applies it)."""

    attempts: int
    per_try_timeout: float | None = None  # seconds
    retry_on: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """Fault injection: a delay and/or an abort, each on a percentage of requests."""

    delay: float | None = None  # seconds
    delay_percent: float = 100.0
    abort_status: int | None = None
    # abort.grpcStatus: the status name a gRPC caller gets (lightmesh/protocols.py GRPC_STATUSES).
    abort_grpc: str | None = None
    abort_percent: float = 100.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRoute:
    """One entry of a VirtualService's ordered `http` list."""

    name: str = ""
    matches: tuple[HTTPMatch, ...] = ()
    destinations: tuple[RouteDestination, ...] = ()
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    timeout: float | None = None  # seconds
    retries: Retries | None = None
    fault: Fault | None = None
    request_headers: HeaderOps = field(default_factory=HeaderOps)
    response_headers: HeaderOps = field(default_factory=HeaderOps)
    mirror: RouteDestination | None = None
    mirror_percent: float = 100.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSMatch:
    """One `tls[].match` entry: the SNI names (or `*.suffix`) it takes, optionally one port."""

    sni_hosts: tuple[str, ...]
    port: int | None = None
    gateways: tuple[str, ...] = ()  # as HTTPMatch.gateways


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSRoute:
    """One entry of a VirtualService's `tls` list: where TLS connections (passed through by a
    gateway, not terminated) go by their SNI."""

    matches: tuple[TLSMatch, ...]
    destinations: tuple[RouteDestination, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualService:
    """Routing rules for requests addressed to `hosts` (resolved to FQDNs)."""

    key: ResourceKey
    hosts: tuple[str, ...]
    http: tuple[HTTPRoute, ...] = ()
    tls: tuple[TLSRoute, ...] = ()
    # Istio's exportTo: namespaces whose sidecars see it ("." its own, "*" all); () = the default.
    export_to: tuple[str, ...] = ()
    # Istio's `gateways`: MESH (the sidecars) and/or "namespace/name" of Gateways.
    gateways: tuple[str, ...] = (MESH,)

    @property
    def for_mesh(self) -> bool:
        """Whether the sidecars apply it (Istio: a VirtualService bound only to gateways does
        not apply to sidecars)."""
        return MESH in self.gateways

    def destination_hosts(self) -> frozenset[str]:
        """Every host its routes and mirrors send to (their clusters must reach the same sidecars)."""
        hosts = {d.host for route in self.http for d in route.destinations}
        hosts.update(route.mirror.host for route in self.http if route.mirror is not None)
        hosts.update(d.host for route in self.tls for d in route.destinations)
        return frozenset(hosts)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistentHash:
    """Hash key of a consistent-hash load balancer: one of header, cookie, source IP."""

    header: str = ""
    cookie: str = ""
    source_ip: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierDetection:
    """Passive health checking (Istio/Envoy semantics and defaults)."""

    consecutive_5xx: int = 5
    consecutive_gateway: int = 0  # 0: disabled
    interval: float = 10.0
    base_ejection: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0


H2UpgradePolicy = Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficPolicy:
    """Per-destination policy; unset fields inherit (subset → host → defaults)."""

    lb_policy: LbPolicyName | None = None
    consistent_hash: ConsistentHash | None = None
    connect_timeout: float | None = None  # seconds
    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests_per_connection: int | None = None
    idle_timeout: float | None = None  # seconds
    # connectionPool.tcp.maxConnectionDuration (seconds): upstream HTTP/2 connections recycled.
    max_connection_duration: float | None = None
    # HTTP/2 (connectionPool.http): requests in flight to the destination, streams per
    # connection, and whether HTTP/1.1 callers are upgraded to HTTP/2 towards the endpoints.
    http2_max_requests: int | None = None
    max_concurrent_streams: int | None = None
    h2_upgrade_policy: H2UpgradePolicy | None = None
    outlier: OutlierDetection | None = None
    # None: mutual TLS when the destination's endpoints have sidecars, plaintext otherwise.
    tls_mode: TlsMode | None = None
    # Istio's portLevelSettings: (port, policy) pairs, validated and kept; not yet applied.
    port_level: tuple[tuple[int, TrafficPolicy], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Subset:
    """A named group of a service's endpoints, selected by labels."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    policy: TrafficPolicy = field(default_factory=TrafficPolicy)


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationRule:
    """Policies and subsets for one destination service (`host` resolved to an FQDN)."""

    key: ResourceKey
    host: str
    policy: TrafficPolicy = field(default_factory=TrafficPolicy)
    subsets: tuple[Subset, ...] = ()
    export_to: tuple[str, ...] = ()  # as VirtualService.export_to


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressHost:
    """One `spec.egress[].hosts` entry of a Sidecar: `namespace/host`. The namespace is "*", a
    name, or "." (the sidecar's own namespace, also in a mesh-wide Sidecar); the host is "*",
    "*.suffix", a FQDN, or a short name (resolved in the namespace it is looked up for)."""

    namespace: str
    host: str

    def matches(self, host: str, namespace: str, viewer: str) -> bool:
        """Whether a host defined in `namespace` (a service's, or a VirtualService's) is selected
        for sidecars of `viewer`."""
        space = viewer if self.namespace == "." else self.namespace
        if space not in ("*", namespace):
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        if "." not in self.host:
            return host == resolve_host(self.host, namespace)
        return host == self.host


@dataclass(frozen=True, slots=True, kw_only=True)
class Sidecar:
    """Istio's Sidecar (egress part): narrows what the selected sidecars receive to the listed hosts
    (intersected with what is exported to their namespace)."""

    key: ResourceKey
    selector: tuple[tuple[str, str], ...] | None  # workloadSelector.labels; None: whole namespace
    egress: tuple[EgressHost, ...]

    def selects(self, host: str, namespace: str, viewer: str) -> bool:
        """Whether a host (defined in `namespace`) is in this Sidecar's egress for sidecars of
        `viewer`."""
        return any(e.matches(host, namespace, viewer) for e in self.egress)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAuthentication:
    """Whether a workload's inbound listener requires, accepts or refuses mutual TLS."""

    key: ResourceKey
    selector: tuple[tuple[str, str], ...] | None  # None: the whole namespace
    mode: MtlsMode


@dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    """One `when` entry of an AuthorizationPolicy rule: `key` (request.auth.claims[a][b],
    request.auth.principal, request.auth.audiences, request.auth.presenter) has one of `values`
    (when given) and none of `not_values`."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationRule:
    """`from`, `to` and `when` of one rule; empty tuples mean "any"."""

    principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    # "<issuer>/<subject>" of the request's verified JWT (RequestAuthentication).
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationPolicy:
    """Who may call a workload, and what."""

    key: ResourceKey
    selector: tuple[tuple[str, str], ...] | None
    action: Action
    rules: tuple[AuthorizationRule, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtRule:
    """One `jwtRules` entry of a RequestAuthentication: how tokens of `issuer` are found and
    verified, and what the app is told of them."""

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str = ""  # inline JWKS (JSON text); "" when jwks_uri is set
    jwks_uri: str = ""
    # (header name lower-case, value prefix); none of headers, params and cookies: Istio's
    # default locations.
    from_headers: tuple[tuple[str, str], ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    forward_original_token: bool = False
    output_payload_to_header: str = ""
    output_claim_to_headers: tuple[tuple[str, str], ...] = ()  # (header lower-case, claim)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAuthentication:
    """Istio's RequestAuthentication: which JWTs the selected workloads accept (a request with an
    invalid one is refused, 401; one without a token is let through unless an
    AuthorizationPolicy requires a request principal)."""

    key: ResourceKey
    selector: tuple[tuple[str, str], ...] | None
    rules: tuple[JwtRule, ...]

    def jwks_uris(self) -> frozenset[str]:
        """The JWKS URLs the control plane must fetch for it."""
        return frozenset(r.jwks_uri for r in self.rules if r.jwks_uri)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """A token bucket: `rate` requests per second, at most `burst` at once."""

    rate: int
    burst: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitOverride:
    """A per-identity bucket of its own for some clients ("namespace/service-account")."""

    limit: RateLimit
    clients: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRateLimit:
    """The buckets of one named route (VirtualService `http[].name`), instead of the workload's
    for the requests that route takes."""

    route: str
    total: RateLimit | None = None
    identity: RateLimit | None = None
    overrides: tuple[RateLimitOverride, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPLocalRateLimitPolicy:
    """Linkerd's HTTPLocalRateLimitPolicy: token buckets on the selected workloads' inbound
    requests (over `total`, or over its identity's bucket: 429, flag RL)."""

    key: ResourceKey
    # Workloads by labels (None: the whole namespace), or by name (`workload`, targetRef).
    selector: tuple[tuple[str, str], ...] | None
    workload: str = ""
    total: RateLimit | None = None
    identity: RateLimit | None = None
    overrides: tuple[RateLimitOverride, ...] = ()
    routes: tuple[RouteRateLimit, ...] = ()

    def route_names(self) -> frozenset[str]:
        """The routes with buckets of their own."""
        return frozenset(r.route for r in self.routes)


GatewayProtocol = Literal["HTTP", "HTTPS", "HTTP2", "GRPC", "TCP", "TLS"]
GatewayTlsMode = Literal["SIMPLE", "MUTUAL", "PASSTHROUGH", "ISTIO_MUTUAL"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayServer:
    """One `servers` entry of a Gateway: a port, its protocol, the hosts it serves, its TLS."""

    port: int
    protocol: GatewayProtocol
    port_name: str = ""
    # "namespace/host" ("*" namespace: any); the host is a name, "*.suffix" or "*".
    hosts: tuple[str, ...] = ()
    tls_mode: GatewayTlsMode | None = None
    credential_name: str = ""
    https_redirect: bool = False
    # Istio's file-mounted credentials: paths on the gateway's file system (read by the gateway).
    server_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    min_protocol: str = ""  # TLSV1_2, TLSV1_3 ("" or TLS_AUTO: the gateway's default)
    # MUTUAL: names one of which the client certificate must carry (Istio's subjectAltNames).
    subject_alt_names: tuple[str, ...] = ()
    max_protocol: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Gateway:
    """Istio's Gateway: the ports an edge proxy (`lightmesh gateway`) selected by `selector`
    listens on; VirtualServices bind to it by "namespace/name" (controlplane/translate/gateway.py)."""

    key: ResourceKey
    selector: tuple[tuple[str, str], ...]
    servers: tuple[GatewayServer, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSecret:
    """A Kubernetes Secret with TLS material (a Gateway server's `credentialName`): PEM text of
    its tls.crt, tls.key and ca.crt ("" when absent). Only the gateways' namespaces are read."""

    key: ResourceKey
    cert_chain: str = ""
    private_key: str = ""
    ca: str = ""

    def __repr__(self) -> str:
        return f"TlsSecret({self.key})"  # never the key material, in logs or debug pages


Location = Literal["MESH_EXTERNAL", "MESH_INTERNAL"]
Resolution = Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceEntryPort:
    """A port of a ServiceEntry."""

    number: int
    name: str
    protocol: str = ""
    target_port: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceEntryEndpoint:
    """An endpoint of a ServiceEntry (resolution STATIC or DNS)."""

    address: str
    ports: tuple[tuple[str, int], ...] = ()  # port name -> number
    labels: tuple[tuple[str, str], ...] = ()
    weight: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceEntry:
    """Istio's ServiceEntry: hosts outside the registry the mesh may call. Validated and served to
    the world; not yet turned into clusters (docs/istio.md)."""

    key: ResourceKey
    hosts: tuple[str, ...]
    ports: tuple[ServiceEntryPort, ...] = ()
    addresses: tuple[str, ...] = ()
    location: Location = "MESH_EXTERNAL"
    resolution: Resolution = "NONE"
    endpoints: tuple[ServiceEntryEndpoint, ...] = ()
    export_to: tuple[str, ...] = ()


Resource: TypeAlias = (
    VirtualService
    | DestinationRule
    | PeerAuthentication
    | AuthorizationPolicy
    | Sidecar
    | Gateway
    | ServiceEntry
    | RequestAuthentication
    | HTTPLocalRateLimitPolicy
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceEndpoint:
    """One instance of a service: where its sidecar's inbound listener is."""

    address: str
    port: int
    workload: str
    labels: tuple[tuple[str, str], ...] = ()
    # Whether a sidecar answers at address:port (it can terminate mutual TLS).
    sidecar: bool = True
    # The Kubernetes service account the instance runs as (its SPIFFE ID's `sa`); "" if unknown.
    service_account: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """A service and its current endpoints."""

    name: str
    namespace: str
    endpoints: tuple[ServiceEndpoint, ...] = ()
    # Virtual IPs the service is dialled at (Kubernetes ClusterIPs): an intercepted connection
    # to one of them routes to this service even when its Host header names no service.
    addresses: tuple[str, ...] = ()
    # Service ports declared non-HTTP (see `is_tcp_port`): spliced as raw TCP, never parsed.
    tcp_ports: tuple[int, ...] = ()
    # Every HTTP port of the service is declared gRPC or HTTP/2 (lightmesh/protocols.py, Istio's
    # rules): its clusters speak HTTP/2 to the endpoints whatever the caller speaks.
    http2: bool = False
    # The protocol its HTTP ports agree on ("grpc", "http2", "http"; "": undeclared or mixed,
    # lightmesh/protocols.py `agreed_protocol`): what its endpoints' inbound sidecars speak to
    # the app.
    protocol: str = ""
    # The `networking.istio.io/exportTo` annotation; () = the mesh default.
    export_to: tuple[str, ...] = ()

    @property
    def fqdn(self) -> str:
        """The service's fully qualified name."""
        return f"{self.name}.{self.namespace}.svc.{CLUSTER_DOMAIN}"


# Istio's protocol selection: a port named `<protocol>` or `<protocol>-<suffix>` with one of these
# prefixes, or whose `appProtocol` is not an HTTP one, carries something else than HTTP.
TCP_PORT_NAME_PREFIXES = ("tcp", "tls", "mongo", "mysql", "redis", "postgres")
HTTP_APP_PROTOCOLS = frozenset({"http", "http2", "grpc", "h2c"})


def is_tcp_port(name: str, app_protocol: str) -> bool:
    """Whether a Kubernetes Service port is declared non-HTTP (by appProtocol, else by name)."""
    if app_protocol:
        # Kubernetes' standard names are prefixed ("kubernetes.io/h2c"); "https" is TLS: raw TCP.
        return app_protocol.lower().removeprefix("kubernetes.io/") not in HTTP_APP_PROTOCOLS
    return name.lower().startswith(TCP_PORT_NAME_PREFIXES)


def visible(export_to: tuple[str, ...], *, owner: str, viewer: str) -> bool:
    """Istio's exportTo rule: whether something defined in namespace `owner` with `export_to`
    (already defaulted) is seen by sidecars of namespace `viewer`."""
    for entry in export_to:
        if entry == "*" or entry == viewer or (entry == "." and owner == viewer):
            return True
    return False


def resolve_host(host: str, namespace: str) -> str:
    """Resolve a host as written in a resource to a service FQDN.

    `catalog` (relative to the resource's namespace), `catalog.shop`, `catalog.shop.svc` and
    `catalog.shop.svc.cluster.local` name the same service; other dotted names are kept as they are.
    """
    host = host.lower().rstrip(".")
    if host.startswith("*"):
        return host  # "*" or "*.suffix": a pattern, not a service name
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.svc.{CLUSTER_DOMAIN}"
    if len(parts) == 2:
        return f"{host}.svc.{CLUSTER_DOMAIN}"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{host}.{CLUSTER_DOMAIN}"
    return host
