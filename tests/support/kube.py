"""A real, throw-away Kubernetes control plane (etcd + kube-apiserver) on loopback.

Envtest-style: the binaries come from ``scripts/k8s/build.sh`` (built from Go modules and cached
per version), certificates are generated in-process with ``cryptography``, and the admin user is a
client certificate in ``system:masters``. Nothing else runs: no controller manager, scheduler or
kubelet, so namespaces never finish deleting and pods never start. The code here is not tied to
pytest so scripts can reuse it::

    with KubeCluster.start(work_dir, build_binaries()) as kube:
        kube.kubectl("get", "namespaces")
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "k8s" / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kubectl")

READY_TIMEOUT = 60.0  # etcd healthy + apiserver /readyz + namespace "default", on 2 cores
STOP_TIMEOUT = 20.0
LOG_TAIL_LINES = 40
# Room for the 1,000+ ClusterIP services `bench controlplane` creates (a /24 holds 254).
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/16"
# Used as --advertise-address when the machine has no non-loopback IPv4 address (TEST-NET-1:
# nothing ever connects to it here); the endpoint reconciler is then switched off.
FALLBACK_ADVERTISE_ADDRESS = "192.0.2.10"


class KubeError(RuntimeError):
    """The control plane failed to build, start or answer; the message carries the log tails."""


class KubectlError(KubeError):
    """``kubectl`` exited non-zero; the message carries its stderr."""

    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        command = " ".join(str(arg) for arg in result.args)
        super().__init__(
            f"{command} exited {result.returncode}\n"
            f"--- stderr ---\n{result.stderr.strip()}\n--- stdout ---\n{result.stdout.strip()}"
        )


# --------------------------------------------------------------------------------------- binaries


def build_binaries(*, echo: IO[str] | None = None) -> Path:
    """Run ``scripts/k8s/build.sh`` (a no-op when the binaries exist) and return the bin dir.

    The script's progress (its stderr) goes to ``echo`` when given, else it is kept and only
    shown if the build fails.
    """
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        stderr=echo if echo is not None else subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise KubeError(
            f"{BUILD_SCRIPT} exited {result.returncode}\n{(result.stderr or '').strip()[-4000:]}"
        )
    lines = result.stdout.strip().splitlines()
    bin_dir = Path(lines[-1]) if lines else Path()
    missing = [name for name in BINARIES if not (bin_dir / name).is_file()]
    if missing:
        raise KubeError(f"{BUILD_SCRIPT} printed {bin_dir} but it lacks {', '.join(missing)}")
    return bin_dir


# ------------------------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Pki:
    """Paths of the certificates and keys the control plane uses (PEM files)."""

    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    service_account_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    extensions: Sequence[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _key_usage(*, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def generate_pki(directory: Path) -> Pki:
    """Write a CA, a serving cert for 127.0.0.1/localhost, an admin client cert and an SA key.

    One CA signs both the serving and the client certificate (fine for tests). The admin is
    ``CN=admin, O=system:masters``. The service-account key is RSA because it signs tokens.
    """
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        ca_cert=directory / "ca.crt",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        service_account_key=directory / "sa.key",
    )
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lightmesh-test-ca")])
    ca = _certificate(
        ca_name,
        ca_key,
        ca_name,
        ca_key,
        [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (_key_usage(cert_sign=True), True),
        ],
    )
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving = _certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        serving_key,
        ca_name,
        ca_key,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    ]
                ),
                False,
            ),
        ],
    )
    pki.serving_cert.write_bytes(serving.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.serving_key, serving_key)

    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin = _certificate(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
            ]
        ),
        admin_key,
        ca_name,
        ca_key,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        ],
    )
    pki.admin_cert.write_bytes(admin.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.admin_key, admin_key)

    _write_key(
        pki.service_account_key, rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    return pki


# ---------------------------------------------------------------------------------------- network


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def advertise_address() -> str | None:
    """The IPv4 address of the interface holding the default route, or None without one.

    kube-apiserver refuses a loopback --advertise-address; nothing connects to this one.
    Connecting a UDP socket sends no packet, it only asks the kernel for a route.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1; any routable address would do
        except OSError:
            return None
        address: str = sock.getsockname()[0]
    return None if ipaddress.IPv4Address(address).is_loopback else address


# ------------------------------------------------------------------------------------- processes


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT)


def _spawn(name: str, argv: Sequence[str | Path], log: Path) -> _Process:
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [str(arg) for arg in argv], stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    return _Process(name, popen, log)


def _kubeconfig(server: str, pki: Pki) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "lightmesh-test",
                "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate": str(pki.admin_cert),
                    "client-key": str(pki.admin_key),
                },
            }
        ],
        "contexts": [
            {"name": "lightmesh-test", "context": {"cluster": "lightmesh-test", "user": "admin"}}
        ],
        "current-context": "lightmesh-test",
    }


@dataclass
class KubeCluster:
    """A running etcd + kube-apiserver pair; a context manager that stops exactly what it started.

    ``kubeconfig`` authenticates as the admin (``system:masters``); ``kubectl()`` runs the
    kubectl built with the server; ``api_client()`` returns a ``kubernetes.client.ApiClient``.
    """

    work_dir: Path
    bin_dir: Path
    pki: Pki
    kubeconfig: Path
    server: str
    startup_seconds: float = 0.0
    _processes: list[_Process] = field(default_factory=list, repr=False)
    _api_clients: list[Any] = field(default_factory=list, repr=False)

    # -- lifecycle

    @classmethod
    def start(cls, work_dir: Path, bin_dir: Path, *, attempts: int = 3) -> KubeCluster:
        """Start etcd and kube-apiserver on fresh loopback ports; ready when this returns.

        A start that lost a port race ("address already in use") is retried with new ports;
        any other failure raises KubeError with the tails of both logs.
        """
        work_dir.mkdir(parents=True, exist_ok=True)
        pki = generate_pki(work_dir / "pki")
        for attempt in range(1, attempts + 1):
            cluster = cls._launch(work_dir / f"run-{attempt}", bin_dir, pki)
            try:
                cluster._wait_ready()
            except KubeError as exc:
                cluster.stop()
                lost_port_race = "address already in use" in str(exc)
                if lost_port_race and attempt < attempts:
                    continue
                raise
            return cluster
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _launch(cls, run_dir: Path, bin_dir: Path, pki: Pki) -> KubeCluster:
        run_dir.mkdir(parents=True)
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        server = f"https://127.0.0.1:{api_port}"
        kubeconfig = run_dir / "kubeconfig"
        kubeconfig.write_text(json.dumps(_kubeconfig(server, pki), indent=2))
        kubeconfig.chmod(0o600)
        cluster = cls(run_dir, bin_dir, pki, kubeconfig, server)
        cluster._began = time.monotonic()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        cluster._processes.append(
            _spawn(
                "etcd",
                [
                    bin_dir / "etcd",
                    f"--name=lightmesh-test-{etcd_port}",
                    f"--data-dir={run_dir / 'etcd-data'}",
                    f"--listen-client-urls={etcd_url}",
                    f"--advertise-client-urls={etcd_url}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-cluster=lightmesh-test-{etcd_port}=http://127.0.0.1:{peer_port}",
                    "--unsafe-no-fsync=true",
                    "--log-level=warn",
                ],
                run_dir / "etcd.log",
            )
        )
        address = advertise_address()
        apiserver_args: list[str | Path] = [
            bin_dir / "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--advertise-address={address or FALLBACK_ADVERTISE_ADDRESS}",
            f"--cert-dir={run_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={server}",
            f"--service-account-key-file={pki.service_account_key}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            # No controller manager creates "default" service accounts.
            "--disable-admission-plugins=ServiceAccount",
            "--profiling=false",
            "--v=1",
        ]
        if address is None:
            apiserver_args.append("--endpoint-reconciler-type=none")
        cluster._apiserver_args = apiserver_args
        cluster._etcd_url = etcd_url
        return cluster

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver (breaking every watch) and start it again on the same port and etcd."""
        apiserver = next(p for p in self._processes if p.name == "kube-apiserver")
        apiserver.stop()
        self._processes.remove(apiserver)
        self._processes.append(
            _spawn("kube-apiserver", self._apiserver_args, self.work_dir / "apiserver.log")
        )
        self._poll(
            f"{self.server}/readyz",
            time.monotonic() + READY_TIMEOUT,
            context=self.ssl_context(),
            processes=self._processes,
        )

    def _wait_ready(self) -> None:
        deadline = self._began + READY_TIMEOUT
        self._poll(f"{self._etcd_url}/health", deadline, context=None, processes=self._processes)
        self._processes.append(
            _spawn("kube-apiserver", self._apiserver_args, self.work_dir / "apiserver.log")
        )
        context = self.ssl_context()
        self._poll(f"{self.server}/readyz", deadline, context=context, processes=self._processes)
        # /readyz can pass a moment before the bootstrap controller has created "default".
        self._poll(
            f"{self.server}/api/v1/namespaces/default",
            deadline,
            context=context,
            processes=self._processes,
        )
        self.startup_seconds = time.monotonic() - self._began

    def _poll(
        self,
        url: str,
        deadline: float,
        *,
        context: ssl.SSLContext | None,
        processes: Sequence[_Process],
    ) -> None:
        """GET ``url`` until it answers 200; fail early when a process exits or time runs out."""
        last = "no answer yet"
        delay = 0.05
        while True:
            for process in processes:
                code = process.popen.poll()
                if code is not None:
                    raise self._failure(f"{process.name} exited {code} while waiting for {url}")
            try:
                # Only the http(s) URLs built above reach here.
                with urllib.request.urlopen(url, timeout=5, context=context) as response:  # noqa: S310
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}: {exc.read()[:500].decode(errors='replace')}"
                exc.close()
            except (OSError, ssl.SSLError) as exc:
                last = repr(exc)
            if time.monotonic() >= deadline:
                raise self._failure(f"{url} not ready within {READY_TIMEOUT:.0f}s ({last})")
            time.sleep(delay)  # bounded polling; the deadline above ends it
            delay = min(delay * 2, 0.5)

    def _failure(self, message: str) -> KubeError:
        return KubeError(f"{message}\n{self.log_tails()}")

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of each process log, apiserver first."""
        return "\n".join(
            f"--- {process.name} ({process.log}) ---\n{process.tail(lines)}"
            for process in reversed(self._processes)
        )

    def stop(self) -> None:
        """Stop the processes this cluster started, apiserver first, then etcd."""
        for client in self._api_clients:
            with contextlib.suppress(Exception):
                client.close()
        self._api_clients.clear()
        for process in reversed(self._processes):
            process.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- clients

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS context trusting the test CA and presenting the admin client certificate."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster as admin.

        Raises KubectlError (with stderr) on a non-zero exit unless ``check`` is False.
        """
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(result)
        return result

    def kubectl_json(self, *args: str, input: str | None = None) -> Any:
        """Run kubectl with ``-o json`` and return the decoded output."""
        return json.loads(self.kubectl(*args, "-o", "json", input=input).stdout)

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this cluster, closed by ``stop()``."""
        from kubernetes import config  # the client library is heavy; import on demand

        client: Any = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        self._api_clients.append(client)
        return client

    # attributes set by _launch, kept out of the constructor
    _began: float = field(default=0.0, init=False, repr=False)
    _etcd_url: str = field(default="", init=False, repr=False)
    _apiserver_args: list[str | Path] = field(default_factory=list, init=False, repr=False)


@contextlib.contextmanager
def running_cluster(work_dir: Path, *, echo: IO[str] | None = None) -> Iterator[KubeCluster]:
    """Build the binaries if needed, start a cluster in ``work_dir``, stop it on exit."""
    with KubeCluster.start(work_dir, build_binaries(echo=echo)) as cluster:
        yield cluster
