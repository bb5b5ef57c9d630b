#!/usr/bin/env bash
# Install what the single-node cluster (tests/cluster, scripts/k8s/cluster.sh) needs from Debian;
# idempotent (a no-op when everything is present). No service is started: the cluster runs its own
# containerd in the foreground with a config under its state directory.
#
#   containerd, runc               the container runtime (CRI) the kubelet drives
#   containernetworking-plugins    bridge, host-local, loopback CNI plugins (/usr/lib/cni)
#   iptables, conntrack            kube-proxy's iptables mode; the injected init container's rules
#   iproute2, util-linux           ip netns / bridge set-up, nsenter
#   mmdebstrap                     the local base image (no registry is reachable)
#   buildah                        builds deploy/images/*.Dockerfile without a Docker engine
#   gcc, libc6-dev                 the static pause program of the sandbox image
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../apt-install.sh"

missing=()
need() { # <command> <package>
    command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}
need containerd containerd
need runc runc
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] ||
    missing+=(containernetworking-plugins)
need iptables iptables
need conntrack conntrack
need ip iproute2
need nsenter util-linux
need mmdebstrap mmdebstrap
need buildah buildah
need gcc gcc
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/libc.a ] || compgen -G '/usr/lib/*/libc.a' >/dev/null ||
    missing+=(libc6-dev)
[ "${#missing[@]}" -eq 0 ] || apt_install install-node-tools "${missing[@]}"
echo "install-node-tools: containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}'), buildah $(buildah --version | awk '{print $3}'), $(iptables --version)" >&2
