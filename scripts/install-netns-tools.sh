#!/usr/bin/env bash
# Install what the traffic-interception tests (tests/netns) need; idempotent (a no-op when present).
#
#   - iptables (Debian package): the init step's redirect rules, applied inside network namespaces.
#     Debian's default `iptables` is the nf_tables backend (iptables-nft); the rules are the same.
#   - iproute2 (`ip netns`, veth pairs), usually present already.
#   - wrk (Debian package): one of the real clients tests/component/test_real_clients.py drives
#     through the proxy (the benchmarks use it too).
set -euo pipefail

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-netns-tools: apt-get install ${missing[*]}" >&2
    sudo_if_needed apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        "${missing[@]}" >&2
fi
echo "install-netns-tools: $(iptables --version)" >&2
