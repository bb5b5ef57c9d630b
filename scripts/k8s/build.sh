#!/usr/bin/env bash
# Build the Kubernetes binaries of the test suite from Go modules.
#
#   scripts/k8s/build.sh            # kube-apiserver, kubectl, etcd (tests/kube)
#   scripts/k8s/build.sh --cluster  # and kubelet, kube-controller-manager, kube-scheduler,
#                                   # kube-proxy, coredns (the single-node cluster of tests/cluster)
#                                   # and prometheus (with Kubernetes service discovery, which
#                                   # Debian's package lacks)
#
# Progress goes to stderr, the bin dir is the last stdout line. Versions come from the committed
# wrapper modules kube/, etcd/ and coredns/ (regenerate them with gen-modules.sh) and prometheus/
# (pinned by hand). Binaries land in $LIGHTMESH_CACHE/k8s/<k8s version>/bin (default cache:
# ~/.cache/lightmesh); CoreDNS and Prometheus in $LIGHTMESH_CACHE/k8s/{coredns,prometheus}/<version>/,
# linked from that bin dir. Go's module and build caches
# live under $LIGHTMESH_CACHE/go so a rebuild reuses them. Only missing binaries are built.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${LIGHTMESH_CACHE:-$HOME/.cache/lightmesh}
export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build
# One build at a time per cache: a second caller (another checkout, a parallel make) waits, then
# finds the binaries built and skips them.
mkdir -p "$CACHE"
exec 9>"$CACHE/.k8s-build.lock"
flock 9
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly

log() { printf 'k8s-build [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

module_version() { # <go.mod> <module path>
    awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$1"
}

K8S=$(module_version "$HERE/kube/go.mod" k8s.io/kubernetes)
ETCD=$(module_version "$HERE/etcd/go.mod" go.etcd.io/etcd/server/v3)
COREDNS=$(module_version "$HERE/coredns/go.mod" github.com/coredns/coredns)
PROMETHEUS=$(module_version "$HERE/prometheus/go.mod" github.com/prometheus/prometheus)
[[ $K8S =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || { log "cannot read the k8s version from kube/go.mod"; exit 1; }
MINOR=${BASH_REMATCH[1]}
[[ -n $ETCD ]] || { log "cannot read the etcd version from etcd/go.mod"; exit 1; }
[[ -n $COREDNS ]] || { log "cannot read the CoreDNS version from coredns/go.mod"; exit 1; }
[[ -n $PROMETHEUS ]] || { log "cannot read the Prometheus version from prometheus/go.mod"; exit 1; }

case ${1:-} in
    "") kube_wanted=(kube-apiserver kubectl); coredns_wanted=0 ;;
    --cluster)
        kube_wanted=(kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler kube-proxy)
        coredns_wanted=1 ;;
    *) log "usage: $0 [--cluster]"; exit 2 ;;
esac

BIN=$CACHE/k8s/$K8S/bin
COREDNS_DIR=$CACHE/k8s/coredns/$COREDNS
PROMETHEUS_DIR=$CACHE/k8s/prometheus/$PROMETHEUS
kube_missing=()
for b in "${kube_wanted[@]}"; do [[ -x $BIN/$b ]] || kube_missing+=("$b"); done
etcd_missing=0; [[ -x $BIN/etcd ]] || etcd_missing=1
coredns_missing=0
if ((coredns_wanted)) && [[ ! -x $COREDNS_DIR/coredns || $(readlink "$BIN/coredns" 2>/dev/null) != "$COREDNS_DIR/coredns" ]]; then
    coredns_missing=1
fi
prometheus_missing=0
if ((coredns_wanted)) && [[ ! -x $PROMETHEUS_DIR/prometheus || $(readlink "$BIN/prometheus" 2>/dev/null) != "$PROMETHEUS_DIR/prometheus" ]]; then
    prometheus_missing=1
fi
if ((${#kube_missing[@]} == 0 && !etcd_missing && !coredns_missing && !prometheus_missing)); then
    log "k8s $K8S / etcd $ETCD$( ((coredns_wanted)) && echo " / CoreDNS $COREDNS / Prometheus $PROMETHEUS") already built"
    echo "$BIN"
    exit 0
fi

command -v go >/dev/null || { log "go is not installed"; exit 1; }
log "building k8s $K8S (${kube_missing[*]:-nothing})$( ((etcd_missing)) && echo ", etcd $ETCD")$( ((coredns_missing)) && echo ", CoreDNS $COREDNS")$( ((prometheus_missing)) && echo ", Prometheus $PROMETHEUS") with $(go version | cut -d' ' -f3) on $(nproc) cores"
log "caches: $GOMODCACHE, $GOCACHE; cold on 2 cores: apiserver+kubectl+etcd ~7.5 min (5.5 with modules cached), the node binaries and CoreDNS ~4 min more; a rebuild from the build cache ~15 s a binary"
mkdir -p "$BIN"
STAGE=$(mktemp -d "$BIN/.build.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
start=$SECONDS

# Same version variables as k8s' hack/lib/version.sh, so clients see the real version.
build_date=$(jq -r '.Time // empty' "$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/$K8S.info" 2>/dev/null || true)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S -X $pkg.gitMajor=1 -X $pkg.gitMinor=$MINOR"
    ldflags+=" -X $pkg.gitTreeState=clean${build_date:+ -X $pkg.buildDate=$build_date}"
done

log "downloading modules"
(cd "$HERE/kube" && go mod download k8s.io/kubernetes) # the rest is fetched on demand by go build
(cd "$HERE/etcd" && go mod download go.etcd.io/etcd/server/v3)

if ((etcd_missing)); then
    log "compiling etcd $ETCD"
    (cd "$HERE/etcd" && go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-$ETCD" \
        -o "$STAGE/etcd" go.etcd.io/etcd/server/v3)
    mv -f "$STAGE/etcd" "$BIN/etcd"
    log "etcd done after $((SECONDS - start))s"
fi
if ((${#kube_missing[@]})); then
    log "compiling ${kube_missing[*]} (one build, shared packages)"
    (cd "$HERE/kube" && go build -trimpath -ldflags "$ldflags" -o "$STAGE/" \
        "${kube_missing[@]/#/k8s.io/kubernetes/cmd/}")
    for b in "${kube_missing[@]}"; do mv -f "$STAGE/$b" "$BIN/$b"; done
    log "k8s binaries done after $((SECONDS - start))s"
fi
if ((coredns_missing)); then
    log "compiling CoreDNS $COREDNS (coredns/main.go: the cluster's plugins only)"
    mkdir -p "$COREDNS_DIR"
    (cd "$HERE/coredns" && go build -trimpath \
        -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=module-v$COREDNS" \
        -o "$STAGE/coredns" .)
    mv -f "$STAGE/coredns" "$COREDNS_DIR/coredns"
    ln -sfn "$COREDNS_DIR/coredns" "$BIN/coredns"
fi
if ((prometheus_missing)); then
    # Only the Kubernetes discovery the tests use (Prometheus >= 3.10's build tags): the cloud SDKs
    # of the other discoveries were most of a cold build's time (18 min of 26 on 2 cores).
    log "compiling Prometheus $PROMETHEUS (cmd/prometheus with kubernetes_sd only: its API, no web UI assets)"
    mkdir -p "$PROMETHEUS_DIR"
    (cd "$HERE/prometheus" && go build -trimpath -tags remove_all_sd,enable_kubernetes_sd \
        -ldflags "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS#v0.} -X github.com/prometheus/common/version.Branch=module" \
        -o "$STAGE/prometheus" github.com/prometheus/prometheus/cmd/prometheus)
    mv -f "$STAGE/prometheus" "$PROMETHEUS_DIR/prometheus"
    ln -sfn "$PROMETHEUS_DIR/prometheus" "$BIN/prometheus"
fi
log "built in $((SECONDS - start))s: $("$BIN/kube-apiserver" --version), $("$BIN/etcd" --version | head -1)$( ((coredns_wanted)) && echo ", $("$BIN/coredns" -version | head -1)")"
echo "$BIN"
