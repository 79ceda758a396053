#!/usr/bin/env bash
# `make image`: build deploy/Dockerfile without a Docker daemon (podman, or
# buildah when podman is missing), as csi-driver-smb-nfs:<project version>.
#
# Works where a container runtime cannot set cgroups or rlimits (CI machines,
# nested containers): --isolation chroot runs the RUN steps in a chroot. The
# storage driver is containers/storage's choice (overlay where the kernel
# allows it, as root on Debian 12; vfs elsewhere, much slower: every layer a
# full copy); IMAGE_STORAGE_DRIVER forces one.
#
# The base image (ARG PYTHON_IMAGE, python:3.11-slim-bookworm) comes from a
# registry when one is reachable. When none is (our CI reaches Debian's and
# PyPI's package servers only), a STAND-IN is built under the same name from
# Debian bookworm packages with mmdebstrap: Debian's Python 3.11 with pip (as
# the official image has them: `python`/`pip` on PATH, the C headers for
# building extensions, no EXTERNALLY-MANAGED marker) plus this machine's CA bundle, which pip needs behind a
# TLS-inspecting proxy (PIP_CERT/SSL_CERT_FILE point at it). The stand-in is
# labelled io.csi-driver-smb-nfs.stand-in=true; an image built on it is for
# tests, not for pushing.
#
# Environment:
#   IMAGE                  tag to build (default csi-driver-smb-nfs:<version>)
#   IMAGE_BASE             auto (default: local, else pull, else stand-in) |
#                          pull | standin
#   IMAGE_STORAGE_DRIVER   containers/storage driver (default: the configured one)
#   IMAGE_CACHE            cache dir for the stand-in rootfs (default .cache/image)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
IMAGE=${IMAGE:-csi-driver-smb-nfs:$VERSION}
IMAGE_BASE=${IMAGE_BASE:-auto}
STORAGE=(${IMAGE_STORAGE_DRIVER:+--storage-driver "$IMAGE_STORAGE_DRIVER"})
CACHE=${IMAGE_CACHE:-$ROOT/.cache/image}
BASE=$(sed -n 's/^ARG PYTHON_IMAGE=//p' deploy/Dockerfile)
STANDIN_LABEL=io.csi-driver-smb-nfs.stand-in

log() { echo "make image: $*" >&2; }
die() { log "$*"; exit 1; }

[ -n "$BASE" ] || die "deploy/Dockerfile has no ARG PYTHON_IMAGE=..."

if command -v podman >/dev/null; then
    engine=(podman "${STORAGE[@]}")
    build=("${engine[@]}" build)
elif command -v buildah >/dev/null; then
    engine=(buildah "${STORAGE[@]}")
    build=("${engine[@]}" bud)
else
    die "needs podman or buildah (apt-get install podman buildah; see tests/tools/system-deps.sh)"
fi
build+=(--isolation chroot --network host --pull=never --layers)

# Both podman and buildah name an unqualified base with docker.io/library/.
qualified() {
    case "$1" in
        */*/*) echo "$1" ;;
        */*) echo "docker.io/$1" ;;
        *) echo "docker.io/library/$1" ;;
    esac
}
BASE_REF=$(qualified "$BASE")

have_image() { "${engine[@]}" inspect --type image "$1" >/dev/null 2>&1 || "${engine[@]}" images -q "$1" 2>/dev/null | grep -q .; }

is_standin() { "${engine[@]}" inspect --type image --format "{{index .Labels \"$STANDIN_LABEL\"}}" "$1" 2>/dev/null || true; }

try_pull() {
    log "pulling $BASE_REF"
    timeout 120 "${engine[@]}" pull --quiet "$BASE_REF" >/dev/null 2>&1
}

build_standin() {
    command -v mmdebstrap >/dev/null || die "needs mmdebstrap for the stand-in base (apt-get install mmdebstrap)"
    local ca=/etc/ssl/certs/ca-certificates.crt
    [ -s "$ca" ] || die "no CA bundle at $ca (apt-get install ca-certificates)"
    # Like the official image (debian:bookworm-slim underneath): no man
    # pages, docs or translations, for every later apt-get install too.
    local recipe=(
        --quiet --variant=minbase
        --include=python3,python3-pip,libpython3.11-dev,ca-certificates
        --dpkgopt='path-exclude=/usr/share/man/*'
        --dpkgopt='path-exclude=/usr/share/info/*'
        --dpkgopt='path-exclude=/usr/share/locale/*'
        --dpkgopt='path-exclude=/usr/share/doc/*'
        --dpkgopt='path-include=/usr/share/doc/*/copyright'
        --customize-hook="cp $ca \"\$1/etc/ssl/host-ca-bundle.crt\""
        --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED'
        --customize-hook='rm -f "$1"/usr/lib/python3.11/config-*/libpython3.11*.a "$1"/usr/lib/x86_64-linux-gnu/libpython3.11*.a'
        --customize-hook='ln -sf /usr/bin/python3 "$1/usr/local/bin/python"'
        --customize-hook='[ -e "$1/usr/bin/pip" ] || ln -sf /usr/bin/pip3 "$1/usr/local/bin/pip"'
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*'
        bookworm
    )
    mkdir -p "$CACHE"
    # Keyed by the recipe and the CA bundle it carries: a change of either
    # builds a new one; otherwise the cached rootfs is reused.
    local key tar
    key=$({ printf '%s\n' "${recipe[@]}"; cat "$ca"; } | sha256sum | cut -c1-12)
    tar=$CACHE/standin-bookworm-$key.tar
    if [ ! -f "$tar" ]; then
        rm -f "$CACHE"/standin-bookworm-*.tar
        log "building the stand-in base rootfs with mmdebstrap (~1 min)"
        mmdebstrap "${recipe[@]}" "$CACHE/standin-bookworm.partial.tar"
        mv "$CACHE/standin-bookworm.partial.tar" "$tar"
    fi
    local ctx
    ctx=$(mktemp -d)
    ln "$tar" "$ctx/rootfs.tar" 2>/dev/null || cp "$tar" "$ctx/rootfs.tar"
    cat >"$ctx/Containerfile" <<EOF
FROM scratch
ADD rootfs.tar /
LABEL $STANDIN_LABEL=true \\
      org.opencontainers.image.description="Stand-in for $BASE_REF built from Debian bookworm packages (mmdebstrap); carries the build machine's CA bundle"
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    LANG=C.UTF-8 \\
    PIP_CERT=/etc/ssl/host-ca-bundle.crt \\
    SSL_CERT_FILE=/etc/ssl/host-ca-bundle.crt \\
    REQUESTS_CA_BUNDLE=/etc/ssl/host-ca-bundle.crt
CMD ["python3"]
EOF
    log "importing the stand-in as $BASE_REF"
    "${build[@]}" --quiet -t "$BASE_REF" -f "$ctx/Containerfile" "$ctx" >/dev/null
    rm -rf "$ctx"
}

case "$IMAGE_BASE" in
    auto)
        if have_image "$BASE_REF" && [ "$(is_standin "$BASE_REF")" != true ]; then
            log "base $BASE_REF is present"
        elif have_image "$BASE_REF"; then
            build_standin  # cached: re-imported only when its recipe changed
        elif ! try_pull; then
            log "cannot pull $BASE_REF: building a stand-in from Debian packages"
            build_standin
        fi ;;
    pull) try_pull || die "cannot pull $BASE_REF" ;;
    standin) build_standin ;;
    *) die "IMAGE_BASE must be auto, pull or standin (got $IMAGE_BASE)" ;;
esac

log "building $IMAGE from deploy/Dockerfile (base $BASE_REF)"
start=$SECONDS
"${build[@]}" --build-arg "PYTHON_IMAGE=$BASE_REF" -f deploy/Dockerfile -t "$IMAGE" .
size=$("${engine[@]}" inspect --type image --format '{{.Size}}' "$IMAGE" 2>/dev/null || echo "?")
standin=$(is_standin "$IMAGE")
log "built $IMAGE in $((SECONDS - start)) s, $size bytes$([ "$standin" = true ] && echo " (on the stand-in base)")"
