"""The Linux node with real mounts on the host (root), through a real gRPC server.

The host kernel has no cifs/nfs (see tests/e2e for those): a tmpfs mounted at
the staging path plays the staged share, and NodePublishVolume /
NodeUnpublishVolume / NodeGetVolumeStats / NodeUnstageVolume run for real
against the kernel's mount table.  Every mount made under the test's tmp
directory is removed afterwards, also when a test fails.
"""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from driver.config import Config, parse_endpoint
from driver.csi import csi_pb2
from node.linux import LinuxPlatform, mountinfo
from node.service import NodePlugin
from tests.csi_requests import cap
from tests.harness import Client, driver_process, run_ctl, running_driver

pytestmark = [pytest.mark.integration, pytest.mark.root]

AM = csi_pb2.VolumeCapability.AccessMode
CAP = cap()
VOL = "vol-bind"
# A kubelet path with characters mountinfo escapes (space, tab, backslash).
ODD = "pod a\tb\\c"
# Staging paths live where kubelet puts them (the node refuses others: --kubelet-dir).
STAGE = "plugins/kubernetes.io/csi/smb-nfs.csi.io/0123abcd"


def _mounts_under(root: Path) -> list[mountinfo.MountEntry]:
    prefix = str(root) + "/"
    return [e for e in mountinfo.read() if e.mount_point.startswith(prefix)]


def _umount_lazy(path: str) -> None:
    subprocess.run(["umount", "-l", "-c", path], check=False, capture_output=True)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    base = tmp_path / "kubelet"
    base.mkdir()
    try:
        yield base
    finally:
        for entry in reversed(_mounts_under(tmp_path)):
            _umount_lazy(entry.mount_point)
        assert _mounts_under(tmp_path) == []


def tmpfs(path: Path, size: str = "16m") -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "csi-test", str(path)],
        check=True,
    )


def config(sock: Path, kubelet: Path) -> Config:
    return Config(
        endpoint=parse_endpoint(f"unix://{sock}"),
        node_id="n1",
        mount_timeout=10,
        kubelet_dir=str(kubelet),
    )


@asynccontextmanager
async def node(root: Path) -> AsyncIterator[Client]:
    cfg = config(root / "csi.sock", root)
    platform = LinuxPlatform(cfg, secrets_dir=str(root / "secrets"), probe_timeout=2)
    async with running_driver(
        root.parent / "csi.sock", [NodePlugin(cfg, platform)], mode="node"
    ) as (_, client):
        yield client


def publish(staging: Path, target: Path, *, readonly: bool = False) -> Any:
    return csi_pb2.NodePublishVolumeRequest(
        volume_id=VOL,
        staging_target_path=str(staging),
        target_path=str(target),
        volume_capability=CAP,
        readonly=readonly,
    )


def unpublish(target: Path) -> Any:
    return csi_pb2.NodeUnpublishVolumeRequest(volume_id=VOL, target_path=str(target))


def stats(path: Path) -> Any:
    return csi_pb2.NodeGetVolumeStatsRequest(volume_id=VOL, volume_path=str(path))


def at(path: Path) -> list[mountinfo.MountEntry]:
    return mountinfo.at(mountinfo.read(), str(path))


async def test_publish_unpublish_read_write(root: Path) -> None:
    staging = root / STAGE / "globalmount"
    tmpfs(staging)
    target = root / "pods" / "p1" / "mount"
    async with node(root) as c:
        await c.node.NodePublishVolume(publish(staging, target))
        (entry,) = at(target)
        assert entry.same_filesystem_view(at(staging)[0])
        (target / "hello.txt").write_text("through the bind mount")
        assert (staging / "hello.txt").read_text() == "through the bind mount"
        await c.node.NodePublishVolume(publish(staging, target))  # idempotent
        assert len(at(target)) == 1

        await c.node.NodeUnpublishVolume(unpublish(target))
        assert at(target) == []
        assert not target.exists()
        assert (staging / "hello.txt").exists()  # never deleted through the mount
        await c.node.NodeUnpublishVolume(unpublish(target))  # missing: success


async def test_read_only_publish_refuses_writes(root: Path) -> None:
    staging = root / STAGE / "globalmount"
    tmpfs(staging)
    target = root / "pods" / "ro" / "mount"
    async with node(root) as c:
        await c.node.NodePublishVolume(publish(staging, target, readonly=True))
        assert at(target)[0].read_only
        with pytest.raises(OSError) as info:
            (target / "nope").write_text("x")
        assert info.value.errno == errno.EROFS
        (staging / "still-writable").write_text("yes")  # staging stays read-write
        assert (target / "still-writable").read_text() == "yes"

        await c.node.NodePublishVolume(publish(staging, target, readonly=True))
        with pytest.raises(grpc.aio.AioRpcError) as rpc_error:
            await c.node.NodePublishVolume(publish(staging, target, readonly=False))
        assert rpc_error.value.code() == grpc.StatusCode.ALREADY_EXISTS
        await c.node.NodeUnpublishVolume(unpublish(target))
        assert at(target) == []


async def test_paths_with_escaped_characters(root: Path) -> None:
    staging = root / STAGE / "stage here"
    tmpfs(staging)
    target = root / "pods" / ODD / "mount"
    async with node(root) as c:
        await c.node.NodePublishVolume(publish(staging, target))
        (entry,) = at(target)  # mountinfo escapes \040 \011 \134 and we read them back
        assert entry.mount_point == str(target)
        await c.node.NodePublishVolume(publish(staging, target))
        assert len(at(target)) == 1
        usage = await c.node.NodeGetVolumeStats(stats(target))
        assert not usage.volume_condition.abnormal
        await c.node.NodeUnpublishVolume(unpublish(target))
        assert not target.exists()


async def test_volume_stats(root: Path) -> None:
    staging = root / STAGE / "globalmount"
    tmpfs(staging, "16m")
    (staging / "data").write_bytes(b"x" * (1 << 20))
    async with node(root) as c:
        resp = await c.node.NodeGetVolumeStats(stats(staging))
        assert not resp.volume_condition.abnormal
        units = {u.unit: u for u in resp.usage}
        size = units[csi_pb2.VolumeUsage.BYTES]
        assert size.total == 16 << 20
        assert size.used >= 1 << 20
        assert size.available <= size.total - (1 << 20)
        assert units[csi_pb2.VolumeUsage.INODES].used >= 1

        plain = root / "pods" / "plain"
        plain.mkdir(parents=True)
        # CSI: NOT_FOUND wherever the volume is not; INVALID_ARGUMENT only
        # for a missing field.
        for path in (plain, root / "pods" / "missing", root / "elsewhere", Path("relative")):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c.node.NodeGetVolumeStats(stats(path))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND, path
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_id=VOL))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_single_writer_modes_allow_one_target(root: Path) -> None:
    # CSI NodePublishVolume: a second target path for a volume in a
    # single-writer mode is FAILED_PRECONDITION; the mount table tells.
    staging = root / STAGE / "globalmount"
    tmpfs(staging)
    first, second = root / "pods" / "p1" / "mount", root / "pods" / "p2" / "mount"
    one = csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(),
        access_mode=AM(mode=AM.SINGLE_NODE_SINGLE_WRITER),
    )

    def req(target: Path) -> Any:
        r = publish(staging, target)
        r.volume_capability.CopyFrom(one)
        return r

    async with node(root) as c:
        await c.node.NodePublishVolume(req(first))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.node.NodePublishVolume(req(second))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert str(first) in (info.value.details() or "")
        assert at(second) == []
        await c.node.NodePublishVolume(req(first))  # the same target: idempotent
        await c.node.NodeUnpublishVolume(unpublish(first))
        await c.node.NodePublishVolume(req(second))
        assert at(second)
        await c.node.NodePublishVolume(publish(staging, first))  # MULTI_NODE: many targets
        await c.node.NodeUnpublishVolume(unpublish(first))
        await c.node.NodeUnpublishVolume(unpublish(second))


async def test_publish_needs_a_staged_volume(root: Path) -> None:
    staging = root / STAGE / "globalmount"
    staging.mkdir(parents=True)
    target = root / "pods" / "p" / "mount"
    async with node(root) as c:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.node.NodePublishVolume(publish(staging, target))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert not target.exists()


async def test_restarted_driver_answers_repeats(root: Path) -> None:
    staging = root / STAGE / "globalmount"
    tmpfs(staging)
    targets = [root / "pods" / name / "mount" for name in ("a", "b")]
    async with node(root) as c:
        await c.node.NodePublishVolume(publish(staging, targets[0]))
        await c.node.NodePublishVolume(publish(staging, targets[1], readonly=True))
    # A new process: nothing in memory, the same kernel mount table.
    async with node(root) as c:
        await c.node.NodePublishVolume(publish(staging, targets[0]))
        await c.node.NodePublishVolume(publish(staging, targets[1], readonly=True))
        assert [len(at(t)) for t in targets] == [1, 1]
        for t in targets:
            await c.node.NodeUnpublishVolume(unpublish(t))
        assert [at(t) for t in targets] == [[], []]


async def test_stage_over_foreign_mount_and_unstage(root: Path) -> None:
    staging = root / STAGE / "globalmount"
    tmpfs(staging)
    stage = csi_pb2.NodeStageVolumeRequest(
        volume_id=VOL,
        staging_target_path=str(staging),
        volume_capability=CAP,
        volume_context={"protocol": "nfs", "source": "127.0.0.1:/export", "subDir": "v"},
    )
    unstage = csi_pb2.NodeUnstageVolumeRequest(volume_id=VOL, staging_target_path=str(staging))
    async with node(root) as c:
        # The real mount table shows a tmpfs there, not this volume's share.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.node.NodeStageVolume(stage)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert len(at(staging)) == 1

        # Busy (an open file): plain umount fails, the lazy one detaches it.
        with (staging / "open").open("w") as busy:
            await c.node.NodeUnstageVolume(unstage)
            busy.write("still writable after the detach")
        assert at(staging) == []
        assert not staging.exists()
        await c.node.NodeUnstageVolume(unstage)


async def test_unstage_removes_stacked_mounts_but_never_data(root: Path) -> None:
    staging = root / STAGE / "globalmount"
    staging.mkdir(parents=True)
    (staging / "underneath").write_text("data below the mounts")
    tmpfs(staging)
    tmpfs(staging)
    async with node(root) as c:
        await c.node.NodeUnstageVolume(
            csi_pb2.NodeUnstageVolumeRequest(volume_id=VOL, staging_target_path=str(staging))
        )
    assert at(staging) == []
    assert (staging / "underneath").read_text() == "data below the mounts"


def test_ctl_node_commands(root: Path) -> None:
    staging = root / STAGE / "globalmount"
    tmpfs(staging)
    target = root / "pods" / "ctl" / "mount"
    with driver_process(root, "--mode", "node", "--kubelet-dir", str(root)) as drv:
        res = run_ctl(
            drv.endpoint, "publish", VOL, "--staging-path", str(staging),
            "--target-path", str(target), "--readonly",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert at(target)[0].read_only
        res = run_ctl(drv.endpoint, "stats", VOL, "--path", str(target))
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["volume_condition"].get("abnormal", False) is False
        assert out["usage"][0]["total"] == str(16 << 20)
        res = run_ctl(drv.endpoint, "unpublish", VOL, "--target-path", str(target))
        assert res.returncode == 0, res.stderr
        assert at(target) == []
        res = run_ctl(
            drv.endpoint, "stage", VOL, "--staging-path", "relative",
            "--context", "source=//127.0.0.1/share",
        )  # fmt: skip
        assert res.returncode == 1
        assert res.stderr.startswith("INVALID_ARGUMENT")
        res = run_ctl(drv.endpoint, "unstage", VOL, "--staging-path", str(staging))
        assert res.returncode == 0, res.stderr
        assert at(staging) == []
        # A path kubelet would never give: refused before anything is touched.
        elsewhere = root.parent / "elsewhere"
        elsewhere.mkdir()
        res = run_ctl(
            drv.endpoint, "publish", VOL, "--staging-path", str(staging),
            "--target-path", str(elsewhere),
        )  # fmt: skip
        assert res.returncode == 1
        assert res.stderr.startswith("INVALID_ARGUMENT")
        assert "outside kubelet's directories" in res.stderr
        assert at(elsewhere) == []
        assert elsewhere.is_dir()
