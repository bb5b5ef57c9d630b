#!/usr/bin/env bash
# Build h2spec (HTTP/2 conformance tester) from its Go module into $LIGHTMESH_BIN (default
# ~/.cache/lightmesh/bin), module cache under ~/.cache/lightmesh/go; idempotent. The module has
# no /v2 path, so its v2 releases are "+incompatible" versions.
set -euo pipefail

H2SPEC_VERSION="${H2SPEC_VERSION:-v2.2.1+incompatible}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/lightmesh"
BIN_DIR="${LIGHTMESH_BIN:-$CACHE/bin}"

# Its binary says "2.0.0" whatever the release, so presence is what is checked.
if [ -x "$BIN_DIR/h2spec" ]; then
    exit 0
fi
command -v go >/dev/null || { echo "install-h2spec: go is required to build h2spec" >&2; exit 1; }
echo "install-h2spec: go install github.com/summerwind/h2spec/cmd/h2spec@$H2SPEC_VERSION -> $BIN_DIR"
mkdir -p "$BIN_DIR"
GOBIN="$BIN_DIR" GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/mod" GOFLAGS=-mod=mod CGO_ENABLED=0 \
    go install "github.com/summerwind/h2spec/cmd/h2spec@$H2SPEC_VERSION"
