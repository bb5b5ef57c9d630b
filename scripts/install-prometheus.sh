#!/usr/bin/env bash
# Install the real Prometheus server and promtool (Debian package `prometheus`) that the
# observability tests scrape the mesh with; idempotent. The packaged system service is not started:
# the tests run their own server in the foreground on a free port with a temporary config.
set -euo pipefail

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    exit 0
fi
echo "install-prometheus: apt-get install prometheus"
sudo_if_needed apt-get update -qq
# policy-rc.d 101: do not start the packaged service (port 9090) on install.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | sudo_if_needed tee /usr/sbin/policy-rc.d >/dev/null
    sudo_if_needed chmod +x /usr/sbin/policy-rc.d
    trap 'sudo_if_needed rm -f /usr/sbin/policy-rc.d' EXIT
fi
DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq --no-install-recommends prometheus
echo "install-prometheus: $(prometheus --version 2>&1 | head -1)"
