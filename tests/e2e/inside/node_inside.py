"""Runs INSIDE the UML guest (tests/e2e/test_node_e2e.py boots it): the node
plugin with real kernel cifs / nfs mounts against Samba and the kernel NFS
server on the guest's loopback.

The file name does not match ``test_*.py`` on purpose: a host ``pytest
tests/e2e`` never collects it; the guest runs it by path and writes a junit
report the host checks (so a skip or a missing test cannot pass unnoticed).

The controller (``controller.service.build``, real backends) creates each
volume; the node (NodePlugin + LinuxPlatform, real runner and mount table)
stages and publishes it through a real gRPC server on a Unix socket.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from driver.csi import csi_pb2
from node.linux import SECRETS_DIR, mountinfo
from tests.e2e.inside.common import (
    NFS_DIR,
    SMB_DIR,
    SMB_PASSWORD,
    SMB_SHARE,
    ProcessScan,
    Volume,
    create_volume,
    delete_volume,
    healthy_again,
    in_process_driver,
    mounts_under,
    write_through,
)
from tests.e2e.inside.servers import server_down
from tests.harness import Client

pytestmark = pytest.mark.e2e

NFS_V3_ROOT = os.environ["NFS_V3_ROOT"]
PROBE_TIMEOUT = 2.0


@asynccontextmanager
async def driver(tmp: Path) -> AsyncIterator[Client]:
    async with in_process_driver(tmp, probe_timeout=PROBE_TIMEOUT) as (_, client):
        yield client


# ---------------------------------------------------------------- password scan


@dataclass
class Scan(ProcessScan):
    """Watches every process's argv (and a mount process's environment) and
    the credentials directory, in a tight loop, while a mount runs."""

    secret: bytes
    leaks: list[str] = field(default_factory=list)
    mount_processes: set[str] = field(default_factory=set)
    cred_files: dict[str, int] = field(default_factory=dict)  # name -> mode seen

    def scan_once(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if self.secret in cmdline:
                self.leaks.append(f"argv of pid {pid}")
            argv0 = cmdline.split(b"\0", 1)[0].decode(errors="replace")
            if os.path.basename(argv0).startswith("mount"):
                self.mount_processes.add(cmdline.replace(b"\0", b" ").decode(errors="replace"))
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        if self.secret in f.read():
                            self.leaks.append(f"environment of {argv0} (pid {pid})")
                except OSError:
                    pass
        try:
            for name in os.listdir(SECRETS_DIR):
                self.cred_files[name] = os.stat(os.path.join(SECRETS_DIR, name)).st_mode & 0o777
        except OSError:
            pass


# ---------------------------------------------------------------- tests


def assert_read_only(target: Path) -> None:
    with pytest.raises(OSError) as info:
        (target / "nope.txt").write_text("x")
    assert info.value.errno == errno.EROFS


async def test_smb_stage_publish_without_leaking_the_password(tmp: Path) -> None:
    async with driver(tmp) as c:
        vol = await create_volume(c, tmp, "pvc-smb", f"//127.0.0.1/{SMB_SHARE}", SMB_DIR)
        scan = Scan(SMB_PASSWORD.encode())
        async with scan.watching():
            await c.node.NodeStageVolume(vol.stage())
        assert scan.leaks == [], scan.leaks
        assert scan.passes > 0
        assert any("cifs" in p for p in scan.mount_processes), (
            f"the scan never saw the mount process ({scan.passes} passes): {scan.mount_processes}"
        )
        assert set(scan.cred_files.values()) <= {0o600}, scan.cred_files
        assert os.listdir(SECRETS_DIR) == []  # removed right after the mount
        assert oct(os.stat(SECRETS_DIR).st_mode & 0o777) == "0o700"

        (entry,) = mountinfo.at(mountinfo.read(), str(vol.staging))
        assert entry.fstype == "cifs"
        assert entry.source == f"//127.0.0.1/{SMB_SHARE}/pvc-smb"
        # (this kernel does not list nosharesock in mountinfo: check what we ran)
        assert any("nosharesock" in p for p in scan.mount_processes), scan.mount_processes
        assert SMB_PASSWORD not in " ".join(entry.super_options)

        await c.node.NodeStageVolume(vol.stage())  # idempotent
        assert len(mountinfo.at(mountinfo.read(), str(vol.staging))) == 1

        rw = tmp / "kubelet" / "pods" / "rw" / "mount"
        ro = tmp / "kubelet" / "pods" / "ro" / "mount"
        await c.node.NodePublishVolume(vol.publish(rw))
        await c.node.NodePublishVolume(vol.publish(ro, readonly=True))
        write_through(rw, "hello.txt", "written by a pod")
        assert (vol.server_dir / "hello.txt").read_text() == "written by a pod"
        assert (ro / "hello.txt").read_text() == "written by a pod"
        assert_read_only(ro)

        stats = await c.node.NodeGetVolumeStats(vol.stats(rw))
        assert not stats.volume_condition.abnormal, stats.volume_condition.message
        assert stats.usage[0].total > 0

        for target in (rw, ro):
            await c.node.NodeUnpublishVolume(vol.unpublish(target))
            assert not target.exists()
        await c.node.NodeUnstageVolume(vol.unstage())
        assert mounts_under(tmp) == []
        assert not vol.staging.exists()
        assert (vol.server_dir / "hello.txt").exists()  # unmounting never deletes data
        await delete_volume(c, vol)


@pytest.mark.parametrize(
    ("version", "source", "server_dir", "fstype"),
    [
        ("3", f"127.0.0.1:{NFS_V3_ROOT}", NFS_DIR, "nfs"),
        ("4.1", "127.0.0.1:/", NFS_DIR, "nfs4"),
    ],
    ids=["v3", "v4.1"],
)
async def test_nfs_stage_publish(
    tmp: Path, version: str, source: str, server_dir: Path, fstype: str
) -> None:
    name = f"pvc-nfs{version.replace('.', '')}"
    async with driver(tmp) as c:
        vol = await create_volume(c, tmp, name, source, server_dir, f"vers={version}")
        await c.node.NodeStageVolume(vol.stage())
        (entry,) = mountinfo.at(mountinfo.read(), str(vol.staging))
        assert entry.fstype == fstype
        assert entry.super_option("vers") == version
        await c.node.NodeStageVolume(vol.stage())  # idempotent

        rw = tmp / "kubelet" / "pods" / "rw" / "mount"
        ro = tmp / "kubelet" / "pods" / "ro" / "mount"
        await c.node.NodePublishVolume(vol.publish(rw))
        await c.node.NodePublishVolume(vol.publish(ro, readonly=True))
        write_through(rw, "hello.txt", f"nfs {version}")
        assert (vol.server_dir / "hello.txt").read_text() == f"nfs {version}"
        assert_read_only(ro)
        stats = await c.node.NodeGetVolumeStats(vol.stats(rw))
        assert not stats.volume_condition.abnormal
        units = {u.unit for u in stats.usage}
        assert csi_pb2.VolumeUsage.INODES in units

        for target in (rw, ro):
            await c.node.NodeUnpublishVolume(vol.unpublish(target))
        await c.node.NodeUnstageVolume(vol.unstage())
        assert mounts_under(tmp) == []
        await delete_volume(c, vol)


async def stats_within_bound(c: Client, vol: Volume) -> Any:
    start = time.monotonic()
    resp = await c.node.NodeGetVolumeStats(vol.stats(), timeout=PROBE_TIMEOUT + 5)
    elapsed = time.monotonic() - start
    assert elapsed < PROBE_TIMEOUT + 2, f"NodeGetVolumeStats took {elapsed:.1f} s"
    return resp


async def test_smb_server_outage_is_reported_and_heals(tmp: Path) -> None:
    async with driver(tmp) as c:
        vol = await create_volume(c, tmp, "pvc-smb-outage", f"//127.0.0.1/{SMB_SHARE}", SMB_DIR)
        await c.node.NodeStageVolume(vol.stage())
        assert not (await c.node.NodeGetVolumeStats(vol.stats())).volume_condition.abnormal
        with server_down("smb"):
            resp = await stats_within_bound(c, vol)
            assert resp.volume_condition.abnormal
            print("smb outage:", resp.volume_condition.message)
        healed, _ = await healthy_again(c.node, vol, 30)
        print(f"smb healthy again after {healed:.1f} s")
        await c.node.NodeUnstageVolume(vol.unstage())
        assert mounts_under(tmp) == []
        await delete_volume(c, vol)


async def test_nfs_server_outage_and_unstage_while_down(tmp: Path) -> None:
    async with driver(tmp) as c:
        v4 = await create_volume(c, tmp, "pvc-nfs-outage", "127.0.0.1:/", NFS_DIR, "vers=4.1")
        v3 = await create_volume(
            c, tmp, "pvc-nfs-gone", f"127.0.0.1:{NFS_V3_ROOT}", NFS_DIR, "vers=3"
        )
        await c.node.NodeStageVolume(v4.stage())
        await c.node.NodeStageVolume(v3.stage())
        with server_down("nfs"):
            resp = await stats_within_bound(c, v4)
            assert resp.volume_condition.abnormal
            print("nfs outage:", resp.volume_condition.message)
            # A hard mount of a dead server: unstage must still end, in bounded time.
            start = time.monotonic()
            await c.node.NodeUnstageVolume(v3.unstage(), timeout=30)
            print(f"unstage while the server is down: {time.monotonic() - start:.1f} s")
            assert mountinfo.at(mountinfo.read(), str(v3.staging)) == []
            assert not v3.staging.exists()
        healed, _ = await healthy_again(c.node, v4, 60)
        print(f"nfs healthy again after {healed:.1f} s")
        await c.node.NodeUnstageVolume(v4.unstage())
        assert mounts_under(tmp) == []
        await delete_volume(c, v4)
        await delete_volume(c, v3)


def test_stale_runner_state_is_clean() -> None:
    # Nothing mounted by the tests above is left in the guest.
    leftovers = [
        e
        for e in mountinfo.read()
        if e.fstype in ("cifs", "smb3", "nfs", "nfs4") and "/pytest-" in e.mount_point
    ]
    assert leftovers == []
    assert not re.search(
        r"\S", " ".join(os.listdir(SECRETS_DIR)) if os.path.isdir(SECRETS_DIR) else ""
    )
