#!/usr/bin/env bash
# Install what the traffic-interception tests (tests/netns) need; idempotent (a no-op when present).
#
#   - iptables (Debian package): the init step's redirect rules, applied inside network namespaces.
#     Debian's default `iptables` is the nf_tables backend (iptables-nft); the rules are the same.
#   - iproute2 (`ip netns`, veth pairs), usually present already.
#   - wrk (Debian package): one of the real clients tests/component/test_real_clients.py drives
#     through the proxy (the benchmarks use it too).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

missing=()
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ "${#missing[@]}" -eq 0 ] || apt_install install-netns-tools "${missing[@]}"
echo "install-netns-tools: $(iptables --version)" >&2
