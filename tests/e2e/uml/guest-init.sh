#!/bin/bash
# PID 1 of the user-mode-Linux e2e guest (booted by guest.py with
# `init=<this file> E2E_WORKDIR=<dir> E2E_UMLDIR=<dir> E2E_OVERLAYS=<a:b>`;
# those become our environment. The host root is the guest root,
# read-only through hostfs).
#
#  - mounts proc/sys/dev/devpts, tmpfs /run /tmp /dev/shm /srv, tmpfs-backed
#    overlays on /etc /var /usr/lib /root (+ $E2E_OVERLAYS, e.g. the repo):
#    writes there succeed inside the guest and are thrown away at poweroff;
#  - mounts $E2E_WORKDIR read-write (hostfs): the ONLY path whose writes reach
#    the host. It holds `env` (sourced, exported), `cmd.sh` (the command);
#    this script writes `exitcode` there;
#  - links the UML modules so modprobe works, brings up lo,
#  - starts Samba / the kernel NFS server / the Samba AD DC when
#    START_SAMBA=1 / START_NFS=1 / START_ADDC=1,
#  - runs `bash cmd.sh` in $E2E_CWD with the console as stdin/out/err,
#  - writes its exit code, syncs, powers off.
# Exit code 125 + an "E2E-GUEST: setup failed" line = the guest setup broke
# before the command ran. PID 1 must never exit (kernel panic): everything
# runs in a `set -eu` subshell; PID 1 itself only records its status and
# powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb
here=$(dirname "$(readlink -f "$0")")
WD=${E2E_WORKDIR:-}

log() { echo "E2E-GUEST: $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

halt_guest() {
    sync
    poweroff -f >/dev/null 2>&1
    # fallbacks if poweroff is not usable without systemd
    echo o >/proc/sysrq-trigger 2>/dev/null
    sleep 5
    halt -f -p
    while :; do sleep 60; done   # never let PID 1 exit
}

finish() {   # finish <exit code>
    if [ -n "$WD" ] && mountpoint -q "$WD" 2>/dev/null; then
        echo "$1" >"$WD/exitcode.tmp" && mv "$WD/exitcode.tmp" "$WD/exitcode"
    fi
    halt_guest
}

step() {     # step <description> <command...>: run, or report and exit 125
    local what=$1
    shift
    if ! "$@"; then
        log "setup failed at: $what"
        exit 125
    fi
}

reveal() {   # reveal <dir>: a host dir hidden by our tmpfs (/tmp, /run, /srv)
    case "$1" in
        /tmp/* | /run/* | /srv/* | /dev/shm/*)
            mkdir -p "$1" && mount -t hostfs -o "$1" -r hostfs "$1" ;;
    esac
}

overlay() {  # overlay <dir>: tmpfs-backed writable layer over a read-only dir
    local d=$1 n
    [ -d "$d" ] || return 0
    n=$(echo "$d" | tr / _)
    mkdir -p "/run/e2e-ovl/$n/upper" "/run/e2e-ovl/$n/work" &&
        mount -t overlay "ovl$n" \
            -o "lowerdir=$d,upperdir=/run/e2e-ovl/$n/upper,workdir=/run/e2e-ovl/$n/work" "$d"
}

mount_basics() {
    mount -t proc proc /proc &&
        mount -t sysfs sysfs /sys &&
        { mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev; } &&
        mkdir -p /dev/pts /dev/shm &&
        mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts &&
        mount -t tmpfs -o mode=1777 shm /dev/shm &&
        mount -t tmpfs -o mode=755 run /run &&
        mount -t tmpfs -o mode=1777 tmp /tmp &&
        { [ ! -d /srv ] || mount -t tmpfs -o mode=755,size=1m srv /srv; } &&
        touch /run/e2e-guest     # marker: the server scripts refuse to run elsewhere
}

mount_workdir() {
    [ -n "$WD" ] || { echo "E2E_WORKDIR not set on the kernel command line"; return 1; }
    mkdir -p "$WD" && mount -t hostfs -o "$WD" hostfs "$WD"
}

mount_umldir() {
    [ -n "${E2E_UMLDIR:-}" ] || { echo "E2E_UMLDIR not set on the kernel command line"; return 1; }
    mkdir -p /run/e2e-uml && mount -t hostfs -o "$E2E_UMLDIR" -r hostfs /run/e2e-uml
}

link_modules() {  # so that modprobe (and the kernel's request_module) work
    local ver
    ver=$(uname -r)
    mkdir -p /usr/lib/modules &&
        ln -sfn "/run/e2e-uml/root/usr/lib/uml/modules/$ver" "/usr/lib/modules/$ver"
}

main() {
    set -eu
    step "mount proc/sys/dev/run/tmp" mount_basics
    # $E2E_UMLDIR (setup.sh's cache) at a fixed path: the host path may be
    # hidden (e.g. under /tmp). overlay is a module and /usr/lib/modules is
    # not writable yet: load it from the depmod'ed tree directly.
    step "mount E2E_UMLDIR (hostfs)" mount_umldir
    step "load overlay module" modprobe -d /run/e2e-uml/modroot overlay
    # E2E_OVERLAYS (kernel command line, ':'-separated): extra dirs, e.g. the repo.
    local d extra
    IFS=: read -r -a extra <<<"${E2E_OVERLAYS:-}" || true
    for d in ${extra[@]+"${extra[@]}"}; do
        # e.g. a CI checkout under /tmp: mount it again from the host first
        if [ -n "$d" ]; then step "reveal $d" reveal "$d"; fi
    done
    for d in /etc /var /usr/lib /root ${extra[@]+"${extra[@]}"}; do
        if [ -n "$d" ]; then step "overlay $d" overlay "$d"; fi
    done
    # after the overlays, which would hide it if it lies below one of them
    step "mount workdir $WD (hostfs)" mount_workdir
    step "read $WD/env" test -f "$WD/env"
    set -a
    # shellcheck disable=SC1091
    . "$WD/env"
    set +a
    step "link modules" link_modules
    step "lo up" ip link set lo up
    hostname "${GUEST_HOSTNAME:-e2e-guest}" 2>/dev/null || true

    # Both servers start concurrently (each spends time waiting).
    local pids=() names=() i
    if [ "${START_SAMBA:-0}" = 1 ]; then
        log "starting samba (uptime $(uptime_s) s)"
        "$here/start-samba.sh" & pids+=($!) names+=(samba)
    fi
    if [ "${START_NFS:-0}" = 1 ]; then
        log "starting nfs (uptime $(uptime_s) s)"
        "$here/start-nfs.sh" & pids+=($!) names+=(nfs)
    fi
    if [ "${START_ADDC:-0}" = 1 ]; then
        log "starting the AD DC (uptime $(uptime_s) s)"
        "$here/start-addc.sh" & pids+=($!) names+=(addc)
    fi
    for i in "${!pids[@]}"; do
        step "start ${names[$i]}" wait "${pids[$i]}"
    done

    step "cd ${E2E_CWD:-/}" cd "${E2E_CWD:-/}"
    log "running command (uptime $(uptime_s) s)"
    local rc=0
    bash "$WD/cmd.sh" </dev/null || rc=$?
    log "command exited with $rc (uptime $(uptime_s) s)"
    exit "$rc"
}

# PID 1: run everything in a subshell (mounts are shared with it), then
# record its status and power off whatever happened.
(main)
finish $?
