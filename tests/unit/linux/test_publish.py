"""LinuxPlatform: bind-mount publish, unpublish and unstage (busy, hung and dead mounts)."""

from __future__ import annotations

import asyncio
import errno
from dataclasses import replace
from pathlib import Path

import pytest

from driver.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, Unavailable
from node.runner import CommandResult
from tests.fakes.linux import LOCAL
from tests.unit.linux.support import Node, publish_request, staged

# ---------------------------------------------------------------- publish


async def test_publish_bind_mounts_and_is_idempotent(node: Node) -> None:
    staging = await staged(node)
    request = publish_request(node, staging)
    await node.platform.publish(request)
    await node.platform.publish(request)
    await node.new_platform().publish(request)
    binds = [a for a in node.runner.commands("mount") if a[1] == "--bind"]
    assert binds == [("mount", "--bind", str(staging), request.target_path)]
    (entry,) = node.host.at(request.target_path)
    assert entry.same_filesystem_view(node.host.at(str(staging))[0])
    assert not entry.read_only


async def test_publish_read_only(node: Node) -> None:
    staging = await staged(node)
    request = publish_request(node, staging, read_only=True)
    await node.platform.publish(request)
    assert ("mount", "-o", "remount,bind,ro", request.target_path) in node.runner.commands("mount")
    assert node.host.at(request.target_path)[0].read_only
    await node.platform.publish(request)  # idempotent
    with pytest.raises(AlreadyExists, match="read-only"):
        await node.platform.publish(replace(request, read_only=False))


async def test_publish_read_write_over_read_write_mismatch(node: Node) -> None:
    staging = await staged(node)
    request = publish_request(node, staging)
    await node.platform.publish(request)
    with pytest.raises(AlreadyExists, match="read-write"):
        await node.platform.publish(replace(request, read_only=True))


async def test_failed_ro_remount_leaves_no_writable_mount(node: Node) -> None:
    staging = await staged(node)
    request = publish_request(node, staging, read_only=True)
    node.runner.fail_remount_ro = True
    with pytest.raises(Internal, match="read-only remount"):
        await node.platform.publish(request)
    assert node.host.at(request.target_path) == []


async def test_publish_needs_staged_volume(node: Node) -> None:
    staging = node.root / "kubelet" / "staging"
    staging.mkdir()
    with pytest.raises(FailedPrecondition, match="not mounted"):
        await node.platform.publish(publish_request(node, staging))
    assert node.runner.calls == []


async def test_publish_target_with_other_mount(node: Node) -> None:
    staging = await staged(node)
    request = publish_request(node, staging)
    Path(request.target_path).mkdir(parents=True)
    node.host.add(request.target_path, fstype="tmpfs", source="tmpfs", stats=LOCAL)
    with pytest.raises(FailedPrecondition, match="another mount"):
        await node.platform.publish(request)


async def test_publish_target_is_a_file(node: Node) -> None:
    staging = await staged(node)
    request = publish_request(node, staging)
    Path(request.target_path).parent.mkdir(parents=True)
    Path(request.target_path).write_text("x")
    with pytest.raises(InvalidArgument, match="not a directory"):
        await node.platform.publish(request)


async def test_publish_from_dead_staging_is_unavailable(node: Node) -> None:
    staging = await staged(node)
    node.host.break_mount(str(staging), errno.EHOSTDOWN)
    with pytest.raises(Unavailable, match="EHOSTDOWN"):
        await node.platform.publish(publish_request(node, staging))


# ---------------------------------------------------------------- unpublish / unstage


async def test_unpublish_and_unstage(node: Node) -> None:
    staging = await staged(node)
    request = publish_request(node, staging)
    await node.platform.publish(request)
    await node.platform.unpublish("smb-vol", request.target_path)
    assert not Path(request.target_path).exists()
    assert node.runner.commands("umount") == [("umount", "-c", request.target_path)]
    await node.platform.unpublish("smb-vol", request.target_path)  # missing: success
    await node.platform.unstage("smb-vol", str(staging))
    assert not staging.exists()
    assert node.host.entries == []
    await node.new_platform().unstage("smb-vol", str(staging))


async def test_unstage_not_mounted_removes_empty_dir_only(node: Node) -> None:
    empty = node.root / "kubelet" / "empty"
    empty.mkdir()
    await node.platform.unstage("v", str(empty))
    assert not empty.exists()
    full = node.root / "kubelet" / "full"
    full.mkdir()
    (full / "data").write_text("keep me")
    await node.platform.unstage("v", str(full))
    assert (full / "data").read_text() == "keep me"
    assert node.runner.calls == []


async def test_unstage_stacked_mounts(node: Node) -> None:
    staging = await staged(node)
    node.host.add(str(staging), fstype="cifs", source="//srv/share/base/pvc-1")
    await node.platform.unstage("smb-vol", str(staging))
    assert node.host.at(str(staging)) == []
    assert len(node.runner.commands("umount")) == 2


async def test_busy_unmount_falls_back_to_lazy(node: Node) -> None:
    staging = await staged(node)
    node.runner.busy.add(str(staging))
    await node.platform.unstage("smb-vol", str(staging))
    assert node.runner.commands("umount") == [
        ("umount", "-c", str(staging)),
        ("umount", "-l", "-c", "-i", str(staging)),
    ]
    assert not staging.exists()


async def test_timed_out_unmount_falls_back_to_lazy(node: Node) -> None:
    staging = await staged(node)
    node.runner.umount_timeouts = 1
    await node.platform.unstage("smb-vol", str(staging))
    assert [a[1] for a in node.runner.commands("umount")] == ["-c", "-l"]
    assert node.host.entries == []


async def test_dead_server_unstage_never_hangs(node: Node) -> None:
    staging = await staged(node)
    node.host.hang_mount(str(staging))
    await asyncio.wait_for(node.platform.unstage("smb-vol", str(staging)), 5)
    # Straight to the lazy unmount: a plain umount would block on the server.
    assert node.runner.commands("umount") == [("umount", "-l", "-c", "-i", str(staging))]
    assert not staging.exists()


async def test_lazy_unmount_failure_is_reported(node: Node) -> None:
    staging = await staged(node)
    node.host.break_mount(str(staging))

    async def refuse(argv: object, **_: object) -> CommandResult:
        return CommandResult(("umount",), 32, "", "umount: permission denied")

    node.runner.run = refuse  # type: ignore[method-assign]
    with pytest.raises(Internal, match="umount -l failed"):
        await node.platform.unstage("smb-vol", str(staging))
    assert staging.exists()
