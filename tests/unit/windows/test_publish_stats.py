"""Publish, unpublish and stats on the fake Windows node."""

from __future__ import annotations

import asyncio

import pytest

from driver.errors import FailedPrecondition, NotFound
from node.platform import PublishRequest
from node.windows import OP_GET_MAPPING, WindowsPlatform
from tests.harness import wait_until
from tests.unit.windows.fake import (
    ROOT,
    FakeWindows,
    GiB,
    key,
    make_platform,
    stage_request,
    staging_of,
    target_of,
)

# ------------------------------------------------------------------ publish / unpublish


async def test_publish_and_unpublish(platform: WindowsPlatform, node: FakeWindows) -> None:
    stage = stage_request(platform, node)
    await platform.stage(stage)
    target = platform.check_path(target_of("pod-1", "pv-1"), what="target_path")
    node.mkdir_p(target)  # kubelet pre-creates the target directory
    request = PublishRequest("pvc-1", stage.staging_path, target)
    await platform.publish(request)
    assert node.links[key(target)] == stage.staging_path
    assert await node.is_dir(target)  # target → staging → share
    await platform.publish(request)  # idempotent
    assert [a for a in node.fs_actions if a[0] == "symlink"][-1][1] == target
    await platform.unpublish("pvc-1", target)
    assert key(target) not in node.links
    assert key(stage.staging_path) in node.links  # the staging link is untouched
    assert key(ROOT + r"\base\pvc-1") in node.server_dirs
    await platform.unpublish("pvc-1", target)  # missing: success


async def test_publish_needs_a_staged_volume(platform: WindowsPlatform, node: FakeWindows) -> None:
    staging = platform.check_path(staging_of("pvc-1"), what="s")
    target = platform.check_path(target_of("pod-1", "pv-1"), what="t")
    with pytest.raises(FailedPrecondition, match="stage first"):
        await platform.publish(PublishRequest("pvc-1", staging, target))


async def test_unpublish_never_deletes_data(platform: WindowsPlatform, node: FakeWindows) -> None:
    target = platform.check_path(target_of("pod-1", "pv-1"), what="t")
    node.mkdir_p(target + r"\written-by-the-pod")
    await platform.unpublish("pvc-1", target)
    assert key(target + r"\written-by-the-pod") in node.dirs
    empty = platform.check_path(target_of("pod-2", "pv-1"), what="t")
    node.mkdir_p(empty)
    await platform.unpublish("pvc-1", empty)  # an empty leftover directory is removed
    assert key(empty) not in node.dirs


# ------------------------------------------------------------------ stats


async def test_usage_of_a_healthy_volume(platform: WindowsPlatform, node: FakeWindows) -> None:
    stage = stage_request(platform, node)
    await platform.stage(stage)
    calls = len(node.calls)
    usage = await platform.usage("pvc-1", stage.staging_path)
    assert (usage.total_bytes, usage.available_bytes, usage.used_bytes) == (
        100 * GiB,
        40 * GiB,
        40 * GiB,
    )
    assert usage.total_inodes is None
    assert usage.free_inodes is None
    assert usage.used_inodes is None
    assert not usage.health.abnormal
    node.now += 3600
    assert not (await platform.usage("pvc-1", stage.staging_path)).health.abnormal
    assert len(node.calls) == calls  # no PowerShell while the volume answers


async def test_usage_through_a_published_target(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    stage = stage_request(platform, node)
    await platform.stage(stage)
    target = platform.check_path(target_of("pod-1", "pv-1"), what="t")
    await platform.publish(PublishRequest("pvc-1", stage.staging_path, target))
    usage = await platform.usage("pvc-1", target)
    assert usage.total_bytes == 100 * GiB
    assert not usage.health.abnormal
    node.mappings[key(ROOT)].status = "Disconnected"
    usage = await platform.usage("pvc-1", target)
    assert usage.health.abnormal
    assert "Disconnected" in usage.health.message
    assert usage.total_bytes == 0


async def test_usage_when_the_staging_link_is_gone(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    stage = stage_request(platform, node)
    await platform.stage(stage)
    target = platform.check_path(target_of("pod-1", "pv-1"), what="t")
    await platform.publish(PublishRequest("pvc-1", stage.staging_path, target))
    del node.links[key(stage.staging_path)]
    usage = await platform.usage("pvc-1", target)
    assert usage.health.abnormal
    assert "does not exist" in usage.health.message


async def test_published_elsewhere_finds_pod_links_to_the_staging_link(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    stage = stage_request(platform, node)
    assert await platform.published_elsewhere(stage.staging_path, "C:\\x") == []  # no pods dir
    await platform.stage(stage)
    other = stage_request(platform, node, "pvc-2")
    await platform.stage(other)
    first = platform.check_path(target_of("pod-1", "pv-1"), what="t")
    second = platform.check_path(target_of("pod-2", "pv-1"), what="t")
    await platform.publish(PublishRequest("pvc-1", stage.staging_path, first))
    unrelated = platform.check_path(target_of("pod-3", "pv-2"), what="t")
    await platform.publish(PublishRequest("pvc-2", other.staging_path, unrelated))
    assert await platform.published_elsewhere(stage.staging_path, second) == [first]
    assert await platform.published_elsewhere(stage.staging_path.lower(), first.upper()) == []
    await platform.unpublish("pvc-1", first)
    assert await platform.published_elsewhere(stage.staging_path, second) == []


async def test_usage_of_a_path_without_a_volume_is_not_found(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    # CSI NodeGetVolumeStats: NOT_FOUND when the volume is not at volume_path.
    target = platform.check_path(target_of("pod-1", "pv-1"), what="t")
    with pytest.raises(NotFound, match="does not exist"):
        await platform.usage("pvc-1", target)
    await node.make_dirs(target)
    with pytest.raises(NotFound, match="not a link"):
        await platform.usage("pvc-1", target)


async def test_usage_when_the_mapping_is_gone(platform: WindowsPlatform, node: FakeWindows) -> None:
    stage = stage_request(platform, node)
    await platform.stage(stage)
    node.mappings.clear()
    usage = await platform.usage("pvc-1", stage.staging_path)
    assert usage.health.abnormal
    assert "cannot reach the volume" in usage.health.message
    assert "no mapping" in usage.health.message


async def test_usage_is_bounded_in_time(node: FakeWindows) -> None:
    platform = make_platform(node, stats_timeout=0.02)
    stage = stage_request(platform, node)
    await platform.stage(stage)
    node.disk_hold = asyncio.Event()
    usage = await platform.usage("pvc-1", stage.staging_path)
    assert usage.health.abnormal
    assert "did not answer within" in usage.health.message
    # The stuck probe is not joined by another one.
    usage = await platform.usage("pvc-1", stage.staging_path)
    assert usage.health.abnormal
    assert "not returned yet" in usage.health.message
    assert node.disk_calls == 1
    node.disk_hold.set()
    await wait_until(lambda: not platform.probes.in_flight)
    assert not (await platform.usage("pvc-1", stage.staging_path)).health.abnormal
    await platform.aclose()


async def test_a_dead_share_costs_one_status_lookup_at_a_time(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    requests = [stage_request(platform, node, f"pvc-{i}") for i in (1, 2, 3)]
    for request in requests:
        await platform.stage(request)
    node.servers_down.add("fileserver")
    calls = len(node.calls)
    node.hold = asyncio.Event()
    checks = asyncio.gather(*(platform.usage(r.volume_id, r.staging_path) for r in requests * 3))
    await wait_until(lambda: len(node.calls) > calls)
    node.hold.set()
    usages = await checks
    assert all(u.health.abnormal for u in usages)
    assert {u.health.message.split(";")[0] for u in usages} == {
        "cannot reach the volume: The specified network name is no longer available: "
        + r.staging_path
        for r in requests
    } | {"the previous space query of this volume has not returned yet"}
    assert all("status OK" in u.health.message for u in usages)
    assert node.ops()[calls:] == [OP_GET_MAPPING]  # one lookup served all nine
    await platform.usage("pvc-1", requests[0].staging_path)
    assert len(node.calls) == calls + 1  # the problem is remembered for a while ...
    node.now += 16
    await platform.usage("pvc-1", requests[0].staging_path)
    assert len(node.calls) == calls + 2  # ... and looked up again after status_retry


async def test_usage_of_a_missing_path(platform: WindowsPlatform) -> None:
    with pytest.raises(NotFound):
        await platform.usage("pvc-1", platform.check_path(staging_of("nope"), what="p"))
