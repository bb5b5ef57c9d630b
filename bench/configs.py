"""Configs for the backend and the reference proxies, written into the run's temp directory.

- backend: nginx, one worker, answers GET /1k with a fixed 1 KiB body from memory, no access log,
  keep-alive connections that are never recycled during a run.
- nginx as a proxy: one worker, an upstream keep-alive pool to the backend.
- haproxy: `nbthread 1`, HTTP mode, keep-alive on both sides, `http-reuse always`.
Neither proxy logs requests (the sidecar keeps its metrics on, as in production).
"""

from __future__ import annotations

from pathlib import Path

BODY_PATH = "/1k"
BODY = "x" * 1023 + "\n"  # 1 KiB exactly


def _nginx_common(work: Path, name: str) -> str:
    temp = work / f"{name}-tmp"
    temp.mkdir(exist_ok=True)
    return f"""
worker_processes 1;
daemon off;
master_process on;
pid {work}/{name}.pid;
error_log {work}/{name}-error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
"""


def _nginx_http_common(work: Path, name: str) -> str:
    temp = work / f"{name}-tmp"
    return f"""
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
"""


def nginx_backend(work: Path, port: int) -> Path:
    """The origin server: 1 KiB at BODY_PATH."""
    path = work / "nginx-backend.conf"
    path.write_text(
        _nginx_common(work, "nginx-backend")
        + "http {\n"
        + _nginx_http_common(work, "nginx-backend")
        + f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = {BODY_PATH} {{
            default_type application/octet-stream;
            return 200 "{BODY[:-1]}\\n";
        }}
        location / {{ return 404; }}
    }}
}}
"""
    )
    return path


def nginx_proxy(work: Path, port: int, backend_port: int) -> Path:
    """nginx as a reverse proxy in front of the backend."""
    path = work / "nginx-proxy.conf"
    path.write_text(
        _nginx_common(work, "nginx-proxy")
        + "http {\n"
        + _nginx_http_common(work, "nginx-proxy")
        + f"""
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 128;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    )
    return path


def _haproxy_common(work: Path, name: str) -> str:
    return f"""
global
    nbthread 1
    maxconn 4096
    pidfile {work}/{name}.pid

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
"""


def haproxy(work: Path, port: int, backend_port: int) -> Path:
    """haproxy, one thread, in front of the backend."""
    path = work / "haproxy.cfg"
    path.write_text(
        _haproxy_common(work, "haproxy")
        + f"""
frontend bench
    bind 127.0.0.1:{port}
    default_backend nginx

backend nginx
    http-reuse always
    server backend 127.0.0.1:{backend_port}
"""
    )
    return path


def plaintext_rule(service: str) -> str:
    """A DestinationRule keeping `service` in plaintext between sidecars (the other pair is mTLS)."""
    return f"""apiVersion: lightmesh.io/v1alpha1
kind: DestinationRule
metadata: {{name: {service}, namespace: default}}
spec:
  host: {service}
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
"""


def nginx_grpc(work: Path, port: int, backend_port: int) -> Path:
    """nginx as a gRPC proxy (`grpc_pass`, h2c both sides, a keep-alive upstream pool)."""
    path = work / "nginx-grpc.conf"
    path.write_text(
        _nginx_common(work, "nginx-grpc")
        + "http {\n"
        + _nginx_http_common(work, "nginx-grpc")
        + f"""
    upstream grpc_backend {{
        server 127.0.0.1:{backend_port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;
        http2_max_requests 10000000;
        location / {{ grpc_pass grpc://grpc_backend; }}
    }}
}}
"""
    )
    return path


def haproxy_grpc(work: Path, port: int, backend_port: int) -> Path:
    """haproxy, one thread, HTTP/2 (h2c) on both sides: gRPC passes as HTTP/2."""
    path = work / "haproxy-grpc.cfg"
    path.write_text(
        _haproxy_common(work, "haproxy-grpc")
        + f"""
frontend grpc
    bind 127.0.0.1:{port} proto h2
    default_backend grpc_servers

backend grpc_servers
    http-reuse always
    server app 127.0.0.1:{backend_port} proto h2
"""
    )
    return path
