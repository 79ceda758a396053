"""The Node service driving LinuxPlatform over the stateful fakes.

Requests are what kubelet sends; the volume context is what the controller
returned (``protocol``, ``source``, ``subDir``).  Domain errors are asserted
directly (the interceptor maps them to gRPC codes in one place).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from driver.csi import csi_pb2
from driver.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from tests.csi_requests import cap
from tests.fakes.linux import PASSWORD, World, all_text

AM = csi_pb2.VolumeCapability.AccessMode
CTX: Any = None
SMB_CONTEXT = {"protocol": "smb", "source": "//srv/share/base", "subDir": "pvc-1"}
NFS_CONTEXT = {"protocol": "nfs", "source": "srv:/export", "subDir": "pvc-2"}
SECRETS = {"username": "CORP\\alice", "password": PASSWORD}


def stage_req(world: World, **kw: Any) -> csi_pb2.NodeStageVolumeRequest:
    fields: dict[str, Any] = {
        "volume_id": "vol-1",
        "staging_target_path": world.staging(),
        "volume_capability": cap(),
        "volume_context": SMB_CONTEXT,
        "secrets": SECRETS,
    }
    fields.update(kw)
    return csi_pb2.NodeStageVolumeRequest(**fields)


def publish_req(world: World, **kw: Any) -> csi_pb2.NodePublishVolumeRequest:
    fields: dict[str, Any] = {
        "volume_id": "vol-1",
        "staging_target_path": world.staging(),
        "target_path": world.target(),
        "volume_capability": cap(),
        "volume_context": SMB_CONTEXT,
    }
    fields.update(kw)
    return csi_pb2.NodePublishVolumeRequest(**fields)


async def test_full_smb_lifecycle(world: World) -> None:
    svc = world.service
    await svc.NodeStageVolume(stage_req(world), CTX)
    await svc.NodePublishVolume(publish_req(world), CTX)
    await svc.NodePublishVolume(
        publish_req(world, target_path=world.target("ro"), readonly=True), CTX
    )

    (mount,) = world.runner.fs_mounts()
    assert mount[3] == "//srv/share/base/pvc-1"
    assert PASSWORD not in all_text(world.runner)
    (with_creds,) = [c for c in world.runner.calls if c.credentials]
    assert with_creds.credentials is not None
    assert "domain=CORP\n" in with_creds.credentials[2]
    assert with_creds.credentials[0] == 0o600
    assert list(world.secrets_dir.iterdir()) == []
    assert world.host.at(world.target("ro"))[0].read_only

    stats = await svc.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id="vol-1", volume_path=world.target()), CTX
    )
    assert not stats.volume_condition.abnormal
    assert [u.unit for u in stats.usage] == [csi_pb2.VolumeUsage.BYTES]  # cifs: no inodes

    for target in (world.target(), world.target("ro")):
        await svc.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id="vol-1", target_path=target), CTX
        )
    await svc.NodeUnstageVolume(
        csi_pb2.NodeUnstageVolumeRequest(volume_id="vol-1", staging_target_path=world.staging()),
        CTX,
    )
    assert world.host.entries == []
    assert not Path(world.staging()).exists()
    assert not Path(world.target()).exists()


async def test_nfs_stage_with_inodes_and_mount_group(world: World) -> None:
    svc = world.service
    request = stage_req(
        world, volume_context=NFS_CONTEXT, secrets={}, volume_capability=cap(group="")
    )
    await svc.NodeStageVolume(request, CTX)
    (mount,) = world.runner.fs_mounts()
    assert mount[2:4] == ("nfs", "srv:/export/pvc-2")
    stats = await svc.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id="vol-1", volume_path=world.staging()), CTX
    )
    units = {u.unit: u for u in stats.usage}
    assert units[csi_pb2.VolumeUsage.INODES].total == 126998


async def test_static_volume_id_without_context(world: World) -> None:
    from driver.source import parse_source
    from driver.volume_id import VolumeId

    vid = VolumeId(parse_source("nfs://srv:2050/export"), "static/dir", "retain", ()).format()
    await world.service.NodeStageVolume(
        stage_req(world, volume_id=vid, volume_context={}, secrets={}), CTX
    )
    (mount,) = world.runner.fs_mounts()
    assert mount[3] == "srv:/export/static/dir"
    assert mount[-1] == "port=2050"


async def test_restart_keeps_serving_idempotent_repeats(world: World) -> None:
    await world.service.NodeStageVolume(stage_req(world), CTX)
    await world.service.NodePublishVolume(publish_req(world), CTX)
    svc = world.restart()
    await svc.NodeStageVolume(stage_req(world), CTX)
    await svc.NodePublishVolume(publish_req(world), CTX)
    assert len(world.runner.fs_mounts()) == 1
    assert len([a for a in world.runner.commands("mount") if a[1] == "--bind"]) == 1


async def test_hung_mount_holds_the_lock_until_the_process_exits(world: World) -> None:
    svc = world.service
    gate = asyncio.Event()
    world.runner.hang = gate
    with pytest.raises(DeadlineExceeded, match="not exited yet"):
        await svc.NodeStageVolume(stage_req(world), CTX)
    # kubelet retries: the killed mount is still stuck in the kernel.
    for _ in range(3):
        with pytest.raises(Aborted, match="already in progress"):
            await svc.NodeStageVolume(stage_req(world), CTX)
    with pytest.raises(Aborted):
        await svc.NodeUnstageVolume(
            csi_pb2.NodeUnstageVolumeRequest(
                volume_id="vol-1", staging_target_path=world.staging()
            ),
            CTX,
        )
    assert len(world.runner.fs_mounts()) == 1  # no pile-up
    # Other volumes are not blocked.
    await svc.NodeStageVolume(
        stage_req(world, volume_id="vol-2", staging_target_path=world.staging("other")), CTX
    )
    gate.set()  # the stuck process finally exits
    await svc._locks.wait_idle()
    await svc.NodeStageVolume(stage_req(world), CTX)
    assert world.host.at(world.staging())


async def test_failed_mount_releases_the_lock(world: World) -> None:
    from node.runner import CommandResult

    world.runner.mount_results.append(CommandResult((), 32, "", "mount error(112): Host is down"))
    with pytest.raises(Exception, match="Host is down"):
        await world.service.NodeStageVolume(stage_req(world), CTX)
    await world.service.NodeStageVolume(stage_req(world), CTX)


def _bad_stage_requests(world: World) -> list[tuple[str, csi_pb2.NodeStageVolumeRequest]]:
    file_path = Path(world.staging("a-file"))
    file_path.parent.mkdir(parents=True)
    file_path.write_text("x")
    return [
        ("volume_id", stage_req(world, volume_id="")),
        ("staging_target_path", stage_req(world, staging_target_path="")),
        ("absolute", stage_req(world, staging_target_path="relative/path")),
        ("'..'", stage_req(world, staging_target_path=world.staging() + "/../../etc")),
        ("volume_capability", stage_req(world, volume_capability=None)),
        ("access_mode", stage_req(world, volume_capability=cap(mode=AM.UNKNOWN))),
        ("protocol", stage_req(world, volume_context={**SMB_CONTEXT, "protocol": "ftp"})),
        ("contradicts", stage_req(world, volume_context={**SMB_CONTEXT, "protocol": "nfs"})),
        ("subDir", stage_req(world, volume_context={**SMB_CONTEXT, "subDir": "../x"})),
        ("not this driver", stage_req(world, volume_context={})),
        ("password", stage_req(world, secrets={"username": "alice"})),
        ("not a directory", stage_req(world, staging_target_path=str(file_path))),
        (
            "not allowed",
            stage_req(world, volume_capability=cap("password=x", mode=AM.SINGLE_NODE_WRITER)),
        ),
        ("numeric group", stage_req(world, volume_capability=cap(group="wheel"))),
    ]


async def test_block_access_exceeds_the_capabilities(world: World) -> None:
    # CSI NodeStageVolume / NodePublishVolume "Exceeds capabilities": a
    # directory volume cannot be a block device -> FAILED_PRECONDITION.
    block = csi_pb2.VolumeCapability(
        block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=AM(mode=AM.SINGLE_NODE_WRITER)
    )
    with pytest.raises(FailedPrecondition, match="block"):
        await world.service.NodeStageVolume(stage_req(world, volume_capability=block), CTX)
    with pytest.raises(FailedPrecondition, match="block"):
        await world.service.NodePublishVolume(publish_req(world, volume_capability=block), CTX)
    assert world.runner.calls == []


async def test_bad_stage_requests_are_invalid_and_mount_nothing(world: World) -> None:
    for match, request in _bad_stage_requests(world):
        with pytest.raises(InvalidArgument, match=match):
            await world.service.NodeStageVolume(request, CTX)
    assert world.runner.calls == []
    assert world.host.entries == []
    assert not world.secrets_dir.exists() or list(world.secrets_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"target_path": ""}, "target_path"),
        ({"target_path": "pods/x"}, "absolute"),
        ({"volume_capability": None}, "volume_capability"),
        ({"volume_context": {"csi.storage.k8s.io/ephemeral": "true"}}, "'source' is required"),
    ],
)
async def test_bad_publish_requests(world: World, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        await world.service.NodePublishVolume(publish_req(world, **kw), CTX)
    assert world.runner.calls == []


async def test_publish_without_staging_path_is_failed_precondition(world: World) -> None:
    # CSI NodePublishVolume: "Staging target path not set" is FAILED_PRECONDITION.
    with pytest.raises(FailedPrecondition, match="NodeStageVolume first"):
        await world.service.NodePublishVolume(publish_req(world, staging_target_path=""), CTX)
    assert world.runner.calls == []


@pytest.mark.parametrize(
    "mode", [AM.SINGLE_NODE_SINGLE_WRITER, AM.SINGLE_NODE_WRITER, AM.SINGLE_NODE_READER_ONLY]
)
async def test_one_target_modes_refuse_a_second_target(world: World, mode: int) -> None:
    # CSI NodePublishVolume, second table: T1!=T2 is FAILED_PRECONDITION for
    # the non-MULTI_NODE modes other than SINGLE_NODE_MULTI_WRITER.
    svc = world.service
    await svc.NodeStageVolume(stage_req(world, volume_capability=cap(mode=mode)), CTX)
    first = publish_req(world, volume_capability=cap(mode=mode))
    await svc.NodePublishVolume(first, CTX)
    second = publish_req(world, target_path=world.target("pod-2"), volume_capability=cap(mode=mode))
    with pytest.raises(FailedPrecondition, match=rf"published at {world.target()}"):
        await svc.NodePublishVolume(second, CTX)
    assert not world.host.at(world.target("pod-2"))
    await svc.NodePublishVolume(first, CTX)  # T1=T2, P1=P2: idempotent
    if mode != AM.SINGLE_NODE_READER_ONLY:  # (read-only already)
        with pytest.raises(AlreadyExists):  # T1=T2, P1!=P2
            await svc.NodePublishVolume(
                publish_req(world, volume_capability=cap(mode=mode), readonly=True), CTX
            )
    # A driver restart keeps the answer: it comes from the mount table.
    with pytest.raises(FailedPrecondition):
        await world.restart().NodePublishVolume(second, CTX)
    await world.service.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id="vol-1", target_path=world.target()), CTX
    )
    await world.service.NodePublishVolume(second, CTX)
    assert world.host.at(world.target("pod-2"))


@pytest.mark.parametrize(
    "mode",
    [
        AM.SINGLE_NODE_MULTI_WRITER,
        AM.MULTI_NODE_READER_ONLY,
        AM.MULTI_NODE_SINGLE_WRITER,
        AM.MULTI_NODE_MULTI_WRITER,
    ],
)
async def test_many_target_modes_publish_twice(world: World, mode: int) -> None:
    svc = world.service
    await svc.NodeStageVolume(stage_req(world, volume_capability=cap(mode=mode)), CTX)
    for pod in ("pod-1", "pod-2"):
        await svc.NodePublishVolume(
            publish_req(world, target_path=world.target(pod), volume_capability=cap(mode=mode)), CTX
        )
    assert world.host.at(world.target("pod-1"))
    assert world.host.at(world.target("pod-2"))


async def test_one_target_is_per_volume(world: World) -> None:
    mode = AM.SINGLE_NODE_SINGLE_WRITER
    svc = world.service
    for vol in ("vol-1", "vol-2"):
        await svc.NodeStageVolume(
            stage_req(
                world,
                volume_id=vol,
                staging_target_path=world.staging(vol),
                volume_capability=cap(mode=mode),
                volume_context={**SMB_CONTEXT, "subDir": vol},
            ),
            CTX,
        )
        await svc.NodePublishVolume(
            publish_req(
                world,
                volume_id=vol,
                staging_target_path=world.staging(vol),
                target_path=world.target(vol),
                volume_capability=cap(mode=mode),
            ),
            CTX,
        )
    assert world.host.at(world.target("vol-1"))
    assert world.host.at(world.target("vol-2"))


async def test_stats_where_no_volume_is_are_not_found(world: World) -> None:
    # CSI NodeGetVolumeStats: NOT_FOUND for a volume_path the volume is not
    # at; INVALID_ARGUMENT only for a missing field.
    svc = world.service
    plain = world.kubelet / "pods" / "p" / "volumes" / "mount"
    plain.mkdir(parents=True)
    for path in ("relative/path", str(world.kubelet / "missing"), str(plain), "/a/../b"):
        with pytest.raises(NotFound):
            await svc.NodeGetVolumeStats(
                csi_pb2.NodeGetVolumeStatsRequest(volume_id="vol-1", volume_path=path), CTX
            )
    with pytest.raises(InvalidArgument, match="volume_id"):
        await svc.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_path=str(plain)), CTX)


async def test_bad_unpublish_unstage_stats_requests(world: World) -> None:
    svc = world.service
    with pytest.raises(InvalidArgument, match="absolute"):
        await svc.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id="v", target_path="x"), CTX
        )
    with pytest.raises(InvalidArgument, match=r"'\.\.'"):
        await svc.NodeUnstageVolume(
            csi_pb2.NodeUnstageVolumeRequest(volume_id="v", staging_target_path="/a/../b"), CTX
        )
    with pytest.raises(InvalidArgument, match="volume_path"):
        await svc.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_id="v"), CTX)
    assert world.runner.calls == []


def _outside_kubelet_requests(world: World) -> list[tuple[str, Any, Any]]:
    """(RPC name, request) pairs whose path is not where kubelet puts it."""
    outside = str(world.root / "elsewhere" / "globalmount")
    under_pods = world.target("p2")  # a target path given as the staging path
    under_plugins = world.staging("v2")  # a staging path given as the target
    kubelet_root_only = str(world.kubelet / "pods")
    unpub = csi_pb2.NodeUnpublishVolumeRequest
    unstage = csi_pb2.NodeUnstageVolumeRequest
    return [
        ("NodeStageVolume", "staging_target_path", stage_req(world, staging_target_path=outside)),
        ("NodeStageVolume", "staging_target_path", stage_req(world, staging_target_path="/etc")),
        (
            "NodeStageVolume",
            "staging_target_path",
            stage_req(world, staging_target_path=under_pods),
        ),
        (
            "NodeUnstageVolume",
            "staging_target_path",
            unstage(volume_id="v", staging_target_path=outside),
        ),
        ("NodePublishVolume", "target_path", publish_req(world, target_path=outside)),
        ("NodePublishVolume", "target_path", publish_req(world, target_path=under_plugins)),
        ("NodePublishVolume", "target_path", publish_req(world, target_path=kubelet_root_only)),
        (
            "NodePublishVolume",
            "staging_target_path",
            publish_req(world, staging_target_path=outside),
        ),
        ("NodeUnpublishVolume", "target_path", unpub(volume_id="v", target_path=outside)),
        ("NodeUnpublishVolume", "target_path", unpub(volume_id="v", target_path="/usr/lib")),
    ]


async def test_paths_outside_the_kubelet_dir_are_refused_and_touch_nothing(world: World) -> None:
    for method, field, request in _outside_kubelet_requests(world):
        with pytest.raises(InvalidArgument, match=f"{field} .* is outside kubelet's directories"):
            await getattr(world.service, method)(request, CTX)
    # NodeGetVolumeStats: no volume can be there, which CSI answers NOT_FOUND.
    outside = str(world.root / "elsewhere" / "globalmount")
    with pytest.raises(NotFound, match=r"volume_path .* is outside kubelet's directories"):
        await world.service.NodeGetVolumeStats(
            csi_pb2.NodeGetVolumeStatsRequest(volume_id="v", volume_path=outside), CTX
        )
    assert world.runner.calls == []
    assert world.host.entries == []
    assert not (world.root / "elsewhere").exists()


async def test_paths_under_a_default_kubelet_dir_are_refused_when_another_is_configured(
    world: World,
) -> None:
    """The flag decides: /var/lib/kubelet is not special once --kubelet-dir says otherwise."""
    request = csi_pb2.NodeUnstageVolumeRequest(
        volume_id="v",
        staging_target_path="/var/lib/kubelet/plugins/kubernetes.io/csi/d/x/globalmount",
    )
    with pytest.raises(InvalidArgument, match="outside kubelet's directories"):
        await world.service.NodeUnstageVolume(request, CTX)


async def test_capabilities_and_info(world: World) -> None:
    caps = await world.service.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest(), CTX)
    names = {csi_pb2.NodeServiceCapability.RPC.Type.Name(c.rpc.type) for c in caps.capabilities}
    assert names == {
        "STAGE_UNSTAGE_VOLUME",
        "GET_VOLUME_STATS",
        "VOLUME_CONDITION",
        "VOLUME_MOUNT_GROUP",
        "SINGLE_NODE_MULTI_WRITER",
    }
    with pytest.raises(Unimplemented):
        await world.service.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(), CTX)


async def test_stats_of_dead_mount_is_abnormal(world: World) -> None:
    await world.service.NodeStageVolume(stage_req(world), CTX)
    gate = world.host.hang_mount(world.staging())
    stats = await asyncio.wait_for(
        world.service.NodeGetVolumeStats(
            csi_pb2.NodeGetVolumeStatsRequest(volume_id="vol-1", volume_path=world.staging()),
            CTX,
        ),
        5,
    )
    assert stats.volume_condition.abnormal
    assert "did not answer" in stats.volume_condition.message
    gate.set()


async def test_real_killed_process_keeps_the_lock_until_it_is_gone(world: World) -> None:
    """The real runner end to end: a "mount" (here ``sleep``) outlives the
    timeout, is killed, and the lock is handed over to its real exit."""
    from node.runner import AsyncioRunner

    real = AsyncioRunner(kill_grace=0)  # answer at once, before the group is reaped
    fake_run = world.runner.run

    async def run(argv: Any, **kw: Any) -> Any:
        if argv[:2] == ["mount", "-t"]:
            return await real.run(["sleep", "30"], timeout=0.1)
        return await fake_run(argv, **kw)

    world.runner.run = run  # type: ignore[method-assign]
    with pytest.raises(DeadlineExceeded, match="has not exited yet"):
        await world.service.NodeStageVolume(stage_req(world), CTX)
    with pytest.raises(Aborted):
        await world.service.NodeStageVolume(stage_req(world), CTX)
    await asyncio.wait_for(world.service._locks.wait_idle(), 10)
    assert real.stuck == 0
    world.runner.run = fake_run  # type: ignore[method-assign]
    await world.service.NodeStageVolume(stage_req(world), CTX)
