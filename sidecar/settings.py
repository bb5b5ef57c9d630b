"""Everything a sidecar is started with, as one frozen value passed down from `app.run`.

Built from the `lightmesh sidecar` flags (and their LIGHTMESH_* environment defaults) by
lightmeshctl/flags/sidecar.py; tests and benchmarks build it directly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the sidecar is started with."""

    control_plane: str = "127.0.0.1:15010"
    workload: str
    # "sidecar", or "gateway": an ingress gateway (`lightmesh gateway`), whose listeners are the
    # ports of the Gateways selecting its labels (no outbound, inbound or app).
    mode: str = "sidecar"
    namespace: str = "default"
    services: tuple[str, ...] = ()
    # Local mode: the protocol a service is served with (`--service catalog:grpc`), registered
    # with it as the Kubernetes Service port's appProtocol would say; (service, protocol) pairs.
    service_protocols: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    service_account: str = "default"
    app_host: str = "127.0.0.1"
    app_port: int = 0  # 0: no inbound listener
    # The app port's protocol (lightmesh/protocols.py): "grpc"/"http2" get HTTP/2 (h2c), "http"
    # HTTP/1.1; "": h2c for gRPC calls, HTTP/1.1 for the rest.
    app_protocol: str = ""
    bind: str = "127.0.0.1"
    advertise: str = ""  # address other sidecars reach this one at; default: bind
    outbound_port: int = 15001
    inbound_port: int = 15006
    # The admin interface (config dump, certificates, quit, and /metrics, /ready too) listens on
    # 127.0.0.1 only, whatever `bind` says: nothing outside the pod may read or stop the proxy.
    admin_port: int = 15000
    # Prometheus /metrics and the kubelet's /ready, /healthz (nothing else), on `bind`: what must
    # be reachable from outside the pod. 0: not served (local mode; the admin port has them).
    metrics_port: int = 0
    max_regex_length: int = 1024
    drain_timeout: float = 5.0
    # On SIGTERM /ready turns 503 at once, listeners keep serving this long (so load balancers
    # and endpoint lists stop sending new work), then stop accepting and drain.
    drain_delay: float = 0.0
    log_level: str = "info"
    # Trust bundle for the control plane's TLS (and the first trust roots); None: plaintext.
    ca_bundle: str = ""
    # Bearer token for certificate requests: the bootstrap token (local mode) or the projected
    # ServiceAccount token (cluster mode). Empty: no workload certificate.
    token_file: str = ""
    cert_ttl: int = 0  # requested certificate lifetime, seconds; 0: the control plane's default
    identity_dir: str = ""  # where key/cert files live (0700); default: a private temp dir
    # The outbound listener receives connections redirected by iptables: route a request whose
    # Host names no service by the address the app dialled (SO_ORIGINAL_DST).
    intercept: bool = False
    metrics: bool = True  # request metrics (off only to measure their cost)
    istio_metrics: bool = False  # also expose Istio's standard metric names and labels
    zipkin_url: str = ""  # Zipkin v2 endpoint (http://host:port/api/v2/spans); "": no tracing
    trace_sampling: float = 1.0  # percent of new traces sampled (an incoming decision wins)
    access_log: str = ""  # "-": stdout, a path: that file, "": off
    # Seconds between traffic reports on the config stream (the control plane's dashboard); 0: off.
    report_interval: float = 5.0
    # The inbound listener watches its app: while the app refuses connections, requests are
    # answered at once as never delivered (503 UF, marked for the calling sidecar) and, once the
    # app has answered since start, /ready says 503 (docs/reliability.md).
    app_health: bool = True
    # Clusters eject endpoints that refuse connections or whose sidecar reports its app gone
    # (local-origin failures), briefly, on top of any DestinationRule outlierDetection.
    default_ejection: bool = True
    # Routes without VirtualService retries retry requests no app saw (connect failures, and
    # 503s a server-side sidecar marked never-processed), twice, on other endpoints, any method.
    default_retries: bool = True
