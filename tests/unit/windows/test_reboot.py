"""A Windows node reboots under staged and published volumes.

After the reboot the links are still on disk but dangle: the SMB global
mappings are gone (or persistent ones come back Disconnected without their
credentials).  The driver starts again, checks the shares of its staging
links, and reports their volumes abnormal until kubelet stages them again
with their credentials; then every volume of the share works again.
"""

from __future__ import annotations

import pytest
import structlog

from driver.config import Config, parse_endpoint
from driver.source import Source
from node.platform import PublishRequest, Reconciling
from node.service import NodePlugin
from node.windows import OP_GET_MAPPING, OP_NEW_MAPPING, OP_REMOVE_MAPPING, WindowsPlatform
from tests.unit.windows.fake import (
    ROOT,
    SHARE,
    FakeWindows,
    key,
    make_platform,
    stage_request,
    target_of,
)

OTHER = r"\\fileserver\other"


async def node_with_volumes(platform: WindowsPlatform, node: FakeWindows) -> dict[str, str]:
    """pvc-1 and pvc-2 on one share, pvc-3 on another, each published to a pod."""
    targets: dict[str, str] = {}
    for volume, source, subdir in (
        ("pvc-1", SHARE, None),
        ("pvc-2", SHARE, None),
        ("pvc-3", Source("smb", "fileserver", None, "other"), "x"),
    ):
        request = stage_request(platform, node, volume, source=source, subdir=subdir)
        await platform.stage(request)
        target = platform.check_path(target_of(f"pod-{volume}", volume), what="t")
        await platform.publish(PublishRequest(volume, request.staging_path, target))
        targets[volume] = target
    return targets


@pytest.mark.parametrize("persistent", [False, True])
async def test_a_whole_reboot(node: FakeWindows, persistent: bool) -> None:
    before = make_platform(node)
    targets = await node_with_volumes(before, node)
    assert set(node.mappings) == {key(ROOT), key(OTHER)}
    links = dict(node.links)

    node.reboot(persistent=persistent)
    assert node.links == links  # the links survive, dangling
    for target in targets.values():
        assert not await node.is_dir(target)

    # The driver starts again: a new process, nothing in memory.
    platform = make_platform(node)
    node.calls.clear()
    with structlog.testing.capture_logs() as logs:
        await platform.reconcile()
    # Read only: without credentials nothing can be mapped, nothing is removed.
    assert node.ops() == [OP_GET_MAPPING, OP_GET_MAPPING]
    assert sorted(c.env["CSI_REMOTE_PATH"] for c in node.calls) == sorted([ROOT, OTHER])
    warned = [e for e in logs if e["event"].startswith("start-up check: share not mapped")]
    assert sorted(e["share"] for e in warned) == sorted([ROOT, OTHER])
    assert {e["volumes"] for e in warned if e["share"] == ROOT} == {2}

    # kubelet's stats meanwhile: abnormal, saying why and what brings it back.
    usage = await platform.usage("pvc-1", targets["pvc-1"])
    assert usage.health.abnormal
    assert "node restart" in usage.health.message
    assert "NodeStageVolume" in usage.health.message
    assert ("Disconnected" if persistent else "no mapping") in usage.health.message

    # kubelet stages pvc-1 again with its credentials: the share is mapped ...
    node.calls.clear()
    await platform.stage(stage_request(platform, node, "pvc-1", precreate=False))
    expected = (
        [OP_GET_MAPPING, OP_REMOVE_MAPPING, OP_NEW_MAPPING]
        if persistent
        else [
            OP_GET_MAPPING,
            OP_NEW_MAPPING,
        ]
    )
    assert node.ops() == expected
    assert node.mappings[key(ROOT)].status == "OK"
    assert node.links == links  # the existing links were right: kept as they are
    # ... and every volume of that share works again, pvc-2 included.
    for volume in ("pvc-1", "pvc-2"):
        assert await node.is_dir(targets[volume])
        usage = await platform.usage(volume, targets[volume])
        assert not usage.health.abnormal, usage.health.message
    # The other share still waits for its own NodeStageVolume.
    node.now += 60  # past status_retry: looked up again
    usage = await platform.usage("pvc-3", targets["pvc-3"])
    assert usage.health.abnormal
    assert "node restart" in usage.health.message

    # pvc-3's pod was deleted while the node was down: kubelet unpublishes and
    # unstages it; the driver removes the links and the (stale) mapping.
    await platform.unpublish("pvc-3", targets["pvc-3"])
    staging_3 = stage_request(platform, node, "pvc-3", precreate=False).staging_path
    await platform.unstage("pvc-3", staging_3)
    assert key(OTHER) not in node.mappings
    assert key(staging_3) not in node.links
    assert node.violations == []


async def test_reconcile_leaves_healthy_mappings_and_other_drivers_alone(
    node: FakeWindows,
) -> None:
    platform = make_platform(node)
    await node_with_volumes(platform, node)
    # Another driver's staging link into a share this driver does not use.
    node.add_share(r"\\elsewhere\data", "v")
    other_driver = r"C:\var\lib\kubelet\plugins\kubernetes.io\csi\other.csi.io\abc\globalmount"
    node.mkdir_p(other_driver.rsplit("\\", 1)[0])
    node.links[key(other_driver)] = r"\\elsewhere\data\v"
    node.calls.clear()
    with structlog.testing.capture_logs() as logs:
        await make_platform(node).reconcile()
    assert node.ops() == [OP_GET_MAPPING, OP_GET_MAPPING]  # this driver's two shares only
    assert not any(e["log_level"] == "warning" for e in logs)


async def test_the_node_plugin_runs_the_reconcile_at_start(node: FakeWindows) -> None:
    platform = make_platform(node)
    await node_with_volumes(platform, node)
    node.reboot(persistent=False)
    node.calls.clear()
    config = Config(endpoint=parse_endpoint("tcp://127.0.0.1:10000"), node_id="win-1")
    plugin = NodePlugin(config, make_platform(node))
    assert isinstance(plugin.platform, Reconciling)
    await plugin.start()
    assert plugin.reconciling is not None
    await plugin.reconciling
    assert node.ops() == [OP_GET_MAPPING, OP_GET_MAPPING]
    await plugin.aclose()
