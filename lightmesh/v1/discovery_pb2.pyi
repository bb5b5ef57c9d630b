from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Node(_message.Message):
    __slots__ = ("id", "workload", "namespace", "labels", "service_account", "sidecar_version", "registrations", "proxy_type")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    SIDECAR_VERSION_FIELD_NUMBER: _ClassVar[int]
    REGISTRATIONS_FIELD_NUMBER: _ClassVar[int]
    PROXY_TYPE_FIELD_NUMBER: _ClassVar[int]
    id: str
    workload: str
    namespace: str
    labels: _containers.ScalarMap[str, str]
    service_account: str
    sidecar_version: str
    registrations: _containers.RepeatedCompositeFieldContainer[ServiceRegistration]
    proxy_type: str
    def __init__(self, id: _Optional[str] = ..., workload: _Optional[str] = ..., namespace: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., service_account: _Optional[str] = ..., sidecar_version: _Optional[str] = ..., registrations: _Optional[_Iterable[_Union[ServiceRegistration, _Mapping]]] = ..., proxy_type: _Optional[str] = ...) -> None: ...

class ServiceRegistration(_message.Message):
    __slots__ = ("service", "address", "port", "app_protocol")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    APP_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    service: str
    address: str
    port: int
    app_protocol: str
    def __init__(self, service: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., app_protocol: _Optional[str] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class DeltaDiscoveryRequest(_message.Message):
    __slots__ = ("node", "type_url", "resource_names_subscribe", "resource_names_unsubscribe", "initial_resource_versions", "response_nonce", "error_detail", "initial_resources_digest", "traffic_report")
    class InitialResourceVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAMES_SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAMES_UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_RESOURCE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_NONCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    INITIAL_RESOURCES_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_REPORT_FIELD_NUMBER: _ClassVar[int]
    node: Node
    type_url: str
    resource_names_subscribe: _containers.RepeatedScalarFieldContainer[str]
    resource_names_unsubscribe: _containers.RepeatedScalarFieldContainer[str]
    initial_resource_versions: _containers.ScalarMap[str, str]
    response_nonce: str
    error_detail: ErrorDetail
    initial_resources_digest: str
    traffic_report: TrafficReport
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., type_url: _Optional[str] = ..., resource_names_subscribe: _Optional[_Iterable[str]] = ..., resource_names_unsubscribe: _Optional[_Iterable[str]] = ..., initial_resource_versions: _Optional[_Mapping[str, str]] = ..., response_nonce: _Optional[str] = ..., error_detail: _Optional[_Union[ErrorDetail, _Mapping]] = ..., initial_resources_digest: _Optional[str] = ..., traffic_report: _Optional[_Union[TrafficReport, _Mapping]] = ...) -> None: ...

class TrafficReport(_message.Message):
    __slots__ = ("app", "version", "services", "duration_bounds", "edges", "clusters", "truncated")
    APP_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    DURATION_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    app: str
    version: str
    services: _containers.RepeatedScalarFieldContainer[str]
    duration_bounds: _containers.RepeatedScalarFieldContainer[float]
    edges: _containers.RepeatedCompositeFieldContainer[EdgeCounters]
    clusters: _containers.RepeatedCompositeFieldContainer[ClusterCounters]
    truncated: bool
    def __init__(self, app: _Optional[str] = ..., version: _Optional[str] = ..., services: _Optional[_Iterable[str]] = ..., duration_bounds: _Optional[_Iterable[float]] = ..., edges: _Optional[_Iterable[_Union[EdgeCounters, _Mapping]]] = ..., clusters: _Optional[_Iterable[_Union[ClusterCounters, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class EdgeCounters(_message.Message):
    __slots__ = ("reporter", "source_workload", "source_namespace", "destination_service", "destination_subset", "destination_workload", "response_code", "response_flags", "mtls", "requests", "duration_buckets", "duration_seconds")
    REPORTER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_SUBSET_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CODE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FLAGS_FIELD_NUMBER: _ClassVar[int]
    MTLS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DURATION_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    reporter: str
    source_workload: str
    source_namespace: str
    destination_service: str
    destination_subset: str
    destination_workload: str
    response_code: int
    response_flags: str
    mtls: bool
    requests: int
    duration_buckets: _containers.RepeatedScalarFieldContainer[int]
    duration_seconds: float
    def __init__(self, reporter: _Optional[str] = ..., source_workload: _Optional[str] = ..., source_namespace: _Optional[str] = ..., destination_service: _Optional[str] = ..., destination_subset: _Optional[str] = ..., destination_workload: _Optional[str] = ..., response_code: _Optional[int] = ..., response_flags: _Optional[str] = ..., mtls: _Optional[bool] = ..., requests: _Optional[int] = ..., duration_buckets: _Optional[_Iterable[int]] = ..., duration_seconds: _Optional[float] = ...) -> None: ...

class ClusterCounters(_message.Message):
    __slots__ = ("service", "subset", "overflows", "ejections", "ejected", "retries")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SUBSET_FIELD_NUMBER: _ClassVar[int]
    OVERFLOWS_FIELD_NUMBER: _ClassVar[int]
    EJECTIONS_FIELD_NUMBER: _ClassVar[int]
    EJECTED_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    service: str
    subset: str
    overflows: int
    ejections: int
    ejected: int
    retries: int
    def __init__(self, service: _Optional[str] = ..., subset: _Optional[str] = ..., overflows: _Optional[int] = ..., ejections: _Optional[int] = ..., ejected: _Optional[int] = ..., retries: _Optional[int] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("version", "resource", "name")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    version: str
    resource: _any_pb2.Any
    name: str
    def __init__(self, version: _Optional[str] = ..., resource: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class DeltaDiscoveryResponse(_message.Message):
    __slots__ = ("system_version_info", "resources", "type_url", "nonce", "removed_resources")
    SYSTEM_VERSION_INFO_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    REMOVED_RESOURCES_FIELD_NUMBER: _ClassVar[int]
    system_version_info: str
    resources: _containers.RepeatedCompositeFieldContainer[Resource]
    type_url: str
    nonce: str
    removed_resources: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, system_version_info: _Optional[str] = ..., resources: _Optional[_Iterable[_Union[Resource, _Mapping]]] = ..., type_url: _Optional[str] = ..., nonce: _Optional[str] = ..., removed_resources: _Optional[_Iterable[str]] = ...) -> None: ...

class CertificateRequest(_message.Message):
    __slots__ = ("csr_pem", "validity_seconds", "namespace", "service_account")
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    VALIDITY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    csr_pem: str
    validity_seconds: int
    namespace: str
    service_account: str
    def __init__(self, csr_pem: _Optional[str] = ..., validity_seconds: _Optional[int] = ..., namespace: _Optional[str] = ..., service_account: _Optional[str] = ...) -> None: ...

class CertificateResponse(_message.Message):
    __slots__ = ("cert_chain_pem", "trust_bundle_pem", "spiffe_id", "serial", "not_after_unix")
    CERT_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    cert_chain_pem: str
    trust_bundle_pem: str
    spiffe_id: str
    serial: str
    not_after_unix: int
    def __init__(self, cert_chain_pem: _Optional[str] = ..., trust_bundle_pem: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., serial: _Optional[str] = ..., not_after_unix: _Optional[int] = ...) -> None: ...
