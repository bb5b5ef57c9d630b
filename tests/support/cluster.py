"""A real single-node Kubernetes cluster in a network namespace of its own, for tests/cluster.

What runs (binaries from ``scripts/k8s/build.sh --cluster``, Debian packages from
``scripts/k8s/install-node-tools.sh``, images from ``scripts/k8s/images.sh``): etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, containerd + runc, the kubelet, kube-proxy
(iptables mode) and CoreDNS, as plain processes.

Host safety, because other sessions run network tests and servers on the same host at the same
time: every process runs in the network namespace ``lmc-<id>``, so the bridge, the pod veths,
kube-proxy's and the kubelet's iptables chains, ``ip_forward`` and every listening port (6443,
2379, 53, 10250, ...) exist only there and vanish with it; nothing is routed to or from the host's
interfaces, so pods reach nothing outside the cluster. Processes are placed in the pids cgroup
``lightmesh-<id>`` (the kubelet's ``cgroupRoot`` too), so stopping kills exactly what this cluster
started, including container shims and pods. Everything on disk lives under one state directory
(containerd root and state, netns mounts, runc root, kubelet root, pod logs, CNI IPAM, certificates,
logs); the few host-wide traces are undone on stop: the kubelet's kernel sysctls
(``vm.overcommit_memory``, ``kernel.panic``, ``kernel.panic_on_oops``, restored once the last
cluster on the host stops), its ``/var/log/containers`` links, the CNI result cache entries of the
cluster's network and the shims' sockets in ``/run/containerd/s``. ``state.json`` records enough to
do all of that again after a crash: ``down(state_dir)``, and ``sweep()`` (run before each start)
does it for every cluster whose owning process is gone.

The test process stays in the host namespace: ``run()``/``kubectl()`` start commands under
``nsenter --net``, and ``netns_pool`` is a thread pool whose threads entered the namespace, so
plain Python sockets made there reach pods, Services and port-forwards. Not tied to pytest::

    with NodeCluster.start(build_cluster_binaries(), build_images()) as cluster:
        cluster.kubectl("get", "nodes")
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.kube import (
    BUILD_SCRIPT,
    KubectlError,
    KubeError,
    StopsOnExit,
    _certificate,
    _key_usage,
    _write_key,
    self_signed_ca,
)

REPO = Path(__file__).resolve().parents[2]
IMAGES_SCRIPT = REPO / "scripts" / "k8s" / "images.sh"
CLUSTER_BINARIES = (
    "etcd",
    "kube-apiserver",
    "kubectl",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "coredns",
    "prometheus",
)
HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip", "nsenter")
CNI_PLUGINS = Path("/usr/lib/cni")

CLUSTERS_ROOT = Path(os.environ.get("LIGHTMESH_CLUSTERS", "/tmp/lightmesh-clusters"))
KERNEL_REGISTRY = Path("/run/lightmesh-cluster")  # shared by every cluster on the host
CGROUP_ROOT = Path("/sys/fs/cgroup")

NODE_NAME = "lightmesh-node"
NODE_IP = "10.244.0.1"  # the bridge: node address, apiserver, kubelet, CoreDNS, pod gateway
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/24"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CLUSTER_DOMAIN = "cluster.local"
API_PORT = 6443
PAUSE_IMAGE = "localhost/lightmesh-pause:1"  # scripts/k8s/images.sh builds it under this name
# The kubelet sets these host-wide (not per network namespace).
KUBELET_SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")

READY_TIMEOUT = 120.0  # every component up, node Ready, DNS answering, on 2 busy cores
STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 30
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


# --------------------------------------------------------------------------------------- building


def _run_script(argv: Sequence[str], echo: IO[str] | None) -> list[str]:
    result = subprocess.run(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=echo if echo is not None else subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise KubeError(
            f"{' '.join(argv)} exited {result.returncode}\n{(result.stderr or '').strip()[-4000:]}"
        )
    return result.stdout.strip().splitlines()


def build_cluster_binaries(*, echo: IO[str] | None = None) -> Path:
    """``scripts/k8s/build.sh --cluster`` (a no-op when built); the bin dir."""
    lines = _run_script(["bash", str(BUILD_SCRIPT), "--cluster"], echo)
    bin_dir = Path(lines[-1]) if lines else Path()
    missing = [name for name in CLUSTER_BINARIES if not (bin_dir / name).exists()]
    if missing:
        raise KubeError(f"{BUILD_SCRIPT} printed {bin_dir} but it lacks {', '.join(missing)}")
    return bin_dir


def build_images(*, echo: IO[str] | None = None) -> dict[str, Path]:
    """``scripts/k8s/images.sh`` (cached): image name -> docker-archive tarball."""
    images: dict[str, Path] = {}
    for line in _run_script(["bash", str(IMAGES_SCRIPT)], echo):
        name, _, tarball = line.partition(" ")
        images[name] = Path(tarball)
    if PAUSE_IMAGE not in images:
        raise KubeError(f"{IMAGES_SCRIPT} built no {PAUSE_IMAGE}: {images}")
    return images


def unavailable() -> str:
    """Why the cluster cannot run on this host, or "" when it can."""
    if os.geteuid() != 0:
        return "the cluster's kubelet, containerd and network namespace need root"
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    missing += [f"{CNI_PLUGINS}/{p}" for p in ("bridge", "host-local", "loopback")
                if not (CNI_PLUGINS / p).exists()]  # fmt: skip
    if missing:
        return f"missing {', '.join(missing)} (scripts/k8s/install-node-tools.sh installs them)"
    if not (CGROUP_ROOT / "pids" / "cgroup.procs").exists():
        return f"no cgroup v1 pids hierarchy at {CGROUP_ROOT}/pids (this cluster set-up needs it)"
    return ""


# ------------------------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class ClusterPki:
    """The cluster's CA and every certificate its components use (PEM files in one directory)."""

    directory: Path

    def cert(self, name: str) -> Path:
        """``<name>.crt``."""
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        """``<name>.key``."""
        return self.directory / f"{name}.key"

    @property
    def ca(self) -> Path:
        """The CA certificate everything trusts."""
        return self.cert("ca")

    @property
    def service_account_key(self) -> Path:
        """The RSA key that signs ServiceAccount tokens."""
        return self.directory / "sa.key"


def generate_cluster_pki(directory: Path) -> ClusterPki:
    """A CA, the apiserver's serving cert (its Service IP, node IP and DNS names), the kubelet's
    serving and client certs, the apiserver's kubelet-client cert, the admin cert, an SA key."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = ClusterPki(directory)
    ca_name, ca_key, ca = self_signed_ca("lightmesh-cluster-ca")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.key("ca"), ca_key)

    def leaf(
        name: str,
        common_name: str,
        *,
        organization: str = "",
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organization:
            attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if dns or ips else []
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(), True),
            (x509.ExtendedKeyUsage(usages), False),
        ]
        if dns or ips:
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            names += [x509.IPAddress(ipaddress.IPv4Address(ip)) for ip in ips]
            extensions.append((x509.SubjectAlternativeName(names), False))
        cert = _certificate(x509.Name(attributes), key, ca_name, ca_key, extensions)
        pki.cert(name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(pki.key(name), key)

    service_names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"]
    leaf(
        "apiserver",
        "kube-apiserver",
        dns=[*service_names, f"kubernetes.default.svc.{CLUSTER_DOMAIN}", "localhost"],
        ips=[NODE_IP, KUBERNETES_SERVICE_IP, "127.0.0.1"],
    )
    leaf("admin", "admin", organization="system:masters")
    leaf("apiserver-kubelet-client", "kube-apiserver-kubelet-client", organization="system:masters")
    leaf("kubelet-client", f"system:node:{NODE_NAME}", organization="system:nodes")
    leaf("kubelet", NODE_NAME, dns=[NODE_NAME], ips=[NODE_IP])
    _write_key(
        pki.service_account_key, rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    return pki


def _kubeconfig(pki: ClusterPki, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "lightmesh",
                "cluster": {
                    "server": f"https://{NODE_IP}:{API_PORT}",
                    "certificate-authority": str(pki.ca),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(pki.cert(user)),
                    "client-key": str(pki.key(user)),
                },
            }
        ],
        "contexts": [{"name": "lightmesh", "context": {"cluster": "lightmesh", "user": user}}],
        "current-context": "lightmesh",
    }


# ------------------------------------------------------------------------------ host primitives


_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path`` (sockets it makes live there)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def _process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (field 22 of /proc/pid/stat), "" if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str) -> bool:
    return bool(start) and _process_start(pid) == start


def _cgroup_dirs(cluster_id: str) -> list[Path]:
    """This cluster's directory in every cgroup v1 hierarchy (and the v2 one of a hybrid host)."""
    dirs = []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        if (hierarchy / "cgroup.procs").exists():
            dirs.append(hierarchy / f"lightmesh-{cluster_id}")
    return dirs


def _cgroup_pids(cgroup: Path) -> set[int]:
    pids: set[int] = set()
    # os.walk ignores directories that vanish under it (the kubelet removes pod cgroups).
    for directory, _, files in os.walk(cgroup):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError, ValueError):
                pids.update(
                    int(line) for line in Path(directory, "cgroup.procs").read_text().split()
                )
    return pids


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first."""
    prefix = str(root.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name


@contextlib.contextmanager
def _kernel_registry_lock() -> Iterator[Path]:
    KERNEL_REGISTRY.mkdir(parents=True, exist_ok=True)
    (KERNEL_REGISTRY / "users").mkdir(exist_ok=True)
    with (KERNEL_REGISTRY / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield KERNEL_REGISTRY


def _register_kernel_user(cluster_id: str, state_dir: Path) -> None:
    """Record the host's values of the kubelet's sysctls (once, for all clusters) and this user."""
    with _kernel_registry_lock() as registry:
        original = registry / "sysctls.json"
        if not original.exists():
            values = {name: _sysctl_path(name).read_text().strip() for name in KUBELET_SYSCTLS}
            original.write_text(json.dumps(values))
        (registry / "users" / cluster_id).write_text(str(state_dir))


# Paths the kubelet uses whatever its flags say (device-plugin socket, container log links); shared
# by every cluster on the host, removed (when empty) by the last one to stop.
KUBELET_FIXED_PATHS = (
    Path("/var/lib/kubelet/device-plugins/kubelet.sock"),
    Path("/var/lib/kubelet/device-plugins"),
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
)


def _release_kernel_user(cluster_id: str) -> dict[str, str] | None:
    """Drop this user. The last one (users whose state directory is gone do not count) restores
    the recorded sysctls and returns them (``{}`` if none were recorded); None while other
    clusters still run."""
    with _kernel_registry_lock() as registry:
        (registry / "users" / cluster_id).unlink(missing_ok=True)
        for user in (registry / "users").iterdir():
            state = Path(user.read_text()) / "state.json"
            if not state.exists() or json.loads(state.read_text()).get("stopped"):
                user.unlink(missing_ok=True)
        if any((registry / "users").iterdir()):
            return None
        original = registry / "sysctls.json"
        if not original.exists():
            return {}
        values: dict[str, str] = json.loads(original.read_text())
        for name, value in values.items():
            with contextlib.suppress(OSError):
                _sysctl_path(name).write_text(value)
        original.unlink()
        return values


# --------------------------------------------------------------------------------------- state


@dataclass
class ClusterState:
    """What ``state.json`` records: enough to stop and clean up the cluster from nothing else."""

    cluster_id: str
    state_dir: str
    netns: str
    bridge: str
    owner_pid: int = 0  # 0: started detached (scripts/k8s/cluster.sh up); only `down` stops it
    owner_start: str = ""
    processes: dict[str, int] = field(default_factory=dict)
    stopped: bool = False

    @property
    def path(self) -> Path:
        """The state file."""
        return Path(self.state_dir) / "state.json"

    def save(self) -> None:
        """Write atomically."""
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.__dict__, indent=2))
        temporary.replace(self.path)

    @classmethod
    def load(cls, state_dir: Path) -> ClusterState:
        """Read ``state_dir/state.json``."""
        return cls(**json.loads((state_dir / "state.json").read_text()))

    @property
    def network(self) -> str:
        """The CNI network name (it names the IPAM and result-cache entries)."""
        return f"lightmesh-{self.cluster_id}"

    @property
    def netns_path(self) -> str:
        """The bind-mounted namespace file."""
        return f"/run/netns/{self.netns}"


def down(state_dir: Path, *, purge: bool = False) -> list[str]:
    """Stop the cluster of ``state_dir`` and undo everything it did to the host; idempotent, and
    safe after a crash (nothing but ``state.json`` is needed). Keeps the logs unless ``purge``.

    Order: kubelet first (so it restarts nothing), then the pods' processes, then CoreDNS,
    kube-proxy and the control plane, then containerd and its shims; then mounts, the network
    namespace, the cgroups, the host-wide leftovers. Returns what it did, for the caller's log.
    """
    state = ClusterState.load(state_dir)
    done: list[str] = []
    pids_cgroup = CGROUP_ROOT / "pids" / f"lightmesh-{state.cluster_id}"

    def stop(name: str) -> None:
        pid = state.processes.get(name)
        if pid is None or pid not in _cgroup_pids(pids_cgroup):
            return  # gone, or the pid now belongs to someone else
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        began = time.monotonic()
        deadline = began + STOP_TIMEOUT
        while pid in _cgroup_pids(pids_cgroup) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid in _cgroup_pids(pids_cgroup):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        done.append(f"stopped {name} ({pid}) in {time.monotonic() - began:.1f}s")

    def kill_all(cgroup: Path) -> None:
        for _ in range(50):  # bounded: a fork bomb in a pod must not hang the stop
            pids = _cgroup_pids(cgroup)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    stop("kubelet")
    kill_all(pids_cgroup / "kubepods")
    for name in ("coredns", "kube-proxy", "kube-scheduler", "kube-controller-manager"):
        stop(name)
    stop("kube-apiserver")
    stop("etcd")
    stop("containerd")
    leftover = _cgroup_pids(pids_cgroup)
    kill_all(pids_cgroup)
    if leftover:
        done.append(f"killed {len(leftover)} leftover processes (shims, containers)")

    root = Path(state.state_dir)
    sandboxes = {p.name for p in root.glob("containerd/*/io.containerd.grpc.v1.cri/sandboxes/*")}
    # The shims' sockets: each task's bundle records its address (unix:///run/containerd/s/<hash>).
    for address in root.glob("containerd/state/io.containerd.runtime.v2.task/*/*/address"):
        with contextlib.suppress(OSError):
            socket_path = Path(address.read_text().strip().removeprefix("unix://"))
            if socket_path.parent == Path("/run/containerd/s"):
                socket_path.unlink(missing_ok=True)
    mounts = _mounts_under(root)
    for point in mounts:
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if mounts:
        done.append(f"unmounted {len(mounts)} mounts")
    if Path(state.netns_path).exists():
        subprocess.run(["ip", "netns", "del", state.netns], capture_output=True, check=False)
        done.append(f"deleted netns {state.netns}")
    for cgroup in _cgroup_dirs(state.cluster_id):
        if cgroup.exists():
            for directory, _, _ in sorted(os.walk(cgroup), key=lambda w: -w[0].count("/")):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            with contextlib.suppress(OSError):
                cgroup.rmdir()
    done.append(f"removed cgroups lightmesh-{state.cluster_id}")
    pod_logs = str(root / "pod-logs")
    for link in Path("/var/log/containers").glob("*.log"):
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(pod_logs):
                link.unlink()
    # libcni's result cache (containerd 1.6 does not let it move): our network's entries and the
    # loopback entries of our sandboxes; then the directories, if that left them empty.
    results = Path("/var/lib/cni/results")
    for cached in results.glob("*"):
        if cached.name.startswith(f"{state.network}-") or any(
            cached.name == f"cni-loopback-{sandbox}-lo" for sandbox in sandboxes
        ):
            cached.unlink(missing_ok=True)
    for directory in (results, results.parent, Path("/run/containerd/s"), Path("/run/containerd")):
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when empty: another runtime's files are never touched
    restored = _release_kernel_user(state.cluster_id)
    if restored is not None:  # the last cluster on this host
        if restored:
            done.append(f"restored sysctls {restored}")
        for path in KUBELET_FIXED_PATHS:
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    for heavy in ("containerd", "kubelet", "etcd", "runc", "cni"):
        shutil.rmtree(root / heavy, ignore_errors=True)
    state.stopped = True
    state.save()
    if purge:
        shutil.rmtree(root, ignore_errors=True)
    return done


def sweep(*, echo: Callable[[str], None] = print) -> None:
    """Clean up every cluster under CLUSTERS_ROOT whose owning process died without stopping it,
    and remove state directories of stopped clusters older than a day."""
    if not CLUSTERS_ROOT.exists():
        return
    for state_file in CLUSTERS_ROOT.glob("*/state.json"):
        try:
            state = ClusterState.load(state_file.parent)
        except (OSError, ValueError, TypeError):
            continue
        if not state.stopped and state.owner_pid and not _alive(state.owner_pid, state.owner_start):
            echo(f"cluster {state.cluster_id}: owner {state.owner_pid} is gone; cleaning up")
            for line in down(state_file.parent):
                echo(f"  {line}")
        elif state.stopped and time.time() - state_file.stat().st_mtime > 86400:
            shutil.rmtree(state_file.parent, ignore_errors=True)


# --------------------------------------------------------------------------------------- cluster


@dataclass
class NodeCluster(StopsOnExit):
    """A running single-node cluster; a context manager that stops it (``down``) on exit."""

    state: ClusterState
    bin_dir: Path
    pki: ClusterPki
    kubeconfig: Path
    timings: dict[str, float] = field(default_factory=dict)
    _popens: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)

    @property
    def state_dir(self) -> Path:
        """Where everything of this cluster lives."""
        return Path(self.state.state_dir)

    @property
    def logs(self) -> Path:
        """Component logs (``<name>.log``)."""
        return self.state_dir / "logs"

    @property
    def containerd_socket(self) -> Path:
        """containerd's gRPC socket (reachable from the host namespace: it is a file)."""
        return self.state_dir / "containerd" / "containerd.sock"

    # -- lifecycle

    @classmethod
    def start(
        cls,
        bin_dir: Path,
        images: dict[str, Path],
        *,
        state_dir: Path | None = None,
        detached: bool = False,
    ) -> NodeCluster:
        """Start every component, import ``images`` into containerd, wait until the node is
        Ready, the default ServiceAccount exists and DNS answers; stop everything on failure."""
        reason = unavailable()
        if reason:
            raise KubeError(f"cannot start the cluster here: {reason}")
        sweep()
        cluster_id = uuid.uuid4().hex[:8]
        state_dir = state_dir or CLUSTERS_ROOT / cluster_id
        state_dir.mkdir(parents=True, exist_ok=False)
        (state_dir / "logs").mkdir()
        state = ClusterState(
            cluster_id=cluster_id,
            state_dir=str(state_dir.resolve()),
            netns=f"lmc-{cluster_id}",
            bridge=f"lmbr{cluster_id}",
        )
        if not detached:
            state.owner_pid = os.getpid()
            state.owner_start = _process_start(os.getpid())
        state.save()
        began = time.monotonic()
        pki = generate_cluster_pki(state_dir / "pki")
        admin = state_dir / "admin.kubeconfig"
        admin.write_text(json.dumps(_kubeconfig(pki, "admin"), indent=2))
        admin.chmod(0o600)
        cluster = cls(state, bin_dir, pki, admin)
        try:
            cluster._boot(images)
        except BaseException:
            tails = cluster.log_tails()
            cluster.stop()
            raise KubeError(f"the cluster did not come up\n{tails}") from None
        cluster.timings["up"] = time.monotonic() - began
        return cluster

    def _boot(self, images: dict[str, Path]) -> None:
        state = self.state
        _register_kernel_user(state.cluster_id, self.state_dir)
        for cgroup in _cgroup_dirs(state.cluster_id):
            cgroup.mkdir(exist_ok=True)
            if cgroup.parent.name == "cpuset":  # a v1 cpuset child starts empty; copy the parent
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (cgroup / knob).write_text((cgroup.parent / knob).read_text())
        (CGROUP_ROOT / "pids" / f"lightmesh-{state.cluster_id}" / "system").mkdir(exist_ok=True)
        self._network()
        self._pool = ThreadPoolExecutor(
            max_workers=16,
            thread_name_prefix=f"netns-{state.netns}",
            initializer=enter_netns,
            initargs=(state.netns_path,),
        )
        self._write_configs()
        self._spawn(
            "containerd", ["containerd", "--config", str(self.state_dir / "containerd.toml")]
        )
        self._spawn("etcd", self._etcd_args())
        self._wait(lambda: self.containerd_socket.exists(), "containerd's socket", ["containerd"])
        # One at a time: concurrent imports of images sharing a base layer lock each other out.
        importing = ThreadPoolExecutor(max_workers=1).submit(self._import_images, images)
        self._spawn("kube-apiserver", self._apiserver_args())
        self._wait(
            lambda: self.http(f"https://{NODE_IP}:{API_PORT}/readyz", admin=True)[0] == 200,
            "kube-apiserver /readyz",
            ["etcd", "kube-apiserver"],
        )
        self._spawn("kube-controller-manager", self._controller_manager_args())
        self._spawn("kube-scheduler", self._scheduler_args())
        self._spawn("coredns", [str(self.bin_dir / "coredns"),
                                "-conf", str(self.state_dir / "Corefile")])  # fmt: skip
        self.timings["images_import"] = importing.result(timeout=READY_TIMEOUT)
        self._spawn("kubelet", self._kubelet_args())
        self._wait(self._node_ready, f"node {NODE_NAME} Ready", ["kubelet", "containerd"])
        # After the Node exists: kube-proxy reads its IPs from it, and restarts itself (exits)
        # when they change from what it saw at start.
        self._spawn("kube-proxy", [str(self.bin_dir / "kube-proxy"),
                                   f"--config={self.state_dir / 'kube-proxy.yaml'}", "--v=1"])  # fmt: skip
        self._wait(
            lambda: self.http("http://127.0.0.1:10256/healthz")[0] == 200,
            "kube-proxy /healthz (rules synced)",
            ["kube-proxy"],
        )
        self._wait(
            lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            "the default ServiceAccount",
            ["kube-controller-manager"],
        )
        self._wait(
            lambda: self.http("http://127.0.0.1:8181/ready")[0] == 200,
            "CoreDNS /ready",
            ["coredns"],
        )

    def _import_images(self, images: dict[str, Path]) -> float:
        started = time.monotonic()
        for name, tarball in images.items():
            result = subprocess.run(
                ["ctr", "--address", str(self.containerd_socket), "-n", "k8s.io",
                 "images", "import", str(tarball)],
                capture_output=True, text=True, timeout=READY_TIMEOUT, check=False,
            )  # fmt: skip
            if result.returncode != 0:
                raise KubeError(f"ctr images import {tarball} ({name}): {result.stderr.strip()}")
        return time.monotonic() - started

    def _network(self) -> None:
        state = self.state
        subprocess.run(["ip", "netns", "add", state.netns], check=True, capture_output=True)
        for command in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", state.bridge, "type", "bridge"],
            ["ip", "addr", "add", f"{NODE_IP}/24", "dev", state.bridge],
            ["ip", "link", "set", state.bridge, "up"],
            # There is no default route here: without a route, a connect() from the node itself
            # (the apiserver calling a webhook Service) to a ClusterIP fails with ENETUNREACH
            # before kube-proxy's OUTPUT DNAT is consulted.
            ["ip", "route", "add", SERVICE_CIDR, "dev", state.bridge, "src", NODE_IP],
            # pod -> Service -> pod: routed by this namespace, DNATed by kube-proxy.
            ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
            # Replies between pods on the bridge must pass the Service DNAT in reverse.
            ["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"],
        ):
            self.run(*command, check=True)

    def stop(self) -> None:
        """``down()`` this cluster (every process, mount, namespace, cgroup, host-wide trace)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        for line in down(self.state_dir):
            print(f"cluster {self.state.cluster_id}: {line}")
        for popen in self._popens:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(1)

    # -- processes

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        """Start ``argv`` in the namespace and the cluster's cgroup, output to logs/<name>.log."""
        procs = (
            CGROUP_ROOT / "pids" / f"lightmesh-{self.state.cluster_id}" / "system" / "cgroup.procs"
        )
        wrapper = [
            "sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs),
            "nsenter", f"--net={self.state.netns_path}", "--", *argv,
        ]  # fmt: skip
        with (self.logs / f"{name}.log").open("ab") as out:
            popen = subprocess.Popen(
                wrapper,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # a Ctrl-C of the test run is for us to handle, not them
                cwd=self.state_dir,
            )
        self._popens.append(popen)
        self.state.processes[name] = popen.pid
        self.state.save()

    def _wait(self, ready: Callable[[], bool], what: str, watched: Sequence[str]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        delay = 0.05
        while True:
            for name in watched:
                popen = next(p for p in self._popens if p.pid == self.state.processes[name])
                if popen.poll() is not None:
                    raise KubeError(f"{name} exited {popen.returncode} while waiting for {what}")
            with contextlib.suppress(OSError, KubectlError, subprocess.TimeoutExpired):
                if ready():
                    return
            if time.monotonic() >= deadline:
                raise KubeError(f"{what}: not ready within {READY_TIMEOUT:.0f}s")
            time.sleep(delay)  # bounded by the deadline
            delay = min(delay * 2, 0.5)

    def _node_ready(self) -> bool:
        result = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if result.returncode != 0:
            return False
        conditions = json.loads(result.stdout)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of every component log."""
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()
            parts.append(f"--- {log.name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    # -- configuration

    def _etcd_args(self) -> list[str]:
        return [
            str(self.bin_dir / "etcd"),
            "--name=lightmesh",
            f"--data-dir={self.state_dir / 'etcd'}",
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=lightmesh=http://127.0.0.1:2380",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        pki = self.pki
        return [
            str(self.bin_dir / "kube-apiserver"),
            "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0",  # this namespace's addresses only
            f"--secure-port={API_PORT}",
            f"--advertise-address={NODE_IP}",
            f"--cert-dir={self.state_dir / 'pki' / 'apiserver-generated'}",
            f"--tls-cert-file={pki.cert('apiserver')}",
            f"--tls-private-key-file={pki.key('apiserver')}",
            f"--client-ca-file={pki.ca}",
            f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
            f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
            f"--kubelet-certificate-authority={pki.ca}",
            "--kubelet-preferred-address-types=InternalIP",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
            f"--service-account-key-file={pki.service_account_key}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ]

    def _controller_manager_args(self) -> list[str]:
        kubeconfig = str(self.kubeconfig)
        return [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            f"--service-account-private-key-file={self.pki.service_account_key}",
            f"--root-ca-file={self.pki.ca}",  # the kube-root-ca.crt ConfigMap in every namespace
            f"--cluster-signing-cert-file={self.pki.ca}",
            f"--cluster-signing-key-file={self.pki.key('ca')}",
            "--allocate-node-cidrs=false",
            f"--flex-volume-plugin-dir={self.state_dir / 'flexvolume'}",  # not /usr/libexec
            "--profiling=false",
            "--v=1",
        ]

    def _scheduler_args(self) -> list[str]:
        kubeconfig = str(self.kubeconfig)
        return [
            str(self.bin_dir / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ]

    def _kubelet_args(self) -> list[str]:
        return [
            str(self.bin_dir / "kubelet"),
            f"--config={self.state_dir / 'kubelet.yaml'}",
            f"--kubeconfig={self.state_dir / 'kubelet.kubeconfig'}",
            f"--root-dir={self.state_dir / 'kubelet'}",
            f"--cert-dir={self.state_dir / 'kubelet' / 'pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            "--v=1",
        ]

    def _write_configs(self) -> None:
        root = self.state_dir
        state = self.state
        cgroup_root = f"/lightmesh-{state.cluster_id}"
        (root / "kubelet.kubeconfig").write_text(
            json.dumps(_kubeconfig(self.pki, "kubelet-client"), indent=2)
        )
        (root / "resolv.conf").write_text("# the cluster has no upstream DNS\n")
        (root / "cni" / "net.d").mkdir(parents=True)
        (root / "cni" / "net.d" / "10-lightmesh.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": state.network,
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": state.bridge,
                            "isGateway": True,
                            "ipMasq": False,  # nothing leaves the namespace
                            "hairpinMode": True,  # a pod reaching itself through its Service
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(root / "cni" / "ipam"),
                            },
                        }
                    ],
                },
                indent=2,
            )
        )
        c = root / "containerd"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        (root / "containerd.toml").write_text(
            f"""\
version = 2
root = "{c / "root"}"
state = "{c / "state"}"
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{self.containerd_socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{c / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # Pod sandboxes ask for a negative oom_score_adj; without CAP_SYS_RESOURCE in the bounding set
  # (this machine kind) runc then fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  Root = "{root / "runc"}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_PLUGINS}"
  conf_dir = "{root / "cni" / "net.d"}"
  max_conf_num = 1
"""
        )
        kubelet = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this machine kind is cgroup v1; the kubelet then only warns
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": cgroup_root,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": NODE_IP,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.pki.ca)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "tlsCertFile": str(self.pki.cert("kubelet")),
            "tlsPrivateKeyFile": str(self.pki.key("kubelet")),
            "clusterDNS": [NODE_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(root / "resolv.conf"),
            "podLogsDir": str(root / "pod-logs"),
            "imageGCHighThresholdPercent": 100,  # the images are imported, never pulled again
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "serializeImagePulls": False,
            "protectKernelDefaults": False,
            "registerNode": True,
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "volumePluginDir": str(root / "kubelet" / "volume-plugins"),
        }
        (root / "kubelet.yaml").write_text(yaml.safe_dump(kubelet, sort_keys=False))
        proxy = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "metricsBindAddress": "127.0.0.1:10249",
            "healthzBindAddress": "127.0.0.1:10256",
            # conntrack limits are host-wide: leave them alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False, "minSyncPeriod": "0s"},
            "nodePortAddresses": ["primary"],
        }
        (root / "kube-proxy.yaml").write_text(yaml.safe_dump(proxy, sort_keys=False))
        (root / "Corefile").write_text(
            f"""\
.:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:8180
    ready 127.0.0.1:8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
    loadbalance
}}
"""
        )

    # -- clients

    def _env(self, path: str) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            **({"PATH": path} if path else {}),
        }

    def run(
        self,
        *argv: str,
        check: bool = False,
        timeout: float = 60.0,
        input: str | None = None,
        env_path: str = "",
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the cluster's network namespace (as the node does) and wait for it;
        ``KUBECONFIG`` is the admin's, ``env_path`` replaces PATH when given."""
        result = subprocess.run(
            ["nsenter", f"--net={self.state.netns_path}", "--", *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env=self._env(env_path),
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(result)
        return result

    def popen(self, *argv: str, log: Path, env_path: str = "") -> subprocess.Popen[bytes]:
        """Start a long-running command (port-forward, Prometheus) in the namespace; the caller
        stops it. Output goes to ``log``."""
        with log.open("ab") as out:
            return subprocess.Popen(
                ["nsenter", f"--net={self.state.netns_path}", "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=REPO,
                env=self._env(env_path),
            )

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The built kubectl as the cluster admin (``KUBECONFIG`` is set, as a user's would be)."""
        return self.run(
            str(self.bin_dir / "kubectl"), *args, check=check, timeout=timeout, input=input
        )

    def kubectl_json(self, *args: str) -> Any:
        """``kubectl ... -o json``, decoded."""
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    @property
    def netns_pool(self) -> ThreadPoolExecutor:
        """Threads inside the namespace: sockets made there reach pods, Services, port-forwards."""
        if self._pool is None:
            raise KubeError("the cluster is stopped")
        return self._pool

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on a thread inside the namespace."""
        return self.netns_pool.submit(function, *args).result()

    def http(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        admin: bool = False,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], str]:
        """(status, headers, body) of one request made inside the namespace; ``admin`` presents
        the admin client certificate (for the apiserver). Raises OSError when it cannot connect."""
        return self.call(_http, url, headers or {}, method, self._ssl_context() if admin else None,
                         timeout)  # fmt: skip

    def _ssl_context(self) -> Any:
        import ssl

        context = ssl.create_default_context(cafile=str(self.pki.ca))
        context.load_cert_chain(str(self.pki.cert("admin")), str(self.pki.key("admin")))
        return context

    def container_pid(self, namespace: str, pod: str, container: str) -> int:
        """The host pid of a running container's first process (to enter its namespaces)."""
        status = self.kubectl_json("-n", namespace, "get", "pod", pod)["status"]
        container_id = next(
            c["containerID"] for c in status["containerStatuses"] if c["name"] == container
        ).removeprefix("containerd://")
        result = self.run(
            "ctr", "--address", str(self.containerd_socket), "-n", "k8s.io",
            "tasks", "ls", check=True,
        )  # fmt: skip
        for line in result.stdout.splitlines()[1:]:
            task, pid, *_ = line.split()
            if task == container_id:
                return int(pid)
        raise KubeError(f"{namespace}/{pod} {container}: no running task {container_id}")


def _http(
    url: str, headers: dict[str, str], method: str, context: Any, timeout: float
) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers=headers, method=method)  # noqa: S310 - test URLs
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace")
        error.close()
        return error.code, dict(error.headers), body


# ------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.support.cluster up|down|sweep`` (scripts/k8s/cluster.sh wraps it)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="scripts/k8s/cluster.sh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="build what is missing, start a cluster, print how to use it")
    stop = sub.add_parser("down", help="stop a cluster and clean up after it (also after a crash)")
    stop.add_argument("state_dir", type=Path)
    stop.add_argument("--purge", action="store_true", help="also remove its logs")
    sub.add_parser("sweep", help="clean up every cluster whose owner died")
    args = parser.parse_args(argv)
    if args.command == "down":
        for line in down(args.state_dir, purge=args.purge):
            print(line)
        return 0
    if args.command == "sweep":
        sweep()
        return 0
    bin_dir = build_cluster_binaries(echo=sys.stderr)
    images = build_images(echo=sys.stderr)
    cluster = NodeCluster.start(bin_dir, images, detached=True)
    if cluster._pool is not None:
        cluster._pool.shutdown(wait=False)
    state = cluster.state
    print(f"cluster {state.cluster_id} up in {cluster.timings['up']:.1f}s; state {state.state_dir}")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print(f"  ip netns exec {state.netns} {bin_dir / 'kubectl'} get pods -A")
    print(f"  scripts/k8s/cluster.sh down {state.state_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
