#!/bin/bash
# Prepare the host for the user-mode-Linux (UML) e2e testbed.
# See /work/shared/notes/testbed.md and tests/e2e/uml/README.md.
#
#  1. installs the host packages the guest needs (the guest runs the host's
#     own userland through hostfs), without starting any service on the host;
#  2. downloads the user-mode-linux .deb into $UML_DIR (default
#     <repo>/.cache/uml) and unpacks it there (nothing installed system-wide);
#  3. builds a depmod'ed module tree so `modprobe` works inside the guest.
#
# Idempotent and fast (<0.2 s) when everything is in place. Safe to run
# concurrently (flock). Prints the kernel path on its last line:
#   UML_KERNEL=<path>
set -eu

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
UML_DIR=${UML_DIR:-$repo/.cache/uml}

# Host packages. The guest uses: mount/modprobe/ip/ps, smbd+smbpasswd
# (samba), mount.cifs (cifs-utils), rpcbind, rpc.nfsd/mountd/exportfs
# (nfs-kernel-server), mount.nfs/rpc.statd (nfs-common), useradd (passwd).
# smbclient is handy for debugging/tests.
# Kerberos (tests/e2e/test_kerberos_e2e.py): a Samba AD DC (samba-ad-dc;
# samba-ad-provision is not pulled in by it), kinit/kvno (krb5-user) and
# request-key for cifs.upcall (keyutils).
PACKAGES="samba smbclient cifs-utils nfs-kernel-server nfs-common rpcbind kmod
iproute2 procps util-linux mount passwd
samba-ad-dc samba-ad-provision samba-dsdb-modules winbind krb5-user keyutils"

missing_packages() {
    local p st
    for p in $PACKAGES; do
        st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
        [ "$st" = installed ] || printf '%s ' "$p"
    done
}

uml_ready() {
    [ -f "$UML_DIR/.ready" ] || return 1
    local ver modlink
    ver=$(cat "$UML_DIR/.ready")
    modlink=../../../root/usr/lib/uml/modules/$ver
    [ -x "$UML_DIR/root/usr/bin/linux.uml" ] &&
        [ -s "$UML_DIR/root/usr/lib/uml/modules/$ver/modules.dep" ] &&
        [ "$(readlink "$UML_DIR/modroot/lib/modules/$ver")" = "$modlink" ]
}

# Fast path: nothing to do.
missing=$(missing_packages)
if [ -z "$missing" ] && uml_ready; then
    echo "UML_KERNEL=$UML_DIR/root/usr/bin/linux.uml"
    exit 0
fi

# ---- 1. host packages -------------------------------------------------------
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup.sh: missing host packages: $missing" >&2
        echo "setup.sh: run as root, or: apt-get install -y --no-install-recommends $missing" >&2
        exit 1
    fi
    echo "setup.sh: installing: $missing" >&2
    # Keep maintainer scripts from starting smbd/nmbd/rpcbind/nfsd on the
    # host: invoke-rc.d and deb-systemd-invoke honour policy-rc.d (101 =
    # "action forbidden"). An existing policy-rc.d (e.g. Docker's) is kept.
    policy=/usr/sbin/policy-rc.d
    own_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# temporary, from tests/e2e/uml/setup.sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
        trap 'rm -f "$policy"' EXIT
    fi
    apt_opts="-y -q --no-install-recommends -o DPkg::Lock::Timeout=600"
    # shellcheck disable=SC2086
    if ! DEBIAN_FRONTEND=noninteractive apt-get install $apt_opts $missing >&2; then
        # A fresh machine may have no (or stale) package lists.
        apt-get update -q -o DPkg::Lock::Timeout=600 >&2
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install $apt_opts $missing >&2
    fi
    if [ -n "$own_policy" ]; then
        rm -f "$policy"
        trap - EXIT
    fi
    # Nothing should have started; warn (never kill: they may be someone
    # else's) if a host daemon is running anyway.
    for d in smbd nmbd rpcbind rpc.mountd rpc.statd nfsd; do
        if pgrep -x "$d" >/dev/null 2>&1; then
            echo "setup.sh: warning: host daemon '$d' is running (not started by the testbed guest)" >&2
        fi
    done
fi

# ---- 2./3. UML kernel + module tree ------------------------------------------
mkdir -p "$UML_DIR"
exec 9>"$UML_DIR/.lock"
flock 9                      # one unpacker at a time
if ! uml_ready; then
    echo "setup.sh: fetching user-mode-linux into $UML_DIR" >&2
    rm -rf "$UML_DIR/deb.tmp" "$UML_DIR/root.tmp" "$UML_DIR/modroot"
    mkdir -p "$UML_DIR/deb.tmp"
    # Let apt's sandbox user write there (avoids an "unsandboxed" warning).
    if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$UML_DIR/deb.tmp"; fi
    # apt-get download needs no root, only package lists.
    if ! (cd "$UML_DIR/deb.tmp" && apt-get download -q user-mode-linux >&2); then
        if [ "$(id -u)" = 0 ]; then
            apt-get update -q -o DPkg::Lock::Timeout=600 >&2
            (cd "$UML_DIR/deb.tmp" && apt-get download -q user-mode-linux >&2)
        else
            echo "setup.sh: apt-get download user-mode-linux failed (run 'apt-get update' as root?)" >&2
            exit 1
        fi
    fi
    mkdir -p "$UML_DIR/root.tmp"
    dpkg-deb -x "$UML_DIR"/deb.tmp/user-mode-linux_*.deb "$UML_DIR/root.tmp"
    # The module directory name is the guest's `uname -r`.
    ver=$(ls "$UML_DIR/root.tmp/usr/lib/uml/modules" | head -n1)
    [ -n "$ver" ] || { echo "setup.sh: no modules in the UML package" >&2; exit 1; }
    rm -rf "$UML_DIR/root"
    mv "$UML_DIR/root.tmp" "$UML_DIR/root"
    # depmod wants <base>/lib/modules/<ver>; point it at the unpacked tree
    # (modules.dep etc. are written into the unpacked tree itself). Relative
    # link: the guest sees $UML_DIR at another path (/run/e2e-uml).
    mkdir -p "$UML_DIR/modroot/lib/modules"
    ln -sfn "../../../root/usr/lib/uml/modules/$ver" "$UML_DIR/modroot/lib/modules/$ver"
    /sbin/depmod -b "$UML_DIR/modroot" "$ver"
    rm -rf "$UML_DIR/deb.tmp"      # the 41 MB .deb is no longer needed
    echo "$ver" >"$UML_DIR/.ready"
fi
echo "UML_KERNEL=$UML_DIR/root/usr/bin/linux.uml"
