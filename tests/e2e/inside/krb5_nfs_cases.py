"""NFS sec=krb5 volumes whose tickets come from the secret: the guest's
kernel NFS server exports with Kerberos only (rpc.svcgssd with the
nfs/nfs1.e2e.test key from the AD DC), and rpc.gssd runs as the chart's gssd
container does, from the root cache the node writes.  Collected through
kerberos_inside.py.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from node.linux import mountinfo
from tests.e2e.inside.common import STAGING, Volume, write_through
from tests.e2e.inside.krb5_domain import (
    ADDC,
    KEYTAB,
    REALM,
    STALE_KEYTAB,
    EnvScan,
    assert_forgotten,
    keytab_secret,
    krb5_driver,
)

NFS_SERVER = "nfs1.e2e.test"
NFS_DIR = Path("/srv/nfs-krb5")


def sh(*argv: str, **kw: Any) -> None:
    subprocess.run(list(argv), check=True, **kw)


def serve_nfs_with_krb5_only(tmp: Path) -> None:
    """The kernel NFS server exporting with sec=krb5:krb5i:krb5p only (no
    sys), rpc.svcgssd with the nfs/nfs1.e2e.test key.  The client side has
    no /etc/krb5.conf, no keytab and no tickets of its own."""
    conf = tmp / "server-krb5.conf"
    conf.write_text(
        f"[libdefaults]\n default_realm = {REALM}\n dns_lookup_kdc = false\n rdns = false\n"
        f"[realms]\n {REALM} = {{\n  kdc = 127.0.0.1\n }}\n"
    )
    with open("/etc/hosts", "a", encoding="utf-8") as f:
        f.write(f"127.0.0.1 {NFS_SERVER}\n")
    (Path("/etc/krb5.keytab")).write_bytes((ADDC / "nfs-server.keytab").read_bytes())
    os.chmod("/etc/krb5.keytab", 0o600)
    for module in ("auth_rpcgss", "rpcsec_gss_krb5", "nfsd", "nfsv4"):
        sh("modprobe", module)
    pipefs = Path("/run/rpc_pipefs")
    pipefs.mkdir(exist_ok=True)
    sh("mount", "-t", "rpc_pipefs", "rpc_pipefs", str(pipefs))
    sh("mount", "-t", "nfsd", "nfsd", "/proc/fs/nfsd")
    NFS_DIR.mkdir(exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", "size=16m,mode=777", "nfsk", str(NFS_DIR))
    Path("/etc/exports").write_text(
        f"{NFS_DIR} *(rw,sync,no_subtree_check,no_root_squash,insecure,fsid=0,"
        "sec=krb5:krb5i:krb5p)\n"
    )
    sh("rpcbind", "-w")
    sh("exportfs", "-ra")
    sh("rpc.svcgssd", env={**os.environ, "KRB5_CONFIG": str(conf)})
    sh("rpc.mountd")
    sh("rpc.nfsd", "4")


def start_gssd(krb5_dir: Path) -> subprocess.Popen[bytes]:
    """rpc.gssd as the chart's gssd container runs it: root's cache from
    the driver's directory (-n -d), the driver's krb5.conf first, and no
    machine keytab (-k to a file that does not exist)."""
    env = {**os.environ, "KRB5_CONFIG": f"{krb5_dir}/nfs/krb5.conf:/etc/krb5.conf"}
    return subprocess.Popen(
        ["rpc.gssd", "-f", "-n", "-d", f"{krb5_dir}/nfs", "-k", "/nonexistent.keytab",
         "-p", "/run/rpc_pipefs"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def nfs_volume(tmp: Path, name: str, secrets: dict[str, str], *flags: str) -> Volume:
    """Volume ``name``: the export's ``vol`` directory, mounted with ``flags``
    and ``secrets``."""
    return Volume(
        name,
        {"source": f"{NFS_SERVER}:/", "subDir": "vol"},
        flags,
        secrets,
        tmp / "kubelet" / STAGING / name / "globalmount",
        NFS_DIR / "vol",
    )


async def test_nfs_sec_krb5_from_the_secret(tmp: Path) -> None:
    """NFS Kerberos fed from the secret: the node stages a sec=krb5 NFSv4.1
    volume (and a krb5p NFSv4.2 one with the same identity) with tickets it
    got from the keytab into rpc.gssd's cache for root; a file written through
    the target reaches the export; a second identity is refused; the cache
    goes with the last unstage."""
    serve_nfs_with_krb5_only(tmp)
    (NFS_DIR / "vol").mkdir()
    (NFS_DIR / "vol").chmod(0o777)
    Path("/etc/krb5.conf").unlink(missing_ok=True)
    async with krb5_driver(tmp) as (c, krb5_dir):
        gssd = start_gssd(krb5_dir)
        try:
            krb5 = nfs_volume(tmp, "nfs-a", keytab_secret(), "vers=4.1", "sec=krb5")
            t1 = tmp / "kubelet" / "pods" / "p-nfs-a" / "mount"
            scan = EnvScan(KEYTAB.encode())
            async with scan.watching():
                await c.node.NodeStageVolume(krb5.stage())
            assert scan.leaks == [], scan.leaks
            (entry,) = mountinfo.at(mountinfo.read(), str(krb5.staging))
            assert (entry.fstype, entry.super_option("sec")) == ("nfs4", "krb5"), entry
            cache = krb5_dir / "nfs" / "krb5cc_0"
            st = cache.stat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
            await c.node.NodePublishVolume(krb5.publish(t1))
            write_through(t1, "nfs.txt", "over NFS with Kerberos from the secret")
            assert (krb5.server_dir / "nfs.txt").read_text().endswith("from the secret")

            krb5p = nfs_volume(tmp, "nfs-b", keytab_secret(), "vers=4.2", "sec=krb5p")
            t2 = tmp / "kubelet" / "pods" / "p-nfs-b" / "mount"
            await c.node.NodeStageVolume(krb5p.stage())
            await c.node.NodePublishVolume(krb5p.publish(t2))
            assert (t2 / "nfs.txt").read_text().endswith("from the secret")

            other = keytab_secret(STALE_KEYTAB, "stale")
            other_identity = nfs_volume(tmp, "nfs-c", other, "vers=4.1", "sec=krb5")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c.node.NodeStageVolume(other_identity.stage())
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            # (user names and realms of secrets are *** in every message)
            assert "already authenticate as" in (info.value.details() or "")
            assert mountinfo.at(mountinfo.read(), str(other_identity.staging)) == []

            await c.node.NodeUnpublishVolume(krb5.unpublish(t1))
            await c.node.NodeUnstageVolume(krb5.unstage())
            await c.node.NodeUnpublishVolume(krb5p.unpublish(t2))
            assert cache.exists()  # nfs-b still staged
            await c.node.NodeUnstageVolume(krb5p.unstage())
            assert not cache.exists()
            assert_forgotten(krb5_dir)
            assert not (krb5_dir / "nfs" / "krb5.conf").exists()
        finally:
            gssd.terminate()
            gssd.wait(10)
