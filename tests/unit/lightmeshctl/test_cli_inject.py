"""`lightmesh inject`, `lightmesh intercept --dry-run` and `lightmesh wait-ready` as a user runs them."""

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from lightmeshctl.cli import main

MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: web:1}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
"""


def test_inject_writes_every_document_with_pod_templates_injected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(MANIFEST)
    assert main(["inject", "-f", str(path), "--proxy-image", "proxy:9"]) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in documents] == ["Deployment", "Service"]
    containers = documents[0]["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [
        ("lightmesh-proxy", "proxy:9"),
        ("web", "web:1"),
    ]
    assert documents[1] == yaml.safe_load(MANIFEST.split("---")[1])


def test_inject_reads_stdin_and_is_idempotent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(MANIFEST))
    assert main(["inject", "-f", "-"]) == 0
    once = capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO(once))
    assert main(["inject", "-f", "-", "-v"]) == 0
    captured = capsys.readouterr()
    assert captured.out == once
    assert "stdin: document 1 (Deployment web): not injected (already injected)" in captured.err


def test_inject_errors_name_the_file_and_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        MANIFEST.replace(
            "metadata: {labels: {app: web}}",
            "metadata: {labels: {app: web}, annotations: {lightmesh.io/exclude-outbound-cidrs: nope}}",
        )
    )
    assert main(["inject", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: document 1 (Deployment web): spec.template.metadata.annotations" in err
    assert "'nope' is not an IP address or CIDR" in err
    assert main(["inject", "-f", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: No such file or directory" in capsys.readouterr().err


def test_intercept_dry_run_prints_the_plan_and_bad_flags_are_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["intercept", "install", "--dry-run", "--exclude-outbound-ports", "5432"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "iptables -t nat -A LIGHTMESH_OUTBOUND -p tcp --dport 5432 -j RETURN" in out
    assert out[-1] == "iptables -t nat -A OUTPUT -p tcp -j LIGHTMESH_OUTBOUND"
    assert main(["intercept", "install", "--dry-run", "--exclude-inbound-ports", "80,x"]) == 2
    assert "--exclude-inbound-ports: 'x' is not a port number" in capsys.readouterr().err
    assert main(["intercept", "install", "--dry-run", "--proxy-uid", "0"]) == 2


@pytest.fixture
def becomes_ready() -> Iterator[str]:
    """A /ready that answers 503 twice, then 200 (a real HTTP server in a thread)."""
    answers = iter([503, 503])

    class Ready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = next(answers, 200)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ready"
    server.shutdown()
    server.server_close()


def test_wait_ready_returns_once_the_proxy_is_ready(becomes_ready: str) -> None:
    assert main(["wait-ready", "--url", becomes_ready, "--timeout", "30"]) == 0


def test_wait_ready_gives_up_with_the_last_answer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wait-ready", "--url", "http://127.0.0.1:9/ready", "--timeout", "0.3"]) == 1
    assert "not ready in 0.3s" in capsys.readouterr().err
