from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LbPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_ROBIN: _ClassVar[LbPolicy]
    LEAST_REQUEST: _ClassVar[LbPolicy]
    RANDOM: _ClassVar[LbPolicy]
    PEAK_EWMA: _ClassVar[LbPolicy]
    RING_HASH: _ClassVar[LbPolicy]

class UpstreamTls(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TLS_DISABLE: _ClassVar[UpstreamTls]
    MESH_MUTUAL: _ClassVar[UpstreamTls]

class MtlsMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MTLS_PERMISSIVE: _ClassVar[MtlsMode]
    MTLS_STRICT: _ClassVar[MtlsMode]
    MTLS_DISABLE: _ClassVar[MtlsMode]

class AuthzAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUTHZ_ALLOW: _ClassVar[AuthzAction]
    AUTHZ_DENY: _ClassVar[AuthzAction]

class GatewayTlsMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GATEWAY_TLS_NONE: _ClassVar[GatewayTlsMode]
    GATEWAY_TLS_SIMPLE: _ClassVar[GatewayTlsMode]
    GATEWAY_TLS_MUTUAL: _ClassVar[GatewayTlsMode]
    GATEWAY_TLS_PASSTHROUGH: _ClassVar[GatewayTlsMode]
    GATEWAY_TLS_ISTIO_MUTUAL: _ClassVar[GatewayTlsMode]
ROUND_ROBIN: LbPolicy
LEAST_REQUEST: LbPolicy
RANDOM: LbPolicy
PEAK_EWMA: LbPolicy
RING_HASH: LbPolicy
TLS_DISABLE: UpstreamTls
MESH_MUTUAL: UpstreamTls
MTLS_PERMISSIVE: MtlsMode
MTLS_STRICT: MtlsMode
MTLS_DISABLE: MtlsMode
AUTHZ_ALLOW: AuthzAction
AUTHZ_DENY: AuthzAction
GATEWAY_TLS_NONE: GatewayTlsMode
GATEWAY_TLS_SIMPLE: GatewayTlsMode
GATEWAY_TLS_MUTUAL: GatewayTlsMode
GATEWAY_TLS_PASSTHROUGH: GatewayTlsMode
GATEWAY_TLS_ISTIO_MUTUAL: GatewayTlsMode

class VirtualHost(_message.Message):
    __slots__ = ("name", "domains", "routes", "origin", "tcp_routes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    TCP_ROUTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    domains: _containers.RepeatedScalarFieldContainer[str]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    origin: str
    tcp_routes: _containers.RepeatedCompositeFieldContainer[TcpRoute]
    def __init__(self, name: _Optional[str] = ..., domains: _Optional[_Iterable[str]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., origin: _Optional[str] = ..., tcp_routes: _Optional[_Iterable[_Union[TcpRoute, _Mapping]]] = ...) -> None: ...

class TcpRoute(_message.Message):
    __slots__ = ("port", "cluster")
    PORT_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    port: int
    cluster: str
    def __init__(self, port: _Optional[int] = ..., cluster: _Optional[str] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("name", "matches", "clusters", "timeout_ms", "redirect", "rewrite", "request_headers", "response_headers", "retries", "fault", "mirror")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_FIELD_NUMBER: _ClassVar[int]
    REWRITE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    MIRROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    matches: _containers.RepeatedCompositeFieldContainer[RouteMatch]
    clusters: _containers.RepeatedCompositeFieldContainer[WeightedCluster]
    timeout_ms: int
    redirect: Redirect
    rewrite: Rewrite
    request_headers: HeaderOps
    response_headers: HeaderOps
    retries: RetryPolicy
    fault: Fault
    mirror: Mirror
    def __init__(self, name: _Optional[str] = ..., matches: _Optional[_Iterable[_Union[RouteMatch, _Mapping]]] = ..., clusters: _Optional[_Iterable[_Union[WeightedCluster, _Mapping]]] = ..., timeout_ms: _Optional[int] = ..., redirect: _Optional[_Union[Redirect, _Mapping]] = ..., rewrite: _Optional[_Union[Rewrite, _Mapping]] = ..., request_headers: _Optional[_Union[HeaderOps, _Mapping]] = ..., response_headers: _Optional[_Union[HeaderOps, _Mapping]] = ..., retries: _Optional[_Union[RetryPolicy, _Mapping]] = ..., fault: _Optional[_Union[Fault, _Mapping]] = ..., mirror: _Optional[_Union[Mirror, _Mapping]] = ...) -> None: ...

class Redirect(_message.Message):
    __slots__ = ("uri", "authority", "code")
    URI_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    uri: str
    authority: str
    code: int
    def __init__(self, uri: _Optional[str] = ..., authority: _Optional[str] = ..., code: _Optional[int] = ...) -> None: ...

class Rewrite(_message.Message):
    __slots__ = ("uri", "authority")
    URI_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    uri: str
    authority: str
    def __init__(self, uri: _Optional[str] = ..., authority: _Optional[str] = ...) -> None: ...

class HeaderValue(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class HeaderOps(_message.Message):
    __slots__ = ("set", "add", "remove")
    SET_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    set: _containers.RepeatedCompositeFieldContainer[HeaderValue]
    add: _containers.RepeatedCompositeFieldContainer[HeaderValue]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, set: _Optional[_Iterable[_Union[HeaderValue, _Mapping]]] = ..., add: _Optional[_Iterable[_Union[HeaderValue, _Mapping]]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("attempts", "per_try_timeout_ms", "retry_on")
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PER_TRY_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_ON_FIELD_NUMBER: _ClassVar[int]
    attempts: int
    per_try_timeout_ms: int
    retry_on: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, attempts: _Optional[int] = ..., per_try_timeout_ms: _Optional[int] = ..., retry_on: _Optional[_Iterable[str]] = ...) -> None: ...

class Fault(_message.Message):
    __slots__ = ("delay_ms", "delay_percent", "abort_status", "abort_percent", "abort_grpc_status")
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    DELAY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    ABORT_STATUS_FIELD_NUMBER: _ClassVar[int]
    ABORT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    ABORT_GRPC_STATUS_FIELD_NUMBER: _ClassVar[int]
    delay_ms: int
    delay_percent: float
    abort_status: int
    abort_percent: float
    abort_grpc_status: str
    def __init__(self, delay_ms: _Optional[int] = ..., delay_percent: _Optional[float] = ..., abort_status: _Optional[int] = ..., abort_percent: _Optional[float] = ..., abort_grpc_status: _Optional[str] = ...) -> None: ...

class Mirror(_message.Message):
    __slots__ = ("cluster", "percent")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    percent: float
    def __init__(self, cluster: _Optional[str] = ..., percent: _Optional[float] = ...) -> None: ...

class StringMatch(_message.Message):
    __slots__ = ("exact", "prefix", "regex", "present")
    EXACT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    exact: str
    prefix: str
    regex: str
    present: bool
    def __init__(self, exact: _Optional[str] = ..., prefix: _Optional[str] = ..., regex: _Optional[str] = ..., present: _Optional[bool] = ...) -> None: ...

class HeaderMatch(_message.Message):
    __slots__ = ("name", "value", "invert")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    INVERT_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: StringMatch
    invert: bool
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[StringMatch, _Mapping]] = ..., invert: _Optional[bool] = ...) -> None: ...

class QueryParamMatch(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: StringMatch
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[StringMatch, _Mapping]] = ...) -> None: ...

class RouteMatch(_message.Message):
    __slots__ = ("uri", "headers", "method", "query_params", "port")
    URI_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    QUERY_PARAMS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    uri: StringMatch
    headers: _containers.RepeatedCompositeFieldContainer[HeaderMatch]
    method: StringMatch
    query_params: _containers.RepeatedCompositeFieldContainer[QueryParamMatch]
    port: int
    def __init__(self, uri: _Optional[_Union[StringMatch, _Mapping]] = ..., headers: _Optional[_Iterable[_Union[HeaderMatch, _Mapping]]] = ..., method: _Optional[_Union[StringMatch, _Mapping]] = ..., query_params: _Optional[_Iterable[_Union[QueryParamMatch, _Mapping]]] = ..., port: _Optional[int] = ...) -> None: ...

class WeightedCluster(_message.Message):
    __slots__ = ("cluster", "weight")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    weight: int
    def __init__(self, cluster: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class ConsistentHash(_message.Message):
    __slots__ = ("header", "cookie", "source_ip", "ring_size")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    COOKIE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    RING_SIZE_FIELD_NUMBER: _ClassVar[int]
    header: str
    cookie: str
    source_ip: bool
    ring_size: int
    def __init__(self, header: _Optional[str] = ..., cookie: _Optional[str] = ..., source_ip: _Optional[bool] = ..., ring_size: _Optional[int] = ...) -> None: ...

class OutlierDetection(_message.Message):
    __slots__ = ("consecutive_5xx", "consecutive_gateway", "interval_ms", "base_ejection_ms", "max_ejection_percent", "min_health_percent")
    CONSECUTIVE_5XX_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_GATEWAY_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    BASE_EJECTION_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_EJECTION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MIN_HEALTH_PERCENT_FIELD_NUMBER: _ClassVar[int]
    consecutive_5xx: int
    consecutive_gateway: int
    interval_ms: int
    base_ejection_ms: int
    max_ejection_percent: int
    min_health_percent: int
    def __init__(self, consecutive_5xx: _Optional[int] = ..., consecutive_gateway: _Optional[int] = ..., interval_ms: _Optional[int] = ..., base_ejection_ms: _Optional[int] = ..., max_ejection_percent: _Optional[int] = ..., min_health_percent: _Optional[int] = ...) -> None: ...

class Cluster(_message.Message):
    __slots__ = ("name", "service", "subset", "lb_policy", "connect_timeout_ms", "hash", "max_connections", "max_pending_requests", "max_requests_per_connection", "idle_timeout_ms", "outlier", "tls", "tls_identities", "meshed", "http2", "max_concurrent_streams", "http2_max_requests", "max_connection_duration_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SUBSET_FIELD_NUMBER: _ClassVar[int]
    LB_POLICY_FIELD_NUMBER: _ClassVar[int]
    CONNECT_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    MAX_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_PENDING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_PER_CONNECTION_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    TLS_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    MESHED_FIELD_NUMBER: _ClassVar[int]
    HTTP2_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_STREAMS_FIELD_NUMBER: _ClassVar[int]
    HTTP2_MAX_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONNECTION_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    service: str
    subset: str
    lb_policy: LbPolicy
    connect_timeout_ms: int
    hash: ConsistentHash
    max_connections: int
    max_pending_requests: int
    max_requests_per_connection: int
    idle_timeout_ms: int
    outlier: OutlierDetection
    tls: UpstreamTls
    tls_identities: _containers.RepeatedScalarFieldContainer[str]
    meshed: bool
    http2: bool
    max_concurrent_streams: int
    http2_max_requests: int
    max_connection_duration_ms: int
    def __init__(self, name: _Optional[str] = ..., service: _Optional[str] = ..., subset: _Optional[str] = ..., lb_policy: _Optional[_Union[LbPolicy, str]] = ..., connect_timeout_ms: _Optional[int] = ..., hash: _Optional[_Union[ConsistentHash, _Mapping]] = ..., max_connections: _Optional[int] = ..., max_pending_requests: _Optional[int] = ..., max_requests_per_connection: _Optional[int] = ..., idle_timeout_ms: _Optional[int] = ..., outlier: _Optional[_Union[OutlierDetection, _Mapping]] = ..., tls: _Optional[_Union[UpstreamTls, str]] = ..., tls_identities: _Optional[_Iterable[str]] = ..., meshed: _Optional[bool] = ..., http2: _Optional[bool] = ..., max_concurrent_streams: _Optional[int] = ..., http2_max_requests: _Optional[int] = ..., max_connection_duration_ms: _Optional[int] = ...) -> None: ...

class ClusterLoadAssignment(_message.Message):
    __slots__ = ("cluster_name", "endpoints")
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, cluster_name: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("address", "port", "workload", "labels", "weight")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    workload: str
    labels: _containers.ScalarMap[str, str]
    weight: int
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ..., workload: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., weight: _Optional[int] = ...) -> None: ...

class InboundPolicy(_message.Message):
    __slots__ = ("mtls_mode", "policies", "trust_bundle", "jwt_rules", "rate_limit", "app_protocol")
    MTLS_MODE_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    JWT_RULES_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    APP_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    mtls_mode: MtlsMode
    policies: _containers.RepeatedCompositeFieldContainer[AuthorizationPolicy]
    trust_bundle: str
    jwt_rules: _containers.RepeatedCompositeFieldContainer[JwtRule]
    rate_limit: LocalRateLimit
    app_protocol: str
    def __init__(self, mtls_mode: _Optional[_Union[MtlsMode, str]] = ..., policies: _Optional[_Iterable[_Union[AuthorizationPolicy, _Mapping]]] = ..., trust_bundle: _Optional[str] = ..., jwt_rules: _Optional[_Iterable[_Union[JwtRule, _Mapping]]] = ..., rate_limit: _Optional[_Union[LocalRateLimit, _Mapping]] = ..., app_protocol: _Optional[str] = ...) -> None: ...

class JwtRule(_message.Message):
    __slots__ = ("issuer", "audiences", "jwks", "from_headers", "from_params", "forward_original_token", "output_payload_to_header", "output_claim_to_headers", "policy", "from_cookies")
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    JWKS_FIELD_NUMBER: _ClassVar[int]
    FROM_HEADERS_FIELD_NUMBER: _ClassVar[int]
    FROM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_ORIGINAL_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PAYLOAD_TO_HEADER_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CLAIM_TO_HEADERS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    FROM_COOKIES_FIELD_NUMBER: _ClassVar[int]
    issuer: str
    audiences: _containers.RepeatedScalarFieldContainer[str]
    jwks: str
    from_headers: _containers.RepeatedCompositeFieldContainer[JwtHeader]
    from_params: _containers.RepeatedScalarFieldContainer[str]
    forward_original_token: bool
    output_payload_to_header: str
    output_claim_to_headers: _containers.RepeatedCompositeFieldContainer[ClaimToHeader]
    policy: str
    from_cookies: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, issuer: _Optional[str] = ..., audiences: _Optional[_Iterable[str]] = ..., jwks: _Optional[str] = ..., from_headers: _Optional[_Iterable[_Union[JwtHeader, _Mapping]]] = ..., from_params: _Optional[_Iterable[str]] = ..., forward_original_token: _Optional[bool] = ..., output_payload_to_header: _Optional[str] = ..., output_claim_to_headers: _Optional[_Iterable[_Union[ClaimToHeader, _Mapping]]] = ..., policy: _Optional[str] = ..., from_cookies: _Optional[_Iterable[str]] = ...) -> None: ...

class JwtHeader(_message.Message):
    __slots__ = ("name", "prefix")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    prefix: str
    def __init__(self, name: _Optional[str] = ..., prefix: _Optional[str] = ...) -> None: ...

class ClaimToHeader(_message.Message):
    __slots__ = ("header", "claim")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    header: str
    claim: str
    def __init__(self, header: _Optional[str] = ..., claim: _Optional[str] = ...) -> None: ...

class LocalRateLimit(_message.Message):
    __slots__ = ("name", "total", "identity", "overrides", "routes", "inbound_hosts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    INBOUND_HOSTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    total: RateLimitBucket
    identity: RateLimitBucket
    overrides: _containers.RepeatedCompositeFieldContainer[RateLimitOverride]
    routes: _containers.RepeatedCompositeFieldContainer[RouteRateLimit]
    inbound_hosts: _containers.RepeatedCompositeFieldContainer[VirtualHost]
    def __init__(self, name: _Optional[str] = ..., total: _Optional[_Union[RateLimitBucket, _Mapping]] = ..., identity: _Optional[_Union[RateLimitBucket, _Mapping]] = ..., overrides: _Optional[_Iterable[_Union[RateLimitOverride, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[RouteRateLimit, _Mapping]]] = ..., inbound_hosts: _Optional[_Iterable[_Union[VirtualHost, _Mapping]]] = ...) -> None: ...

class RouteRateLimit(_message.Message):
    __slots__ = ("route", "total", "identity", "overrides")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    route: str
    total: RateLimitBucket
    identity: RateLimitBucket
    overrides: _containers.RepeatedCompositeFieldContainer[RateLimitOverride]
    def __init__(self, route: _Optional[str] = ..., total: _Optional[_Union[RateLimitBucket, _Mapping]] = ..., identity: _Optional[_Union[RateLimitBucket, _Mapping]] = ..., overrides: _Optional[_Iterable[_Union[RateLimitOverride, _Mapping]]] = ...) -> None: ...

class RateLimitBucket(_message.Message):
    __slots__ = ("requests_per_second", "burst")
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    requests_per_second: int
    burst: int
    def __init__(self, requests_per_second: _Optional[int] = ..., burst: _Optional[int] = ...) -> None: ...

class RateLimitOverride(_message.Message):
    __slots__ = ("limit", "principals")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    limit: RateLimitBucket
    principals: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, limit: _Optional[_Union[RateLimitBucket, _Mapping]] = ..., principals: _Optional[_Iterable[str]] = ...) -> None: ...

class AuthorizationPolicy(_message.Message):
    __slots__ = ("name", "action", "rules")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    name: str
    action: AuthzAction
    rules: _containers.RepeatedCompositeFieldContainer[AuthorizationRule]
    def __init__(self, name: _Optional[str] = ..., action: _Optional[_Union[AuthzAction, str]] = ..., rules: _Optional[_Iterable[_Union[AuthorizationRule, _Mapping]]] = ...) -> None: ...

class AuthorizationRule(_message.Message):
    __slots__ = ("principals", "namespaces", "methods", "paths", "request_principals", "not_request_principals", "when")
    PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    NOT_REQUEST_PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    WHEN_FIELD_NUMBER: _ClassVar[int]
    principals: _containers.RepeatedScalarFieldContainer[str]
    namespaces: _containers.RepeatedScalarFieldContainer[str]
    methods: _containers.RepeatedScalarFieldContainer[str]
    paths: _containers.RepeatedScalarFieldContainer[str]
    request_principals: _containers.RepeatedScalarFieldContainer[str]
    not_request_principals: _containers.RepeatedScalarFieldContainer[str]
    when: _containers.RepeatedCompositeFieldContainer[AuthorizationCondition]
    def __init__(self, principals: _Optional[_Iterable[str]] = ..., namespaces: _Optional[_Iterable[str]] = ..., methods: _Optional[_Iterable[str]] = ..., paths: _Optional[_Iterable[str]] = ..., request_principals: _Optional[_Iterable[str]] = ..., not_request_principals: _Optional[_Iterable[str]] = ..., when: _Optional[_Iterable[_Union[AuthorizationCondition, _Mapping]]] = ...) -> None: ...

class AuthorizationCondition(_message.Message):
    __slots__ = ("key", "values", "not_values")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    NOT_VALUES_FIELD_NUMBER: _ClassVar[int]
    key: str
    values: _containers.RepeatedScalarFieldContainer[str]
    not_values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ..., not_values: _Optional[_Iterable[str]] = ...) -> None: ...

class GatewayListener(_message.Message):
    __slots__ = ("name", "port", "servers", "virtual_hosts", "tls_routes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_HOSTS_FIELD_NUMBER: _ClassVar[int]
    TLS_ROUTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    port: int
    servers: _containers.RepeatedCompositeFieldContainer[GatewayServer]
    virtual_hosts: _containers.RepeatedCompositeFieldContainer[VirtualHost]
    tls_routes: _containers.RepeatedCompositeFieldContainer[TlsRoute]
    def __init__(self, name: _Optional[str] = ..., port: _Optional[int] = ..., servers: _Optional[_Iterable[_Union[GatewayServer, _Mapping]]] = ..., virtual_hosts: _Optional[_Iterable[_Union[VirtualHost, _Mapping]]] = ..., tls_routes: _Optional[_Iterable[_Union[TlsRoute, _Mapping]]] = ...) -> None: ...

class GatewayServer(_message.Message):
    __slots__ = ("name", "hosts", "protocol", "tls")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    name: str
    hosts: _containers.RepeatedScalarFieldContainer[str]
    protocol: str
    tls: GatewayTls
    def __init__(self, name: _Optional[str] = ..., hosts: _Optional[_Iterable[str]] = ..., protocol: _Optional[str] = ..., tls: _Optional[_Union[GatewayTls, _Mapping]] = ...) -> None: ...

class GatewayTls(_message.Message):
    __slots__ = ("mode", "https_redirect", "cert_chain_pem", "private_key_pem", "ca_pem", "cert_file", "key_file", "ca_file", "credential_error", "min_protocol_version", "max_protocol_version", "client_subject_alt_names")
    MODE_FIELD_NUMBER: _ClassVar[int]
    HTTPS_REDIRECT_FIELD_NUMBER: _ClassVar[int]
    CERT_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    CERT_FILE_FIELD_NUMBER: _ClassVar[int]
    KEY_FILE_FIELD_NUMBER: _ClassVar[int]
    CA_FILE_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_ERROR_FIELD_NUMBER: _ClassVar[int]
    MIN_PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SUBJECT_ALT_NAMES_FIELD_NUMBER: _ClassVar[int]
    mode: GatewayTlsMode
    https_redirect: bool
    cert_chain_pem: str
    private_key_pem: str
    ca_pem: str
    cert_file: str
    key_file: str
    ca_file: str
    credential_error: str
    min_protocol_version: str
    max_protocol_version: str
    client_subject_alt_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, mode: _Optional[_Union[GatewayTlsMode, str]] = ..., https_redirect: _Optional[bool] = ..., cert_chain_pem: _Optional[str] = ..., private_key_pem: _Optional[str] = ..., ca_pem: _Optional[str] = ..., cert_file: _Optional[str] = ..., key_file: _Optional[str] = ..., ca_file: _Optional[str] = ..., credential_error: _Optional[str] = ..., min_protocol_version: _Optional[str] = ..., max_protocol_version: _Optional[str] = ..., client_subject_alt_names: _Optional[_Iterable[str]] = ...) -> None: ...

class TlsRoute(_message.Message):
    __slots__ = ("sni_hosts", "clusters", "origin")
    SNI_HOSTS_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    sni_hosts: _containers.RepeatedScalarFieldContainer[str]
    clusters: _containers.RepeatedCompositeFieldContainer[WeightedCluster]
    origin: str
    def __init__(self, sni_hosts: _Optional[_Iterable[str]] = ..., clusters: _Optional[_Iterable[_Union[WeightedCluster, _Mapping]]] = ..., origin: _Optional[str] = ...) -> None: ...
