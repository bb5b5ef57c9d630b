#!/usr/bin/env bash
# Build the images the single-node cluster runs, with no Docker engine and no registry:
#
#   scripts/k8s/images.sh     # progress on stderr; on stdout one "IMAGE TARBALL" line per image
#
#   base          a Debian image from mmdebstrap (python3, venv, ca-certificates) standing in for
#                 python:*-slim-bookworm, which cannot be pulled here; from the machine's Debian
#                 sources, keyed by its inputs (suite, packages, sources) and built once
#   pause         the pod sandbox image (scripts/k8s/pause/pause.c, static), as the cluster's
#                 containerd is told to use it (tests/support/cluster.py: PAUSE_IMAGE)
#   controlplane  deploy/images/controlplane.Dockerfile, unchanged, by buildah, FROM the base
#   proxy         deploy/images/sidecar.Dockerfile, the same way
#
# The two project images are built with the base image as the Dockerfiles' PYTHON_IMAGE build
# argument (their public default stays python:3.11.11-slim-bookworm) and tagged with the names
# deploy/ and the injection template use. Tarballs (docker-archive, for `ctr images import`) are
# cached in $LIGHTMESH_CACHE/images (default ~/.cache/lightmesh/images) under a key of everything
# that goes into them (the Dockerfile, the files it copies, the base key), so an unchanged tree
# costs nothing; a new key replaces the old tarball of that image. buildah keeps its storage in a
# temporary directory removed at exit.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${LIGHTMESH_CACHE:-$HOME/.cache/lightmesh}/images
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
PAUSE_IMAGE=localhost/lightmesh-pause:1
CONTROLPLANE_IMAGE=docker.io/library/lightmesh-controlplane:0.1.0
PROXY_IMAGE=docker.io/library/lightmesh-proxy:0.1.0

log() { printf 'k8s-images [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

for tool in mmdebstrap buildah gcc sha256sum; do
    command -v "$tool" >/dev/null || { log "$tool is missing: run scripts/k8s/install-node-tools.sh"; exit 1; }
done
mkdir -p "$CACHE"

# The Debian sources the base image is made from (and its apt uses inside the sidecar build).
if [[ -s /etc/apt/sources.list.d/debian.sources ]]; then
    SOURCES=/etc/apt/sources.list.d/debian.sources
else
    SOURCES=$(mktemp)
    printf 'deb http://deb.debian.org/debian %s main\ndeb http://deb.debian.org/debian %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
        "$SUITE" "$SUITE" "$SUITE" >"$SOURCES"
fi

hash_of() { sha256sum | cut -c1-16; }

# Keep one tarball per image: the one just built or found.
prune() { # <prefix> <kept file>
    local old
    for old in "$CACHE/$1"-*.tar; do
        [[ -e $old && $old != "$2" ]] && rm -f "$old"
    done
    return 0
}

WORK=$(mktemp -d /tmp/lightmesh-images.XXXXXX)
# Paths buildah writes whatever --root says (its CNI lock, the image library's blob cache):
# removed afterwards when this run created them.
created=()
for path in /etc/cni /var/lib/containers; do [[ -e $path ]] || created+=("$path"); done
cleanup() {
    # buildah's overlay mounts live under its root; unmount before removing it.
    buildah "${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
    awk -v w="$WORK" '$5 ~ "^"w {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$WORK"
    for path in "${created[@]}"; do rm -rf "$path"; done
}
BUILDAH=(--root "$WORK/root" --runroot "$WORK/run" --storage-driver overlay)
trap cleanup EXIT

# ------------------------------------------------------------------------------------------ base
base_key=$( { echo "$SUITE minbase $BASE_PACKAGES"; cat "$SOURCES"; mmdebstrap --version; } | hash_of)
BASE_TAR=$CACHE/base-$base_key.tar
if [[ ! -s $BASE_TAR ]]; then
    log "base image: mmdebstrap $SUITE (minbase + $BASE_PACKAGES) from $SOURCES"
    start=$SECONDS
    mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        "$SUITE" "$WORK/base.tar" "$SOURCES"
    mv "$WORK/base.tar" "$BASE_TAR"
    log "base image: $(du -h "$BASE_TAR" | cut -f1) in $((SECONDS - start))s"
fi
prune base "$BASE_TAR"
BASE_IMAGE=localhost/lightmesh-base:$base_key

base_in_buildah=0
import_base() {
    ((base_in_buildah)) && return 0
    local ctr
    ctr=$(buildah "${BUILDAH[@]}" from scratch)
    buildah "${BUILDAH[@]}" add --quiet "$ctr" "$BASE_TAR" / >/dev/null
    buildah "${BUILDAH[@]}" config --cmd /bin/sh --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    buildah "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
    base_in_buildah=1
}

# ----------------------------------------------------------------------------------------- pause
pause_key=$( { cat "$REPO/scripts/k8s/pause/pause.c"; gcc --version | head -1; echo "$PAUSE_IMAGE"; } | hash_of)
PAUSE_TAR=$CACHE/pause-$pause_key.tar
if [[ ! -s $PAUSE_TAR ]]; then
    log "pause image: gcc -static scripts/k8s/pause/pause.c"
    mkdir -p "$WORK/pause"
    gcc -static -O2 -s -o "$WORK/pause/pause" "$REPO/scripts/k8s/pause/pause.c"
    ctr=$(buildah "${BUILDAH[@]}" from scratch)
    buildah "${BUILDAH[@]}" copy --quiet --chmod 0755 "$ctr" "$WORK/pause/pause" /pause >/dev/null
    buildah "${BUILDAH[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
    buildah "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$PAUSE_IMAGE" >/dev/null
    buildah "${BUILDAH[@]}" push --quiet "$PAUSE_IMAGE" "docker-archive:$WORK/pause.tar:$PAUSE_IMAGE"
    mv "$WORK/pause.tar" "$PAUSE_TAR"
fi
prune pause "$PAUSE_TAR"

# ------------------------------------------------------------------------------ project images
# What the Dockerfiles COPY from the build context (every source of a COPY without --from), read
# from the Dockerfiles themselves so the key follows them.
mapfile -t CONTEXT_INPUTS < <(awk '$1 == "COPY" && $2 !~ /^--from/ {for (i = 2; i < NF; i++) print $i}' \
    "$REPO"/deploy/images/*.Dockerfile | sort -u)
context_key=$(cd "$REPO" && find "${CONTEXT_INPUTS[@]}" -type f -not -path '*/__pycache__/*' -print0 |
    sort -z | xargs -0 sha256sum | hash_of)

# Traffic to the package index may be TLS-intercepted (the machine's CA bundle and pip.conf say
# how); the build's RUN steps see them as read-only mounts, never committed into a layer.
BUILD_MOUNTS=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
[[ -f /etc/pip.conf ]] && BUILD_MOUNTS+=(--volume /etc/pip.conf:/etc/pip.conf:ro)

build_image() { # <prefix> <Dockerfile> <image name>; prints the tarball
    local prefix=$1 dockerfile=$2 image=$3 key tar start
    key=$( { cat "$REPO/$dockerfile"; echo "$context_key $base_key $image"; } | hash_of)
    tar=$CACHE/$prefix-$key.tar
    if [[ ! -s $tar ]]; then
        import_base
        log "$prefix image: buildah build -f $dockerfile (FROM $BASE_IMAGE)"
        start=$SECONDS
        buildah "${BUILDAH[@]}" build --quiet --isolation chroot --network host --pull=never \
            --build-arg "PYTHON_IMAGE=$BASE_IMAGE" "${BUILD_MOUNTS[@]}" \
            -f "$REPO/$dockerfile" -t "$image" "$REPO" >&2
        buildah "${BUILDAH[@]}" push --quiet "$image" "docker-archive:$WORK/$prefix.tar:$image"
        mv "$WORK/$prefix.tar" "$tar"
        log "$prefix image: $(du -h "$tar" | cut -f1) in $((SECONDS - start))s"
    fi
    prune "$prefix" "$tar"
    echo "$tar"
}

CONTROLPLANE_TAR=$(build_image controlplane deploy/images/controlplane.Dockerfile "$CONTROLPLANE_IMAGE")
PROXY_TAR=$(build_image proxy deploy/images/sidecar.Dockerfile "$PROXY_IMAGE")

echo "$PAUSE_IMAGE $PAUSE_TAR"
echo "$CONTROLPLANE_IMAGE $CONTROLPLANE_TAR"
echo "$PROXY_IMAGE $PROXY_TAR"
