#!/bin/bash
# PID 1 of the user-mode-Linux e2e guest (booted by guest.py with
# `init=<this file> E2E_WORKDIR=<dir> E2E_MODROOT=<dir> E2E_OVERLAYS=<a:b>`;
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
#  - starts Samba / the kernel NFS server when START_SAMBA=1 / START_NFS=1,
#  - runs `bash cmd.sh` in $E2E_CWD with the console as stdin/out/err,
#  - writes its exit code, syncs, powers off.
# Exit code 125 + an "E2E-GUEST: setup failed" line = the guest setup broke
# before the command ran. PID 1 must never exit (kernel panic), hence no -e
# at top level: every step goes through `step`.
set -u
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

step() {     # step <description> <command...>: run, or report + power off
    local what=$1
    shift
    if ! "$@"; then
        log "setup failed at: $what"
        finish 125
    fi
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

link_modules() {
    local ver
    ver=$(uname -r)
    [ -d "${UML_MODULES:-}" ] || { echo "UML_MODULES not set or missing"; return 1; }
    mkdir -p /usr/lib/modules && ln -sfn "$UML_MODULES" "/usr/lib/modules/$ver"
}

step "mount proc/sys/dev/run/tmp" mount_basics
# overlay is a module; /usr/lib/modules is not writable yet: use the
# depmod'ed tree from setup.sh directly.
step "load overlay module" modprobe -d "${E2E_MODROOT:-}" overlay
# E2E_OVERLAYS (kernel command line, ':'-separated): extra dirs, e.g. the repo.
IFS=: read -r -a extra <<<"${E2E_OVERLAYS:-}"
for d in /etc /var /usr/lib /root ${extra[@]+"${extra[@]}"}; do
    [ -n "$d" ] && step "overlay $d" overlay "$d"
done
# after the overlays, which would hide it if it lies below one of them
step "mount workdir $WD (hostfs)" mount_workdir
[ -f "$WD/env" ] || { log "setup failed at: no $WD/env"; finish 125; }
set -a
# shellcheck disable=SC1091
. "$WD/env"
set +a
step "link modules" link_modules
step "lo up" ip link set lo up
hostname "${GUEST_HOSTNAME:-e2e-guest}" 2>/dev/null || true

# Both servers start concurrently (each spends time waiting).
pids=() names=()
if [ "${START_SAMBA:-0}" = 1 ]; then
    log "starting samba (uptime $(uptime_s) s)"
    "$here/start-samba.sh" & pids+=($!) names+=(samba)
fi
if [ "${START_NFS:-0}" = 1 ]; then
    log "starting nfs (uptime $(uptime_s) s)"
    "$here/start-nfs.sh" & pids+=($!) names+=(nfs)
fi
for i in "${!pids[@]}"; do
    step "start ${names[$i]}" wait "${pids[$i]}"
done

log "running command (uptime $(uptime_s) s)"
cd "${E2E_CWD:-/}" || finish 125
bash "$WD/cmd.sh" </dev/null
rc=$?
log "command exited with $rc (uptime $(uptime_s) s)"
finish "$rc"
