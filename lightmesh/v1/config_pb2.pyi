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
ROUND_ROBIN: LbPolicy
LEAST_REQUEST: LbPolicy
RANDOM: LbPolicy

class RouteConfiguration(_message.Message):
    __slots__ = ("name", "virtual_hosts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_HOSTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    virtual_hosts: _containers.RepeatedCompositeFieldContainer[VirtualHost]
    def __init__(self, name: _Optional[str] = ..., virtual_hosts: _Optional[_Iterable[_Union[VirtualHost, _Mapping]]] = ...) -> None: ...

class VirtualHost(_message.Message):
    __slots__ = ("name", "domains", "routes", "origin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    domains: _containers.RepeatedScalarFieldContainer[str]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    origin: str
    def __init__(self, name: _Optional[str] = ..., domains: _Optional[_Iterable[str]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., origin: _Optional[str] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("name", "matches", "clusters", "timeout_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    matches: _containers.RepeatedCompositeFieldContainer[RouteMatch]
    clusters: _containers.RepeatedCompositeFieldContainer[WeightedCluster]
    timeout_ms: int
    def __init__(self, name: _Optional[str] = ..., matches: _Optional[_Iterable[_Union[RouteMatch, _Mapping]]] = ..., clusters: _Optional[_Iterable[_Union[WeightedCluster, _Mapping]]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class StringMatch(_message.Message):
    __slots__ = ("exact", "prefix", "regex")
    EXACT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    exact: str
    prefix: str
    regex: str
    def __init__(self, exact: _Optional[str] = ..., prefix: _Optional[str] = ..., regex: _Optional[str] = ...) -> None: ...

class HeaderMatch(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: StringMatch
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[StringMatch, _Mapping]] = ...) -> None: ...

class QueryParamMatch(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: StringMatch
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[StringMatch, _Mapping]] = ...) -> None: ...

class RouteMatch(_message.Message):
    __slots__ = ("uri", "headers", "method", "query_params")
    URI_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    QUERY_PARAMS_FIELD_NUMBER: _ClassVar[int]
    uri: StringMatch
    headers: _containers.RepeatedCompositeFieldContainer[HeaderMatch]
    method: StringMatch
    query_params: _containers.RepeatedCompositeFieldContainer[QueryParamMatch]
    def __init__(self, uri: _Optional[_Union[StringMatch, _Mapping]] = ..., headers: _Optional[_Iterable[_Union[HeaderMatch, _Mapping]]] = ..., method: _Optional[_Union[StringMatch, _Mapping]] = ..., query_params: _Optional[_Iterable[_Union[QueryParamMatch, _Mapping]]] = ...) -> None: ...

class WeightedCluster(_message.Message):
    __slots__ = ("cluster", "weight")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    weight: int
    def __init__(self, cluster: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class Cluster(_message.Message):
    __slots__ = ("name", "service", "subset", "lb_policy", "connect_timeout_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SUBSET_FIELD_NUMBER: _ClassVar[int]
    LB_POLICY_FIELD_NUMBER: _ClassVar[int]
    CONNECT_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    service: str
    subset: str
    lb_policy: LbPolicy
    connect_timeout_ms: int
    def __init__(self, name: _Optional[str] = ..., service: _Optional[str] = ..., subset: _Optional[str] = ..., lb_policy: _Optional[_Union[LbPolicy, str]] = ..., connect_timeout_ms: _Optional[int] = ...) -> None: ...

class ClusterLoadAssignment(_message.Message):
    __slots__ = ("cluster_name", "endpoints")
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, cluster_name: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("address", "port", "workload", "labels")
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
    address: str
    port: int
    workload: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ..., workload: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...
