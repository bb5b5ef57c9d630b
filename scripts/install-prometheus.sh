#!/usr/bin/env bash
# Install the real Prometheus server and promtool (Debian package `prometheus`) that the
# observability tests scrape the mesh with; idempotent. The packaged system service is not started:
# the tests run their own server in the foreground on a free port with a temporary config.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    exit 0
fi
apt_install install-prometheus prometheus
echo "install-prometheus: $(prometheus --version 2>&1 | head -1)"
