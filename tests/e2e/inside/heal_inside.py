"""Runs INSIDE the UML guest (tests/e2e/test_node_heal_e2e.py boots it):
self-healing republish and inline ephemeral volumes with real kernel cifs /
nfs mounts, Samba and the kernel NFS server on the guest's loopback.

Republish: the kubelet-like directory is rshared (as kubelet's root is); a
"container" is modelled as runc sets one up for a volume mount with
``mountPropagation: HostToContainer``: its own mount namespace (everything
rslave), the target ``--rbind``-ed into its own root and made rslave, and a
process chroot-ed into that root that lists and reads the volume in a loop.
The server breaks so that the mount goes stale, comes back, and
NodePublishVolume is called again as kubelet's republish would; the process
in the other namespace must read through the same path again.

The file name does not match ``test_*.py`` on purpose (see node_inside.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path

import grpc
import pytest

from driver.csi import csi_pb2
from driver.server import DriverServer
from node.linux import mountinfo
from tests.e2e.inside.common import (
    NFS_DIR,
    SMB_DIR,
    SMB_PASSWORD,
    SMB_SHARE,
    SMB_USER,
    create_volume,
    in_process_driver,
    inline_publish,
    mounts_under,
)
from tests.e2e.inside.servers import nfs_unreachable, replace_with_copy, server_down
from tests.harness import Client, wait_until

pytestmark = pytest.mark.e2e

PROBE_TIMEOUT = 2.0
MOUNT_TIMEOUT = 30.0
# How long the container may take to see the dead mount, and to read again
# after the republish returned (generous: UML is slow; the numbers are printed).
SEE_BROKEN_WITHIN = 60.0
HEALED_WITHIN = 20.0

# The container's process: its own root (``root``) holding only the volume
# at /data, like a runc container with a HostToContainer volume mount.
READER = r"""
import errno, os, subprocess, sys, time
root, target, status = sys.argv[1:4]
data = os.path.join(root, "data")
os.makedirs(data, exist_ok=True)
subprocess.run(["mount", "--rbind", target, data], check=True)
subprocess.run(["mount", "--make-rslave", data], check=True)
fd = os.open(status, os.O_WRONLY | os.O_CREAT, 0o644)
os.chroot(root)
os.chdir("/")
while True:
    try:
        os.listdir("/data")
        f = os.open("/data/hello.txt", os.O_RDONLY)
        try:
            state = "ok " + os.read(f, 100).decode()
        finally:
            os.close(f)
    except OSError as exc:
        state = "err " + errno.errorcode.get(exc.errno or 0, str(exc.errno))
    os.pwrite(fd, state.encode()[:120].ljust(128), 0)
    time.sleep(0.1)
"""


def driver(tmp: Path) -> AbstractAsyncContextManager[tuple[DriverServer, Client]]:
    return in_process_driver(
        tmp, mount_timeout=MOUNT_TIMEOUT, probe_timeout=PROBE_TIMEOUT, metrics=True
    )


@contextmanager
def rshared(path: Path) -> Iterator[None]:
    """Make ``path`` an rshared mount, as kubelet's root directory is."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    subprocess.run(["mount", "--make-rshared", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


class Container:
    """A process in its own mount namespace reading the volume."""

    def __init__(self, tmp: Path, target: Path) -> None:
        self.root = tmp / "container-root"
        self.status = tmp / "container-status"
        self.root.mkdir()
        self.proc = subprocess.Popen(
            [
                "unshare", "-m", "--propagation", "slave", "--",
                sys.executable, "-c", READER, str(self.root), str(target), str(self.status),
            ],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def state(self) -> str:
        try:
            return self.status.read_bytes().rstrip(b" ").decode(errors="replace")
        except FileNotFoundError:
            return "starting"

    async def until(self, prefix: str, timeout: float) -> float:
        """Seconds until the process reports ``prefix`` (-1 if it never does)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"the container process exited: {self.proc.returncode}")
            if self.state().startswith(prefix):
                return time.monotonic() - start
            await asyncio.sleep(0.05)
        return -1.0

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def mount_ids(path: Path) -> list[tuple[int, str]]:
    return [(e.mount_id, e.mount_point) for e in mounts_under(path)]


def metric(server: DriverServer, name: str, protocol: str) -> float:
    assert server.metrics is not None
    text = server.metrics.render().decode()
    found = re.search(rf'^{name}{{protocol="{protocol}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


# ---------------------------------------------------------------- republish


@pytest.mark.parametrize("protocol", ["nfs", "smb"])
async def test_republish_heals_a_running_container(tmp: Path, protocol: str) -> None:
    kubelet = tmp / "kubelet"
    with rshared(kubelet):
        async with driver(tmp) as (srv, c):
            if protocol == "nfs":
                vol = await create_volume(c, tmp, "pvc-heal-nfs", "127.0.0.1:/", NFS_DIR)
            else:
                vol = await create_volume(
                    c, tmp, "pvc-heal-smb", f"//127.0.0.1/{SMB_SHARE}", SMB_DIR
                )
            target = kubelet / "pods" / "p1" / "volumes" / "mount"
            await c.node.NodeStageVolume(vol.stage())
            await c.node.NodePublishVolume(vol.publish(target))
            (target / "hello.txt").write_text(f"hello over {protocol}")

            container = Container(tmp, target)
            try:
                assert await container.until("ok", 30) >= 0, container.state()
                assert container.state() == f"ok hello over {protocol}"

                # A healthy republish changes nothing.
                before = mount_ids(kubelet)
                await c.node.NodePublishVolume(vol.publish(target))
                assert mount_ids(kubelet) == before

                # Break the server: the volume's directory re-created from a copy
                # while the server is down (NFS: new file handles; SMB: new inode
                # numbers, the root's lookups give ESTALE).
                with server_down(protocol):
                    replace_with_copy(vol.server_dir)
                back = time.monotonic()
                seen = await container.until("err", SEE_BROKEN_WITHIN)
                assert seen >= 0, f"the container never saw the mount break: {container.state()}"
                print(f"{protocol}: the container saw {container.state()!r} {seen:.1f} s after")
                stats = await c.node.NodeGetVolumeStats(vol.stats(target))
                assert stats.volume_condition.abnormal
                print(f"{protocol}: condition: {stats.volume_condition.message}")

                # kubelet's republish.
                start = time.monotonic()
                await c.node.NodePublishVolume(vol.publish(target), timeout=MOUNT_TIMEOUT + 10)
                took = time.monotonic() - start
                healed = await container.until("ok", HEALED_WITHIN)
                assert healed >= 0, f"the container still reads {container.state()!r}"
                assert container.state() == f"ok hello over {protocol}"
                total = time.monotonic() - back
                print(
                    f"HEAL {protocol}: republish took {took:.2f} s; the container read again "
                    f"{healed:.2f} s after it returned; {total:.2f} s after the server came back"
                )
                assert metric(srv, "csi_smb_nfs_mount_repairs_attempted_total", protocol) == 1
                assert metric(srv, "csi_smb_nfs_mount_repairs_succeeded_total", protocol) == 1
                stats = await c.node.NodeGetVolumeStats(vol.stats(target))
                assert not stats.volume_condition.abnormal, stats.volume_condition.message
                (target / "after.txt").write_text("written after the repair")
                assert (vol.server_dir / "after.txt").read_text() == "written after the repair"

                # Healthy again: the next republish changes nothing.
                before = mount_ids(kubelet)
                await c.node.NodePublishVolume(vol.publish(target))
                assert mount_ids(kubelet) == before
                assert len(mountinfo.at(mountinfo.read(), str(target))) == 2  # dead layer below
            finally:
                container.stop()

            await c.node.NodeUnpublishVolume(vol.unpublish(target), timeout=30)
            await c.node.NodeUnstageVolume(vol.unstage(), timeout=30)
            left = [e for e in mounts_under(kubelet) if e.mount_point != str(kubelet)]
            assert left == [], "layers left behind"
            assert not target.exists()
            await c.controller.DeleteVolume(
                csi_pb2.DeleteVolumeRequest(volume_id=vol.id, secrets=vol.secrets)
            )


# ---------------------------------------------------------------- hung mounts


def mount_helpers() -> list[str]:
    """Running mount / mount.nfs processes (their command lines)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and os.path.basename(cmdline[0]).decode(errors="replace") in (
            "mount",
            "mount.nfs",
            "mount.nfs4",
        ):
            found.append(b" ".join(cmdline).decode(errors="replace"))
    return found


async def test_hung_nfs_mount_is_killed_with_its_process_group(tmp: Path) -> None:
    async with in_process_driver(tmp, mount_timeout=3, probe_timeout=PROBE_TIMEOUT) as (_, c):
        vol = await create_volume(c, tmp, "pvc-hung-mount", "127.0.0.1:/", NFS_DIR)
        with nfs_unreachable():
            with pytest.raises(Exception, match="DEADLINE_EXCEEDED"):
                await c.node.NodeStageVolume(vol.stage(), timeout=60)
            # mount and its mount.nfs helper were killed as one group.
            await wait_until(lambda: not mount_helpers(), timeout=10)
            assert mount_helpers() == []
        # Not poisoned: the next mount to the same server works (ABORTED only
        # while the killed group's reaper has not noticed it is gone).
        for _ in range(20):
            try:
                await c.node.NodeStageVolume(vol.stage(), timeout=60)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:
                    raise
                await asyncio.sleep(0.5)
        (entry,) = mountinfo.at(mountinfo.read(), str(vol.staging))
        assert entry.fstype == "nfs4"
        await c.node.NodeUnstageVolume(vol.unstage())
        assert mounts_under(tmp) == []
        await c.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vol.id))


# ---------------------------------------------------------------- inline volumes


@pytest.mark.parametrize(
    ("protocol", "source", "server_dir"),
    [
        ("smb", f"//127.0.0.1/{SMB_SHARE}", SMB_DIR),
        ("nfs", "127.0.0.1:/", NFS_DIR),
    ],
    ids=["smb", "nfs"],
)
async def test_inline_volume(tmp: Path, protocol: str, source: str, server_dir: Path) -> None:
    secrets = {"username": SMB_USER, "password": SMB_PASSWORD} if protocol == "smb" else {}
    existing = server_dir / "shared" / f"inline-{protocol}"
    existing.mkdir(parents=True)
    existing.chmod(0o777)
    (existing / "given.txt").write_text("already there")
    listing = sorted(p.name for p in server_dir.iterdir())
    target = tmp / "kubelet" / "pods" / "p2" / "volumes" / "inline" / "mount"
    attrs = {"source": source, "subDir": f"shared/inline-{protocol}"}
    async with driver(tmp) as (_, c):
        # Bad attributes: INVALID_ARGUMENT, nothing mounted or created.
        for bad in (
            {**attrs, "size": "1Gi"},
            {**attrs, "subDir": "../escape"},
            {**attrs, "mountOptions": "bind"},
        ):
            with pytest.raises(Exception, match="INVALID_ARGUMENT"):
                await c.node.NodePublishVolume(inline_publish(target, bad, secrets))
        assert not target.exists()
        assert mounts_under(tmp) == []

        mount_options = "vers=3.1.1" if protocol == "smb" else "vers=4.1"
        await c.node.NodePublishVolume(
            inline_publish(target, {**attrs, "mountOptions": mount_options}, secrets)
        )
        (entry,) = mountinfo.at(mountinfo.read(), str(target))
        assert entry.fstype == ("cifs" if protocol == "smb" else "nfs4")
        assert (target / "given.txt").read_text() == "already there"
        (target / "written.txt").write_text(f"inline {protocol}")
        assert (existing / "written.txt").read_text() == f"inline {protocol}"
        stats = await c.node.NodeGetVolumeStats(
            csi_pb2.NodeGetVolumeStatsRequest(volume_id="csi-e2e-inline", volume_path=str(target))
        )
        assert not stats.volume_condition.abnormal
        assert stats.usage[0].total > 0

        # kubelet's republish of a healthy inline volume changes nothing.
        await c.node.NodePublishVolume(
            inline_publish(target, {**attrs, "mountOptions": mount_options}, secrets)
        )
        assert len(mountinfo.at(mountinfo.read(), str(target))) == 1

        unpublish = csi_pb2.NodeUnpublishVolumeRequest(
            volume_id="csi-e2e-inline", target_path=str(target)
        )
        await c.node.NodeUnpublishVolume(unpublish)
        await c.node.NodeUnpublishVolume(unpublish)  # idempotent
        assert not target.exists()
        assert mounts_under(tmp) == []
    # Nothing created or deleted on the server.
    assert sorted(p.name for p in server_dir.iterdir()) == listing
    assert sorted(p.name for p in existing.iterdir()) == ["given.txt", "written.txt"]
    shutil.rmtree(server_dir / "shared")
