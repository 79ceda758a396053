"""Proves the UML testbed: real kernel cifs / nfs4.1 / nfs3 mounts against
Samba and the kernel NFS server inside one guest, plus the stop/start scripts.

One guest boot (~20 s). Each step prints ``SMOKE-STEP: <name>``; a failure
prints ``SMOKE-FAILED: <name>`` and the assertion message names it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.uml.guest import GuestSetupError, ensure_setup, run_in_guest

pytestmark = pytest.mark.e2e

UML = Path(__file__).resolve().parent / "uml"

SMOKE = r"""
set -eu
UML=__UML__
cur=start
step() { cur=$1; echo "SMOKE-STEP: $1 (uptime $(cut -d' ' -f1 /proc/uptime) s)"; }
trap 'rc=$?; [ $rc = 0 ] || echo "SMOKE-FAILED: $cur (exit $rc)"' EXIT

fstype() {  # fstype <mountpoint>: filesystem type from /proc/self/mountinfo
    awk -v mp="$1" '$5 == mp {
        for (i = 7; i <= NF; i++) if ($i == "-") { print $(i + 1); exit } }' /proc/self/mountinfo
}
expect_fstype() {
    t=$(fstype "$1")
    [ "$t" = "$2" ] || { echo "mountinfo: $1 has fstype '$t', expected '$2'"; return 1; }
}
expect_file() {  # expect_file <path> <content>
    [ "$(cat "$1")" = "$2" ] || { echo "$1: unexpected content"; return 1; }
}
port_closed() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

m=/tmp/smoke
mkdir -p $m/cifs $m/nfs4 $m/nfs3
step "cifs credentials file"
(umask 077; printf 'username=%s\npassword=%s\n' "$SMB_USER" "$SMB_PASSWORD" >$m/creds)

step "cifs mount"
mount -t cifs "//127.0.0.1/$SMB_SHARE" $m/cifs -o credentials=$m/creds,vers=3.1.1
expect_fstype $m/cifs cifs
step "cifs write -> server dir"
echo via-cifs >$m/cifs/hello.txt
sync $m/cifs/hello.txt
expect_file "$SMB_SHARE_DIR/hello.txt" via-cifs
step "cifs server dir -> read"
echo from-server >"$SMB_SHARE_DIR/server.txt"
expect_file $m/cifs/server.txt from-server

step "nfs 4.1 mount"
mkdir -p "$NFS_EXPORT_DIR/v4"
mount -t nfs -o vers=4.1 "127.0.0.1:${NFS_V4_ROOT%/}/v4" $m/nfs4
expect_fstype $m/nfs4 nfs4
step "nfs 4.1 write -> server dir"
echo via-nfs4 >$m/nfs4/hello.txt
sync $m/nfs4/hello.txt
expect_file "$NFS_EXPORT_DIR/v4/hello.txt" via-nfs4

step "nfs 3 mount"
mkdir -p "$NFS_EXPORT_DIR/v3"
mount -t nfs -o vers=3 "127.0.0.1:$NFS_V3_ROOT/v3" $m/nfs3
expect_fstype $m/nfs3 nfs
step "nfs 3 write -> server dir"
echo via-nfs3 >$m/nfs3/hello.txt
sync $m/nfs3/hello.txt
expect_file "$NFS_EXPORT_DIR/v3/hello.txt" via-nfs3

step "unmount all"
umount $m/cifs $m/nfs4 $m/nfs3
for d in cifs nfs4 nfs3; do
    [ -z "$(fstype $m/$d)" ] || { echo "$m/$d still mounted"; exit 1; }
done

step "samba stop"
$UML/stop-samba.sh
port_closed 445
step "samba restart + remount"
$UML/start-samba.sh
mount -t cifs "//127.0.0.1/$SMB_SHARE" $m/cifs -o credentials=$m/creds
expect_file $m/cifs/hello.txt via-cifs
umount $m/cifs

step "nfs stop"
$UML/stop-nfs.sh
port_closed 2049
step "nfs restart + remount v3 and v4.2"
$UML/start-nfs.sh
mount -t nfs -o vers=3 "127.0.0.1:$NFS_V3_ROOT/v3" $m/nfs3
expect_file $m/nfs3/hello.txt via-nfs3
mount -t nfs -o vers=4.2 "127.0.0.1:${NFS_V4_ROOT%/}/v4" $m/nfs4
expect_file $m/nfs4/hello.txt via-nfs4
umount $m/nfs3 $m/nfs4

step done
echo SMOKE-OK
"""


@pytest.mark.root(
    reason="the UML testbed needs root (setup.sh installs packages; the guest reads the host root)"
)
def test_kernel_cifs_and_nfs_mounts_in_guest(tmp_path: Path) -> None:
    try:
        ensure_setup()  # runs tests/e2e/uml/setup.sh on a fresh machine
    except GuestSetupError as e:
        pytest.fail(str(e))

    res = run_in_guest(
        SMOKE.replace("__UML__", str(UML)), workdir=tmp_path, samba=True, nfs=True, timeout=300
    )

    print(
        f"guest: exit {res.returncode}, {res.duration:.1f} s, "
        f"peak {(res.peak_mem_kib or 0) // 1024} MiB"
    )
    failed = re.findall(r"SMOKE-FAILED: (.*)", res.output)
    where = f"failed step: {failed[-1]}" if failed else "no step reported failure"
    assert res.returncode == 0, (
        f"guest exit {res.returncode} ({where}); console tail:\n{res.output[-6000:]}"
    )
    assert "SMOKE-OK" in res.output, res.output[-6000:]
