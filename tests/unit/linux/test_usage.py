"""LinuxPlatform: volume usage and health, and the bounded statvfs prober."""

from __future__ import annotations

import asyncio
import errno
import threading

import pytest

from driver.errors import NotFound
from node.linux import LinuxPlatform, Prober, ProbesExhausted, ProbeTimeout
from tests.fakes.linux import SHARE, config
from tests.harness import wait_until
from tests.unit.linux.support import Node, nfs_request, publish_request, smb_request, staged

# ---------------------------------------------------------------- usage / health


async def test_usage_of_healthy_mounts(node: Node) -> None:
    staging = await staged(node)
    usage = await node.platform.usage("smb-vol", str(staging))
    assert not usage.health.abnormal
    assert usage.total_bytes == SHARE.blocks * 1024
    assert usage.available_bytes == SHARE.blocks_available * 1024
    assert usage.used_bytes == (SHARE.blocks - SHARE.blocks_free) * 1024
    assert usage.total_inodes is None  # cifs has no inode counts
    nfs_staging = node.root / "kubelet" / "nfs"
    await node.platform.stage(nfs_request(nfs_staging))
    usage = await node.platform.usage("nfs-vol", str(nfs_staging))
    assert (usage.total_inodes, usage.free_inodes, usage.used_inodes) == (126998, 126000, 998)


async def test_usage_of_broken_mount(node: Node) -> None:
    staging = await staged(node)
    node.host.break_mount(str(staging), errno.ESTALE)
    usage = await node.platform.usage("smb-vol", str(staging))
    assert usage.health.abnormal
    assert "ESTALE" in usage.health.message
    assert usage.total_bytes == 0


async def test_usage_of_hung_mount_is_bounded_and_probes_once(node: Node) -> None:
    staging = await staged(node)
    gate = node.host.hang_mount(str(staging))
    calls = node.host.statvfs_calls
    for _ in range(3):
        usage = await asyncio.wait_for(node.platform.usage("smb-vol", str(staging)), 5)
        assert usage.health.abnormal
        assert "did not answer" in usage.health.message
    assert node.host.statvfs_calls == calls + 1  # one stuck thread, not three
    gate.set()

    async def answers_healthy() -> bool:  # once the released probe thread has ended
        return not (await node.platform.usage("smb-vol", str(staging))).health.abnormal

    await wait_until(answers_healthy)


async def test_a_probe_stuck_on_a_replaced_mount_does_not_answer_for_the_new_one(
    node: Node,
) -> None:
    # One SMB session hangs while the server serves new ones: the re-stage
    # detaches the hung mount and mounts again (nosharesock: a new session).
    # The old statvfs thread is still stuck; the new mount must not share it.
    staging = await staged(node)
    gate = node.host.hang_mount(str(staging))
    usage = await node.platform.usage("smb-vol", str(staging))
    assert usage.health.abnormal
    await asyncio.wait_for(node.platform.stage(smb_request(staging)), 5)
    assert len(node.runner.fs_mounts()) == 2
    assert not gate.is_set()  # the old probe still hangs
    usage = await asyncio.wait_for(node.platform.usage("smb-vol", str(staging)), 5)
    assert not usage.health.abnormal, usage.health.message
    await node.platform.publish(publish_request(node, staging))  # not UNAVAILABLE
    await node.platform.stage(smb_request(staging))  # healthy: left alone
    assert len(node.runner.fs_mounts()) == 2


async def test_usage_not_a_mount_point_and_missing(node: Node) -> None:
    # CSI NodeGetVolumeStats: NOT_FOUND when the volume is not at volume_path.
    plain = node.root / "kubelet" / "plain"
    plain.mkdir()
    with pytest.raises(NotFound, match="no volume is mounted there"):
        await node.platform.usage("v", str(plain))
    with pytest.raises(NotFound):
        await node.platform.usage("v", str(node.root / "kubelet" / "missing"))
    calls = node.host.statvfs_calls
    with pytest.raises(NotFound):
        await node.platform.usage("v", str(plain / "below"))
    assert node.host.statvfs_calls == calls  # decided from the mount table alone


# ---------------------------------------------------------------- prober


async def test_prober_bounds_threads() -> None:
    prober = Prober(limit=2)
    gate = threading.Event()
    try:
        with pytest.raises(ProbeTimeout):
            await prober.call("a", gate.wait, 0.01)
        with pytest.raises(ProbeTimeout):
            await prober.call("a", gate.wait, 0.01)
        assert prober.in_flight == 1
        with pytest.raises(ProbeTimeout):
            await prober.call("b", gate.wait, 0.01)
        with pytest.raises(ProbesExhausted, match="still stuck"):
            await prober.call("c", lambda: True, 1)
    finally:
        gate.set()
    await wait_until(lambda: prober.in_flight == 0)
    assert await prober.call("c", lambda: 42, 1) == 42


async def test_prober_passes_errors() -> None:
    def fail() -> None:
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError, match="I/O error"):
        await Prober().call("x", fail, 1)


async def test_exhausted_probes_do_not_tear_down_healthy_mounts(node: Node) -> None:
    staging = await staged(node)
    platform = LinuxPlatform(  # every probe slot held by other dead mounts
        config(),
        runner=node.runner,
        host=node.host,
        prober=Prober(limit=0),
        secrets_dir=str(node.secrets_dir),
        probe_timeout=0.2,
        unmount_timeout=1.0,
    )
    await platform.stage(smb_request(staging))  # no evidence: left alone
    assert len(node.runner.fs_mounts()) == 1
    assert node.runner.commands("umount") == []
    usage = await platform.usage("smb-vol", str(staging))
    assert usage.health.abnormal
    assert "still stuck" in usage.health.message
    await platform.aclose()
