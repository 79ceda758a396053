"""The Node service over the Windows platform, the real host, and serving on Windows."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from driver.config import Config
from driver.csi import csi_pb2
from driver.errors import FailedPrecondition, InvalidArgument
from node.service import NodeService
from node.windows import RealWindowsHost, WindowsPlatform
from tests.harness import wait_until
from tests.unit.windows.fake import (
    CONFIG,
    PASSWORD,
    ROOT,
    FakeWindows,
    GiB,
    key,
    make_platform,
    staging_of,
    target_of,
)

# ------------------------------------------------------------------ the Node service


def node_capability() -> csi_pb2.VolumeCapability:
    am = csi_pb2.VolumeCapability.AccessMode
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(mount_flags=["dir_mode=0777"]),
        access_mode=am(mode=am.MULTI_NODE_MULTI_WRITER),
    )


async def test_node_service_end_to_end(platform: WindowsPlatform, node: FakeWindows) -> None:
    service = NodeService("win-1", platform)
    ctx: Any = None
    volume = "pvc-1"
    staging = staging_of(volume)
    target = target_of("0c2f-pod", "pv-1")
    node.mkdir_p(staging)
    node.mkdir_p(target)
    context = {"source": "//fileserver/share/base", "subDir": "pvc-1"}
    secrets = {"username": "alice", "password": PASSWORD, "domain": "CORP"}

    caps = await service.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest(), ctx)
    names = {csi_pb2.NodeServiceCapability.RPC.Type.Name(c.rpc.type) for c in caps.capabilities}
    assert names == set(platform.capabilities)

    await service.NodeStageVolume(
        csi_pb2.NodeStageVolumeRequest(
            volume_id=volume,
            staging_target_path=staging,
            volume_capability=node_capability(),
            volume_context=context,
            secrets=secrets,
        ),
        ctx,
    )
    await service.NodePublishVolume(
        csi_pb2.NodePublishVolumeRequest(
            volume_id=volume,
            staging_target_path=staging,
            target_path=target,
            volume_capability=node_capability(),
            volume_context=context,
        ),
        ctx,
    )
    assert node.links[key(target)] == "C:" + staging  # the normalised staging path
    assert node.links[key("C:" + staging)] == ROOT + r"\base\pvc-1"

    stats = await service.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume, volume_path=target), ctx
    )
    assert [(u.unit, u.total, u.available, u.used) for u in stats.usage] == [
        (csi_pb2.VolumeUsage.Unit.BYTES, 100 * GiB, 40 * GiB, 40 * GiB)
    ]
    assert not stats.volume_condition.abnormal

    # A readOnly pod volume: kubelet has the runtime enforce it, so it is published.
    read_only_target = target_of("ro-pod", "pv-1")
    await service.NodePublishVolume(
        csi_pb2.NodePublishVolumeRequest(
            volume_id=volume,
            staging_target_path=staging,
            target_path=read_only_target,
            volume_capability=node_capability(),
            readonly=True,
        ),
        ctx,
    )
    assert node.links[key(read_only_target)] == "C:" + staging
    # A reader-only access mode alone is not enforced by anything: refused.
    reader_only = node_capability()
    reader_only.access_mode.mode = csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY
    with pytest.raises(InvalidArgument, match="readOnly: true"):
        await service.NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest(
                volume_id=volume,
                staging_target_path=staging,
                target_path=target_of("rox-pod", "pv-1"),
                volume_capability=reader_only,
            ),
            ctx,
        )
    await service.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume, target_path=read_only_target), ctx
    )
    with pytest.raises(InvalidArgument, match=r"'\.\.'"):
        await service.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume, target_path=target + r"\..\.."),
            ctx,
        )

    await service.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume, target_path=target), ctx
    )
    await service.NodeUnstageVolume(
        csi_pb2.NodeUnstageVolumeRequest(volume_id=volume, staging_target_path=staging), ctx
    )
    assert node.links == {}
    assert node.mappings == {}
    assert node.violations == []

    with pytest.raises(FailedPrecondition, match="NFS"):
        await service.NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                volume_id="nfs-1",
                staging_target_path=staging_of("nfs-1"),
                volume_capability=node_capability(),
                volume_context={"source": "nfsserver:/export", "subDir": "a"},
            ),
            ctx,
        )


async def test_paths_outside_the_kubelet_dir_are_refused_and_touched_not(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    """The loopback endpoint is reachable by any local process: a SYSTEM
    driver must not replace or delete links and directories anywhere."""
    service = NodeService("win-1", platform)
    ctx: Any = None
    staging = staging_of("pvc-1")
    node.mkdir_p(staging)
    elsewhere = r"C:\ProgramData\app\data"
    node.mkdir_p(elsewhere)  # an empty directory somebody relies on
    node.links[key(r"C:\ProgramData\app\link")] = r"C:\ProgramData\app\data"
    before = (set(node.dirs), dict(node.links))
    publish = csi_pb2.NodePublishVolumeRequest
    unpublish = csi_pb2.NodeUnpublishVolumeRequest
    unstage = csi_pb2.NodeUnstageVolumeRequest
    link = r"C:\ProgramData\app\link"
    refused = [
        ("NodePublishVolume", publish(volume_id="v", staging_target_path=staging,
                                      target_path=elsewhere, volume_capability=node_capability())),
        ("NodePublishVolume", publish(volume_id="v", staging_target_path=staging,
                                      target_path=r"D:\var\lib\kubelet\pods\p\mount",
                                      volume_capability=node_capability())),
        ("NodePublishVolume", publish(volume_id="v", staging_target_path=staging,
                                      target_path=staging_of("pvc-2"),
                                      volume_capability=node_capability())),
        ("NodePublishVolume", publish(volume_id="v", staging_target_path=elsewhere,
                                      target_path=target_of("p", "pv"),
                                      volume_capability=node_capability())),
        ("NodeUnpublishVolume", unpublish(volume_id="v", target_path=elsewhere)),
        ("NodeUnpublishVolume", unpublish(volume_id="v", target_path=link)),
        ("NodeUnpublishVolume", unpublish(volume_id="v", target_path=r"\var\lib\kubelet\pods")),
        ("NodeUnstageVolume", unstage(volume_id="v", staging_target_path=link)),
        ("NodeUnstageVolume", unstage(volume_id="v", staging_target_path=target_of("p", "pv"))),
    ]  # fmt: skip
    for method, request in refused:
        with pytest.raises(InvalidArgument, match="outside kubelet's directories"):
            await getattr(service, method)(request, ctx)
    assert (node.dirs, node.links) == before
    assert node.fs_actions == []
    assert node.calls == []  # no PowerShell either


async def test_kubelet_paths_compare_case_insensitively(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    service = NodeService("win-1", platform)
    upper = r"C:\VAR\LIB\KUBELET\pods\p\volumes\kubernetes.io~csi\pv\mount"
    node.mkdir_p(upper)
    await service.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id="v", target_path=upper),
        None,  # type: ignore[arg-type]
    )
    assert node.fs_actions == [("rmdir", upper)]


async def test_a_custom_kubelet_dir_moves_the_allowed_paths(node: FakeWindows) -> None:
    platform = make_platform(node, kubelet_dir="D:\\kubelet")
    service = NodeService("win-1", platform, kubelet_dir="D:\\kubelet")
    default_target = target_of("p", "pv")
    moved = r"d:\kubelet\pods\p\volumes\kubernetes.io~csi\pv\mount"
    node.mkdir_p(default_target)
    node.mkdir_p(moved)
    unpublish = csi_pb2.NodeUnpublishVolumeRequest
    with pytest.raises(InvalidArgument, match=r"\(D:\\kubelet\\pods\)"):
        await service.NodeUnpublishVolume(
            unpublish(volume_id="v", target_path=default_target), None
        )  # type: ignore[arg-type]
    await service.NodeUnpublishVolume(unpublish(volume_id="v", target_path=moved), None)  # type: ignore[arg-type]
    assert node.fs_actions == [("rmdir", "D" + moved[1:])]  # the drive letter normalised


# ------------------------------------------------------------------ the real host (this OS)


async def test_real_host_link_operations(tmp_path: Path) -> None:
    host = RealWindowsHost()
    try:
        target = tmp_path / "volume"
        target.mkdir()
        (target / "data").write_text("keep me")
        link = str(tmp_path / "globalmount")
        await host.symlink_dir(link, str(target))
        assert await host.is_link(link)
        assert await host.lexists(link)
        assert await host.is_dir(link)
        assert await host.read_link(link) == str(target)
        assert await host.list_dir(link) == ["data"]
        with pytest.raises(OSError):
            await host.remove_empty_dir(link)  # a link is never removed as a directory
        with pytest.raises(OSError):
            await host.remove_link(str(target))  # a directory is never removed as a link
        with pytest.raises(OSError):
            await host.remove_empty_dir(str(target))  # never recursive
        assert (await host.disk_usage(link)).total > 0
        await host.check_dir(link)  # through the link
        with pytest.raises(FileNotFoundError):
            await host.check_dir(str(tmp_path / "missing"))
        with pytest.raises(NotADirectoryError):
            await host.check_dir(str(target / "data"))
        await host.remove_link(link)
        assert not await host.lexists(link)
        assert (target / "data").read_text() == "keep me"
        await host.make_dirs(str(tmp_path / "a" / "b"))
        await host.remove_empty_dir(str(tmp_path / "a" / "b"))
    finally:
        host.close()


def test_the_real_platform_builds_from_config() -> None:
    platform = WindowsPlatform(CONFIG)
    assert platform.settings.map_timeout == CONFIG.mount_timeout
    assert platform.settings.require_privacy is True
    assert platform.settings.read_only == "refuse"
    assert platform.powershell.max_concurrent == 3
    assert isinstance(platform.host, RealWindowsHost)
    assert (
        platform.powershell.argv("x")[0]
        .lower()
        .endswith("\\system32\\windowspowershell\\v1.0\\powershell.exe")
    )
    asyncio.run(platform.aclose())


# ------------------------------------------------------------------ serving on Windows


async def test_serve_falls_back_to_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows event loops have no add_signal_handler: serve() installs plain
    signal handlers that wake the loop, and still stops gracefully."""
    import driver.server as server_module

    events: list[str] = []

    class StubServer:
        def __init__(self, config: Config, plugins: Any) -> None:
            pass

        async def start(self) -> None:
            events.append("start")

        async def stop(self) -> None:
            events.append("stop")

    def no_loop_signals(*args: Any) -> None:
        raise NotImplementedError

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(server_module, "DriverServer", StubServer)
    monkeypatch.setattr(loop, "add_signal_handler", no_loop_signals)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serving = asyncio.ensure_future(server_module.serve(CONFIG, []))
        await wait_until(lambda: events == ["start"])
        assert signal.getsignal(signal.SIGTERM) is not saved[signal.SIGTERM]
        signal.raise_signal(signal.SIGTERM)
        await asyncio.wait_for(serving, 5)
        assert events == ["start", "stop"]
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
