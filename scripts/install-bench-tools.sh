#!/usr/bin/env bash
# Install everything `python -m bench dataplane` needs; idempotent (safe to run again).
#
#   - nginx and haproxy (Debian packages): the backend and the reference proxies. Their system
#     services are not used: the bench writes its own configs and runs them in the foreground.
#   - wrk (Debian package): the closed-loop saturation generator.
#   - fortio, built from Go modules: the constant-rate (open-loop, -qps) latency generator with
#     per-request latency histograms. Installed to $LIGHTMESH_BIN (default
#     ~/.cache/lightmesh/bin), with its module cache under ~/.cache/lightmesh/go.
#   - ghz, built from Go modules likewise: the gRPC load generator of `python -m bench grpc`.
#   - the `bench` extra of lightmesh (matplotlib for the chart, py-spy for profiling) into the
#     project venv, if one exists at $VENV (default .venv).
set -euo pipefail

FORTIO_VERSION="${FORTIO_VERSION:-v1.66.0}"
GHZ_VERSION="${GHZ_VERSION:-v0.121.0}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/lightmesh"
BIN_DIR="${LIGHTMESH_BIN:-$CACHE/bin}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"

source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

missing=()
for pkg in nginx haproxy wrk; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] || apt_install install-bench-tools "${missing[@]}"

# go_install NAME MODULE@VERSION: build a Go tool into $BIN_DIR, its module cache in ours.
go_install() {
    command -v go >/dev/null || { echo "install-bench-tools: go is required to build $1" >&2; exit 1; }
    echo "install-bench-tools: go install $2 -> $BIN_DIR"
    mkdir -p "$BIN_DIR"
    GOBIN="$BIN_DIR" GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/mod" GOFLAGS=-mod=mod \
        CGO_ENABLED=0 go install "$2"
}

if ! { [ -x "$BIN_DIR/fortio" ] && "$BIN_DIR/fortio" version 2>/dev/null | grep -q "${FORTIO_VERSION#v}"; }; then
    go_install fortio "fortio.org/fortio@$FORTIO_VERSION"
fi
# A go-installed ghz says "dev" for its version: presence is what is checked.
[ -x "$BIN_DIR/ghz" ] || go_install ghz "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"

if [ -x "$VENV/bin/pip" ]; then
    if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null || [ ! -x "$VENV/bin/py-spy" ]; then
        # The same pins as pyproject's `bench` extra (pip ignores an extra it does not know, so
        # name the packages rather than rely on `.[bench]`).
        echo "install-bench-tools: pip install matplotlib py-spy into $VENV"
        "$VENV/bin/pip" install --quiet "matplotlib>=3.8" "py-spy>=0.3.14"
    fi
fi

echo "install-bench-tools: nginx $(nginx -v 2>&1 | sed 's/.*\///'), haproxy $(haproxy -v | head -1 | awk '{print $3}'), wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), fortio $("$BIN_DIR/fortio" version 2>/dev/null | head -1) in $BIN_DIR"
