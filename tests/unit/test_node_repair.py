"""Self-healing republish: the repair decision table over the stateful fakes.

kubelet republishes (``requiresRepublish``) by calling NodePublishVolume again
for a published target.  Each case breaks the fake kernel's filesystem the
way a server does (ESTALE, a hung mount, lookups failing while statfs
answers), then republishes and checks what the platform ran and what the
mount table shows afterwards.  The real sequence runs in the UML guest
(tests/e2e/inside/heal_inside.py).
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest

from driver import rpc
from driver.csi import csi_pb2
from driver.errors import FailedPrecondition, Internal, Unavailable
from node.linux import mountinfo
from node.linux.repair import Plan, plan
from node.runner import CommandResult
from tests.fakes.linux import PASSWORD, World, all_text, options_of
from tests.unit.test_node_service import (
    CTX,
    NFS_CONTEXT,
    SECRETS,
    SMB_CONTEXT,
    publish_req,
    stage_req,
)

SMB_SERVER = ("srv", 445)
NFS_SERVER = ("srv", 2049)


# ---------------------------------------------------------------- the table


@pytest.mark.parametrize(
    ("target_ok", "staging_ok", "server_ok", "credentials", "expected"),
    [
        (True, True, None, True, Plan.KEEP),
        (False, True, None, True, Plan.BIND),
        (True, True, None, False, Plan.KEEP),  # healthy: credentials not needed
        (False, False, True, True, Plan.REMOUNT),
        (True, False, True, True, Plan.REMOUNT),  # the staging alone (no bind)
        (False, False, False, True, Plan.WAIT),
        (False, False, None, False, Plan.NO_CREDENTIALS),
        (False, True, None, False, Plan.BIND),  # a bind needs no credentials
    ],
)
def test_plan(
    target_ok: bool, staging_ok: bool, server_ok: bool | None, credentials: bool, expected: Plan
) -> None:
    found = plan(
        target_ok=target_ok, staging_ok=staging_ok, server_ok=server_ok, credentials=credentials
    )
    assert found is expected


# ---------------------------------------------------------------- helpers


async def published(
    world: World, context: dict[str, str], *targets: str, readonly: bool = False
) -> None:
    secrets = {} if context is NFS_CONTEXT else SECRETS
    await world.service.NodeStageVolume(
        stage_req(world, volume_context=context, secrets=secrets), CTX
    )
    for name in targets or ("pod",):
        await world.service.NodePublishVolume(
            publish_req(
                world, target_path=world.target(name), volume_context=context, readonly=readonly
            ),
            CTX,
        )


async def republish(world: World, context: dict[str, str], name: str = "pod") -> list[Any]:
    """NodePublishVolume as kubelet's periodic republish; the repairs it counted."""
    token = rpc.begin("NodePublishVolume")
    try:
        await world.service.NodePublishVolume(
            publish_req(world, target_path=world.target(name), volume_context=context), CTX
        )
    finally:
        info = rpc.current()
        repairs = list(info.repairs or []) if info is not None else []
        rpc.end(token)
    return repairs


async def republish_error(world: World, context: dict[str, str]) -> tuple[Exception, list[Any]]:
    token = rpc.begin("NodePublishVolume")
    try:
        with pytest.raises(Exception) as info:
            await world.service.NodePublishVolume(publish_req(world, volume_context=context), CTX)
    finally:
        current = rpc.current()
        repairs = list(current.repairs or []) if current is not None else []
        rpc.end(token)
    return info.value, repairs


def ids(world: World, path: str) -> list[int]:
    return [e.mount_id for e in world.host.at(path)]


async def stats(world: World, path: str) -> Any:
    return await world.service.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id="vol-1", volume_path=path), CTX
    )


async def tear_down(world: World, *targets: str) -> None:
    for name in targets or ("pod",):
        await world.service.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id="vol-1", target_path=world.target(name)),
            CTX,
        )
        assert world.host.at(world.target(name)) == []
        assert not Path(world.target(name)).exists()
    await world.service.NodeUnstageVolume(
        csi_pb2.NodeUnstageVolumeRequest(volume_id="vol-1", staging_target_path=world.staging()),
        CTX,
    )
    assert world.host.entries == []


# ---------------------------------------------------------------- cases


@pytest.mark.parametrize("context", [SMB_CONTEXT, NFS_CONTEXT], ids=["smb", "nfs"])
async def test_healthy_republish_changes_nothing(world: World, context: dict[str, str]) -> None:
    await published(world, context)
    before = list(world.host.entries)
    calls = len(world.runner.calls)
    looks = world.host.look_calls
    assert await republish(world, context) == []
    assert world.host.entries == before  # the same mounts, the same IDs
    assert len(world.runner.calls) == calls
    assert world.host.look_calls == looks + 2  # target and staging were probed
    assert world.host.connects == []


@pytest.mark.parametrize(
    ("context", "fstype"), [(SMB_CONTEXT, "cifs"), (NFS_CONTEXT, "nfs")], ids=["smb", "nfs"]
)
async def test_stale_mount_is_repaired_in_place(
    world: World, context: dict[str, str], fstype: str
) -> None:
    await published(world, context)
    staging, target = world.staging(), world.target()
    (dead,) = world.host.at(target)
    world.host.break_mount(staging, errno.ESTALE)
    assert (await stats(world, target)).volume_condition.abnormal
    calls = len(world.runner.calls)

    repairs = await republish(world, context)

    protocol = "smb" if fstype == "cifs" else "nfs"
    assert repairs == [(protocol, True)]
    new = world.runner.calls[calls:]
    assert [c.argv[:3] for c in new] == [
        ("umount", "-l", "-c"),
        ("mount", "-t", fstype),
        ("mount", "--bind", staging),
    ]
    assert new[0].argv[-1] == staging  # the dead staging mount, lazily
    assert new[2].argv[-1] == target  # bound on top of the target, not instead of it
    if protocol == "nfs":
        assert "nosharecache" in options_of(new[1].argv)  # a new superblock
    else:
        assert new[1].credentials is not None  # the node-stage secret, from memory
        assert f"password={PASSWORD}" in new[1].credentials[2]
    assert PASSWORD not in all_text(world.runner)
    layers = world.host.at(target)
    assert layers[0] == dead  # the container's copy still sits on it
    assert len(layers) == 2
    assert layers[1].same_filesystem_view(mountinfo.top(world.host.entries, staging))  # type: ignore[arg-type]
    assert not (await stats(world, target)).volume_condition.abnormal

    before = list(world.host.entries)
    assert await republish(world, context) == []  # healthy now: nothing more
    assert world.host.entries == before
    await tear_down(world)  # peels the dead layer too


async def test_server_still_down_changes_nothing(world: World) -> None:
    await published(world, SMB_CONTEXT)
    world.host.break_mount(world.staging(), errno.EHOSTDOWN)
    world.host.down.add(SMB_SERVER)
    before = list(world.host.entries)
    calls = len(world.runner.calls)

    error, repairs = await republish_error(world, SMB_CONTEXT)

    assert isinstance(error, Unavailable)
    assert "does not answer yet" in error.message
    assert repairs == []
    assert world.host.connects == [SMB_SERVER]
    assert world.host.entries == before
    assert len(world.runner.calls) == calls
    condition = (await stats(world, world.target())).volume_condition
    assert condition.abnormal
    assert "does not answer yet" in condition.message

    world.host.down.clear()  # the server is back
    assert await republish(world, SMB_CONTEXT) == [("smb", True)]
    assert not (await stats(world, world.target())).volume_condition.abnormal
    await tear_down(world)


async def test_smb_credentials_missing_after_restart(world: World) -> None:
    await published(world, SMB_CONTEXT)
    world.restart()  # the driver restarted: the kernel keeps the mounts, memory is empty
    assert await republish(world, SMB_CONTEXT) == []  # healthy: no credentials needed
    world.host.break_mount(world.staging(), errno.ESTALE)
    before = list(world.host.entries)
    calls = len(world.runner.calls)

    error, repairs = await republish_error(world, SMB_CONTEXT)

    assert isinstance(error, FailedPrecondition)
    assert "not in the driver's memory" in error.message
    assert repairs == []
    assert world.host.entries == before
    assert len(world.runner.calls) == calls
    condition = (await stats(world, world.target())).volume_condition
    assert condition.abnormal
    assert "restart the pod" in condition.message

    # NodeStage again (a pod started on this node) brings the secret back.
    await world.service.NodeStageVolume(stage_req(world), CTX)
    assert await republish(world, SMB_CONTEXT) == [("smb", True)]
    await tear_down(world)


async def test_nfs_needs_no_credentials_after_restart(world: World) -> None:
    await published(world, NFS_CONTEXT)
    world.restart()
    world.host.break_mount(world.staging(), errno.ESTALE)
    assert await republish(world, NFS_CONTEXT) == [("nfs", True)]
    await tear_down(world)


async def test_repair_failing_half_way_is_finished_by_the_next_republish(world: World) -> None:
    await published(world, SMB_CONTEXT)
    world.host.break_mount(world.staging(), errno.ESTALE)
    world.runner.mount_results.append(
        CommandResult(("mount",), 32, "", "mount error(5): Input/output error")
    )

    error, repairs = await republish_error(world, SMB_CONTEXT)

    assert isinstance(error, Internal)
    assert repairs == [("smb", False)]
    assert world.host.at(world.staging()) == []  # detached; the new mount failed
    assert len(world.host.at(world.target())) == 1  # the target was not touched
    condition = (await stats(world, world.target())).volume_condition
    assert condition.abnormal
    assert "repair failed" in condition.message

    calls = len(world.runner.calls)
    assert await republish(world, SMB_CONTEXT) == [("smb", True)]
    assert [c.argv[:2] for c in world.runner.calls[calls:]] == [
        ("mount", "-t"),  # nothing left to detach
        ("mount", "--bind"),
    ]
    assert not (await stats(world, world.target())).volume_condition.abnormal
    await tear_down(world)


async def test_a_staging_repaired_for_one_pod_is_bound_for_the_next(world: World) -> None:
    await published(world, NFS_CONTEXT, "a", "b")
    world.host.break_mount(world.staging(), errno.ESTALE)
    assert await republish(world, NFS_CONTEXT, "a") == [("nfs", True)]
    calls = len(world.runner.calls)
    connects = len(world.host.connects)

    assert await republish(world, NFS_CONTEXT, "b") == [("nfs", True)]

    assert [c.argv[:2] for c in world.runner.calls[calls:]] == [("mount", "--bind")]
    assert len(world.host.connects) == connects  # the staging answers: no server check
    assert len(world.host.at(world.target("b"))) == 2
    await tear_down(world, "a", "b")


async def test_lookups_failing_while_statfs_answers_is_broken(world: World) -> None:
    # A cifs share restored from a copy: statfs still answers, the root gives ESTALE.
    await published(world, SMB_CONTEXT)
    world.host.state(world.staging()).lookup_error = errno.ESTALE
    condition = (await stats(world, world.target())).volume_condition
    assert condition.abnormal
    assert "ESTALE" in condition.message
    assert await republish(world, SMB_CONTEXT) == [("smb", True)]
    await tear_down(world)


async def test_hung_mount_is_repaired_within_the_bound(world: World) -> None:
    await published(world, NFS_CONTEXT)
    world.host.hang_mount(world.staging())  # no answer at all
    # (the guard only keeps a broken test from hanging; the bound is the probe's)
    repairs = await asyncio.wait_for(republish(world, NFS_CONTEXT), 10)
    assert repairs == [("nfs", True)]
    assert not (await stats(world, world.target())).volume_condition.abnormal
    await tear_down(world)


async def test_read_only_target_is_repaired_read_only(world: World) -> None:
    await published(world, NFS_CONTEXT, readonly=True)
    world.host.break_mount(world.staging(), errno.ESTALE)
    token = rpc.begin("NodePublishVolume")
    try:
        await world.service.NodePublishVolume(
            publish_req(world, volume_context=NFS_CONTEXT, readonly=True), CTX
        )
    finally:
        rpc.end(token)
    top = mountinfo.top(world.host.entries, world.target())
    assert top is not None
    assert top.read_only
    await tear_down(world)


async def test_another_mount_at_the_target_is_not_repaired(world: World) -> None:
    await published(world, NFS_CONTEXT)
    world.host.add(world.target(), fstype="nfs4", source="other:/export/x")
    error, repairs = await republish_error(world, NFS_CONTEXT)
    assert isinstance(error, FailedPrecondition)
    assert repairs == []
