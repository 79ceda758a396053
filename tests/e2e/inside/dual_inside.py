"""Runs INSIDE the UML guest (tests/e2e/test_dual_e2e.py boots it): a
dual-protocol volume with real kernel nfs and cifs mounts of ONE directory.

Samba's share directory is bind-mounted onto the kernel NFS server's export
before the first SMB connection, so Samba and knfsd serve the same tmpfs.
The export squashes every NFS user to the Samba account's uid/gid
(``all_squash,anonuid=,anongid=``): the simplest identity mapping of a
Samba + knfsd server (docs/mixed-clusters.md), so what either side writes
the other may change and delete.
The controller creates the volume through each ``provisionVia``; the Linux
node stages and publishes it twice, over NFS (the default ``linuxProtocol``)
and over cifs (``linuxProtocol: smb``); a file written through either target
reads back byte-identical through the other.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from controller.params import TRASH_DIR
from driver.csi import csi_pb2
from driver.volume_id import parse_volume_id
from node.linux import mountinfo
from tests.csi_requests import cap
from tests.e2e.inside.common import (
    NFS_DIR,
    SMB_DIR,
    SMB_PASSWORD,
    SMB_SHARE,
    SMB_USER,
    STAGING,
    Volume,
    in_process_driver,
    mounts_under,
)
from tests.e2e.inside.servers import nfs_exports
from tests.harness import Client, wait_until

pytestmark = pytest.mark.e2e

NFS_V4_ROOT = os.environ["NFS_V4_ROOT"].rstrip("/")
TREE = "k8s"
FLAGS = ("nfs:nfsvers=4.1", "smb:vers=3.0")
SECRETS = {"username": SMB_USER, "password": SMB_PASSWORD}


@pytest.fixture(scope="module")
def one_directory() -> Iterator[Path]:
    """Samba's share becomes the NFS export's directory (a bind mount), and
    NFS users map to the Samba account."""
    account = pwd.getpwnam(SMB_USER)
    squash = f"all_squash,anonuid={account.pw_uid},anongid={account.pw_gid}"
    with nfs_exports("no_root_squash", squash):
        subprocess.run(["mount", "--bind", str(NFS_DIR), str(SMB_DIR)], check=True)
        try:
            tree = NFS_DIR / TREE
            tree.mkdir(exist_ok=True)
            tree.chmod(0o777)  # root over NFS and the SMB user both create here
            assert (SMB_DIR / TREE).is_dir()
            yield tree
        finally:
            subprocess.run(["umount", str(SMB_DIR)], check=False)


@asynccontextmanager
async def driver(tmp: Path) -> AsyncIterator[Client]:
    async with in_process_driver(tmp) as (_, client):
        yield client


def params(**extra: str) -> dict[str, str]:
    return {
        "smbSource": f"//127.0.0.1/{SMB_SHARE}/{TREE}",
        "nfsSource": f"127.0.0.1:{NFS_V4_ROOT}/{TREE}",
        "mountPermissions": "0777",
        **extra,
    }


async def create(c: Client, tmp: Path, name: str, staging: str, **extra: str) -> Volume:
    via = extra.get("provisionVia", "nfs")
    resp = await c.controller.CreateVolume(
        csi_pb2.CreateVolumeRequest(
            name=name,
            parameters=params(**extra),
            volume_capabilities=[cap(*FLAGS)],
            secrets=SECRETS if via == "smb" else {},
        )
    )
    vol = resp.volume
    node_secrets = SECRETS if vol.volume_context["linuxProtocol"] == "smb" else {}
    return Volume(
        vol.volume_id,
        dict(vol.volume_context),
        FLAGS,
        node_secrets,
        tmp / "kubelet" / STAGING / staging / "globalmount",
        NFS_DIR / TREE / vol.volume_context["subDir"],
    )


def write(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("via", ["nfs", "smb"])
async def test_one_directory_over_nfs_and_cifs(tmp: Path, one_directory: Path, via: str) -> None:
    name = f"pvc-dual-{via}"
    async with driver(tmp) as c:
        over_nfs = await create(c, tmp, name, "nfs", subDir=name, provisionVia=via)
        # A second class on the same tree: Linux nodes mount its SMB side.
        over_cifs = await create(
            c, tmp, name + "-cifs", "cifs", subDir=name, provisionVia=via, linuxProtocol="smb"
        )
        assert parse_volume_id(over_nfs.id).subdir == parse_volume_id(over_cifs.id).subdir
        assert sorted(os.listdir(one_directory)) == [name]  # one directory on the server
        assert "password" not in str(over_cifs.context).lower()

        await c.node.NodeStageVolume(over_nfs.stage())
        await c.node.NodeStageVolume(over_cifs.stage())
        (nfs_entry,) = mountinfo.at(mountinfo.read(), str(over_nfs.staging))
        (cifs_entry,) = mountinfo.at(mountinfo.read(), str(over_cifs.staging))
        assert nfs_entry.fstype.startswith("nfs")
        assert nfs_entry.super_option("vers") == "4.1"
        assert cifs_entry.fstype == "cifs"
        assert cifs_entry.super_option("vers") == "3.0"
        assert cifs_entry.source.endswith(f"/{SMB_SHARE}/{TREE}/{name}")

        nfs_target = tmp / "kubelet" / "pods" / "linux-nfs" / "mount"
        cifs_target = tmp / "kubelet" / "pods" / "linux-cifs" / "mount"
        await c.node.NodePublishVolume(over_nfs.publish(nfs_target))
        await c.node.NodePublishVolume(over_cifs.publish(cifs_target))

        data = os.urandom(256 * 1024) + b"\x00end"
        write(nfs_target / "from-nfs.bin", data)
        assert (cifs_target / "from-nfs.bin").read_bytes() == data
        back = os.urandom(300 * 1024)
        write(cifs_target / "from-cifs.bin", back)
        assert (nfs_target / "from-cifs.bin").read_bytes() == back
        # The server holds each file once, in the one directory.
        assert digest(over_nfs.server_dir / "from-nfs.bin") == hashlib.sha256(data).hexdigest()
        assert digest(over_nfs.server_dir / "from-cifs.bin") == hashlib.sha256(back).hexdigest()
        assert sorted(os.listdir(over_nfs.server_dir)) == ["from-cifs.bin", "from-nfs.bin"]
        owners = {(over_nfs.server_dir / f).stat().st_uid for f in os.listdir(over_nfs.server_dir)}
        assert owners == {pwd.getpwnam(SMB_USER).pw_uid}  # one identity on both sides

        for vol, target in ((over_nfs, nfs_target), (over_cifs, cifs_target)):
            await c.node.NodeUnpublishVolume(vol.unpublish(target))
            await c.node.NodeUnstageVolume(vol.unstage())
        assert mounts_under(tmp) == []

        await c.controller.DeleteVolume(
            csi_pb2.DeleteVolumeRequest(
                volume_id=over_nfs.id, secrets=SECRETS if via == "smb" else {}
            )
        )
        assert not over_nfs.server_dir.exists()
        # It held files: it went into the trash at once, and the purge empties that.
        trash = Path(one_directory) / TRASH_DIR
        assert os.listdir(one_directory) == [TRASH_DIR]
        await wait_until(lambda: os.listdir(trash) == [], timeout=60)
        trash.rmdir()  # the next case starts from an empty tree
