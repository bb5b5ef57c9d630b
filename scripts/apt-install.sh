# Sourced by the install-*.sh scripts: `apt_install TAG PACKAGE...` installs the Debian packages
# (as root, or through sudo) without starting their system services — policy-rc.d answers 101
# while it runs — since the tests and benchmarks run their own servers in the foreground.
# Waits for another apt run's lock rather than failing.

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    local tag="$1"
    shift
    echo "$tag: apt-get install $*" >&2
    sudo_if_needed apt-get -o DPkg::Lock::Timeout=600 update -qq
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | sudo_if_needed tee /usr/sbin/policy-rc.d >/dev/null
        sudo_if_needed chmod +x /usr/sbin/policy-rc.d
        trap 'sudo_if_needed rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get -o DPkg::Lock::Timeout=600 install \
        -y -qq --no-install-recommends "$@" >&2
}
