"""Windows: kubelet's republish re-creates a Disconnected mapping (links kept),
and inline ephemeral volumes share the mapping's refcount with staged ones."""

from __future__ import annotations

from typing import Any

import pytest

from driver import rpc
from driver.credentials import Credentials
from driver.errors import FailedPrecondition, InvalidArgument, NotFound
from driver.source import Source
from node.platform import PublishRequest, StageRequest
from node.windows import (
    OP_GET_MAPPING,
    OP_NEW_MAPPING,
    OP_REMOVE_MAPPING,
    WindowsPlatform,
)
from tests.unit.windows.fake import (
    CREDS,
    PASSWORD,
    ROOT,
    SHARE,
    FakeWindows,
    key,
    make_platform,
    stage_request,
    target_of,
)


async def published(platform: WindowsPlatform, node: FakeWindows, volume: str = "pvc-1") -> Any:
    stage = stage_request(platform, node, volume)
    await platform.stage(stage)
    target = platform.check_path(target_of("pod-1", volume), what="target_path")
    node.mkdir_p(target)
    request = PublishRequest(volume, stage.staging_path, target)
    await platform.publish(request)
    return request


async def counted(platform: WindowsPlatform, request: PublishRequest) -> list[tuple[str, bool]]:
    token = rpc.begin("NodePublishVolume")
    try:
        await platform.publish(request)
        info = rpc.current()
        return list(info.repairs or []) if info is not None else []
    finally:
        rpc.end(token)


def inline(
    platform: WindowsPlatform,
    pod: str = "pod-9",
    *,
    subdir: str = "base/pvc-2",
    source: Source = SHARE,
    credentials: Credentials | None = CREDS,
) -> PublishRequest:
    target = platform.check_path(target_of(pod, "inline"), what="target_path")
    volume = StageRequest(
        volume_id="csi-inline",
        source=source,
        subdir=subdir,
        staging_path=target,
        credentials=credentials,
    )
    return PublishRequest("csi-inline", "", target, volume=volume, ephemeral=True)


# ------------------------------------------------------------------ republish


async def test_healthy_republish_changes_nothing(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    request = await published(platform, node)
    ops, links = node.ops(), dict(node.links)
    assert await counted(platform, request) == []
    assert node.ops() == ops  # the volume answers: no PowerShell at all
    assert node.links == links


@pytest.mark.parametrize("status", ["Disconnected", "Unavailable"])
async def test_a_disconnected_mapping_is_recreated_links_kept(
    platform: WindowsPlatform, node: FakeWindows, status: str
) -> None:
    request = await published(platform, node)
    node.mappings[key(ROOT)].status = status
    links = dict(node.links)
    calls = len(node.calls)

    assert await counted(platform, request) == [("smb", True)]

    assert [c.op for c in node.calls[calls:]] == [
        OP_GET_MAPPING,  # the volume did not answer: is the mapping stale?
        OP_GET_MAPPING,  # ensure()
        OP_REMOVE_MAPPING,
        OP_NEW_MAPPING,
    ]
    assert node.mappings[key(ROOT)].status == "OK"
    assert node.links == links  # staging and target links untouched
    assert await node.is_dir(request.target_path)


async def test_a_mapping_gone_after_a_restart_cannot_be_recreated(node: FakeWindows) -> None:
    request = await published(make_platform(node), node)
    restarted = make_platform(node)  # the node-stage secret is gone with the old process
    node.mappings.pop(key(ROOT))
    calls = len(node.calls)
    with pytest.raises(FailedPrecondition, match="restart the pod"):
        await restarted.publish(request)
    assert [c.op for c in node.calls[calls:]] == [OP_GET_MAPPING]
    assert key(ROOT) not in node.mappings
    # NodeStage of the volume again (a pod starting) brings the secret back.
    await restarted.stage(stage_request(restarted, node, "pvc-1"))
    assert node.mappings[key(ROOT)].status == "OK"


async def test_a_server_that_does_not_answer_is_left_to_reconnect(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    request = await published(platform, node)
    node.servers_down.add("fileserver")
    node.now += 3600
    assert await counted(platform, request) == []
    assert OP_REMOVE_MAPPING not in node.ops()


# ------------------------------------------------------------------ inline volumes


async def test_inline_volume_shares_the_mapping_refcount(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    request = inline(platform)
    await platform.publish(request)
    assert node.ops() == [OP_GET_MAPPING, OP_NEW_MAPPING]
    assert node.links[key(request.target_path)] == ROOT + r"\base\pvc-2"
    assert await node.is_dir(request.target_path)
    await platform.publish(request)  # republish: nothing new
    assert node.ops() == [OP_GET_MAPPING, OP_NEW_MAPPING]

    staged = await published(platform, node, "pvc-1")  # the same share: the same mapping
    assert node.ops().count(OP_NEW_MAPPING) == 1

    await platform.unpublish("csi-inline", request.target_path)  # a staged volume still uses it
    assert key(request.target_path) not in node.links
    assert key(ROOT) in node.mappings
    await platform.publish(inline(platform, "pod-10"))
    await platform.unpublish(staged.volume_id, staged.target_path)
    await platform.unstage(staged.volume_id, staged.staging_path)  # an inline volume still uses it
    assert key(ROOT) in node.mappings
    await platform.unpublish("csi-inline", inline(platform, "pod-10").target_path)  # the last one
    assert key(ROOT) not in node.mappings
    assert node.ops().count(OP_REMOVE_MAPPING) == 1
    assert key(ROOT + r"\base\pvc-2") in node.server_dirs  # nothing deleted on the server


async def test_inline_volume_with_a_disconnected_mapping(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    request = inline(platform)
    await platform.publish(request)
    node.mappings[key(ROOT)].status = "Disconnected"
    node.now += 3600
    assert await counted(platform, request) == [("smb", True)]  # its own secret: always at hand
    assert node.mappings[key(ROOT)].status == "OK"


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"subdir": "base/missing"}, NotFound, "not a directory"),
        ({"source": Source("nfs", "srv", None, "/export")}, FailedPrecondition, "NFS"),
        ({"credentials": None}, InvalidArgument, "username and password"),
        # The same checks as a staged volume: a name only cluster DNS resolves.
        ({"source": Source("smb", "files.ns.svc", None, "share")}, FailedPrecondition, "Service"),
    ],
)
async def test_bad_inline_volumes_leave_no_link(
    platform: WindowsPlatform, node: FakeWindows, kw: dict[str, Any], error: type, match: str
) -> None:
    request = inline(platform, **kw)
    with pytest.raises(error, match=match):
        await platform.publish(request)
    assert key(request.target_path) not in node.links
    assert PASSWORD not in repr(node.links)
