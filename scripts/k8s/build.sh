#!/usr/bin/env bash
# Build kube-apiserver, kubectl and etcd for the Kubernetes tests (tests/kube) from Go modules.
#
#   scripts/k8s/build.sh        # prints progress on stderr, the bin dir on the last stdout line
#
# Versions come from the committed wrapper modules kube/ and etcd/ (regenerate them with
# gen-modules.sh). Binaries land in $LIGHTMESH_CACHE/k8s/<k8s version>/bin (default cache:
# ~/.cache/lightmesh); Go's module and build caches live under $LIGHTMESH_CACHE/go so a rebuild
# reuses them. Nothing is built when all three binaries already exist.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${LIGHTMESH_CACHE:-$HOME/.cache/lightmesh}
export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly

log() { printf 'k8s-build [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

module_version() { # <go.mod> <module path>
    awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$1"
}

K8S=$(module_version "$HERE/kube/go.mod" k8s.io/kubernetes)
ETCD=$(module_version "$HERE/etcd/go.mod" go.etcd.io/etcd/server/v3)
[[ $K8S =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || { log "cannot read the k8s version from kube/go.mod"; exit 1; }
MINOR=${BASH_REMATCH[1]}
[[ -n $ETCD ]] || { log "cannot read the etcd version from etcd/go.mod"; exit 1; }

BIN=$CACHE/k8s/$K8S/bin
if [[ -x $BIN/kube-apiserver && -x $BIN/kubectl && -x $BIN/etcd ]]; then
    log "k8s $K8S / etcd $ETCD already built"
    echo "$BIN"
    exit 0
fi

command -v go >/dev/null || { log "go is not installed"; exit 1; }
log "building k8s $K8S (kube-apiserver, kubectl) and etcd $ETCD with $(go version | cut -d' ' -f3) on $(nproc) cores"
log "caches: $GOMODCACHE, $GOCACHE; a cold build took ~7.5 min on 2 cores (5.5 with modules cached), a rebuild from the build cache ~15 s"
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

log "compiling etcd $ETCD"
(cd "$HERE/etcd" && go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-$ETCD" \
    -o "$STAGE/etcd" go.etcd.io/etcd/server/v3)
log "etcd done after $((SECONDS - start))s; compiling kube-apiserver and kubectl (one build, shared packages)"
(cd "$HERE/kube" && go build -trimpath -ldflags "$ldflags" -o "$STAGE/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl)

for b in etcd kube-apiserver kubectl; do mv -f "$STAGE/$b" "$BIN/$b"; done
log "built in $((SECONDS - start))s: $("$BIN/kube-apiserver" --version), $("$BIN/etcd" --version | head -1)"
echo "$BIN"
