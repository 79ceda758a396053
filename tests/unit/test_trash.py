"""Fast deletes and the background purge (controller.trash) against a stateful fake share."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controller.params import TRASH_DIR, parse_params
from controller.service import ControllerService
from controller.trash import Trash, trash_dir_for
from driver.csi import csi_pb2
from driver.errors import InvalidArgument, PermissionDenied, Unavailable
from tests.csi_requests import cap
from tests.fakes.share import FakeShare

TRASH = f"base/{TRASH_DIR}"


def volume(share: FakeShare, path: str = "base/pvc-1", files: int = 0) -> None:
    share.dirs.update({"base", path})
    for i in range(files):
        share.files.add(f"{path}/f{i}")


def trash_entries(share: FakeShare) -> list[str]:
    prefix = TRASH + "/"
    return sorted(p for p in share.dirs if p.startswith(prefix) and "/" not in p[len(prefix) :])


def ops(share: FakeShare) -> list[str]:
    return [a[0] for a in share.actions]


async def test_an_empty_volume_goes_in_one_step() -> None:
    share, trash = FakeShare(), Trash()
    volume(share)
    assert await trash.delete(share, "base/pvc-1") is True
    await trash.drain()
    assert "base/pvc-1" not in share.dirs
    # One removal step; no walk, no rename (the trash listing is the resume check).
    assert [a for a in share.actions if a[0] != "list"] == [("remove_empty_dir", "base/pvc-1")]
    assert trash.backlog == 0


async def test_a_missing_volume_is_success_and_reports_it() -> None:
    share, trash = FakeShare(), Trash()
    share.dirs.add("base")
    assert await trash.delete(share, "base/pvc-1") is False
    assert "rename" not in ops(share)
    await trash.drain()


async def test_a_full_volume_is_moved_aside_then_purged() -> None:
    share, trash = FakeShare(), Trash()
    volume(share, files=50)
    assert await trash.delete(share, "base/pvc-1") is True
    # The name is free at once: the tree now lies in the trash, whole.
    assert "base/pvc-1" not in share.dirs
    [entry] = trash_entries(share)
    assert entry.startswith(f"{TRASH}/pvc-1.")
    assert len([f for f in share.files if f.startswith(entry + "/")]) == 50
    assert trash.backlog == 1
    await trash.drain()
    assert trash_entries(share) == []
    assert not any(f.startswith(TRASH) for f in share.files)
    assert trash.backlog == 0
    assert trash.purged_entries == 1
    assert TRASH in share.dirs  # the trash directory itself stays for next time


async def test_a_new_volume_of_the_same_name_is_not_touched_by_the_purge() -> None:
    share, trash = FakeShare(), Trash()
    volume(share, files=3)
    await trash.delete(share, "base/pvc-1")
    await share.mkdir("base/pvc-1")  # recreated before the purge ran
    await trash.drain()
    assert "base/pvc-1" in share.dirs


async def test_a_refused_rename_removes_in_place() -> None:
    share, trash = FakeShare(), Trash()
    volume(share, files=2)
    share.dirs.add(TRASH)

    async def denied(src: str, dst: str, *, replace: bool = False) -> None:
        share.actions.append(("rename", src, dst, str(replace)))
        raise PermissionDenied("renames are not allowed here")

    share.rename = denied  # type: ignore[method-assign]
    assert await trash.delete(share, "base/pvc-1") is True
    assert "base/pvc-1" not in share.dirs
    assert ("remove_tree", "base/pvc-1") in share.actions
    assert trash.backlog == 0
    await trash.drain()


async def test_what_an_earlier_process_left_is_purged_after_a_restart() -> None:
    share = FakeShare()
    volume(share, "base/pvc-old", files=5)
    first = Trash()
    await first.delete(share, "base/pvc-old")
    await first.aclose()  # the process ended before the purge
    [left] = trash_entries(share)
    assert any(f.startswith(left + "/") for f in share.files)

    second = Trash()
    volume(share, "base/pvc-new")
    second.watch(share, "base/pvc-new")  # the first volume operation in base
    await second.drain()
    assert trash_entries(share) == []
    assert second.purged_entries == 1


async def test_a_failed_purge_is_retried() -> None:
    share, trash = FakeShare(), Trash(retry_start=0)
    volume(share, files=4)
    share.dirs.add(TRASH)
    trash.watch(share, "base/pvc-1")
    await trash.drain()  # the resume check has listed the (empty) trash
    await trash.delete(share, "base/pvc-1")
    share.fail_next.append(Unavailable("server went away"))  # the purge's first try
    await trash.drain()
    assert trash_entries(share) == []
    assert ops(share).count("remove_tree") == 2


async def test_purges_run_a_bounded_number_at_a_time() -> None:
    share, trash = FakeShare(), Trash(concurrency=2)
    running = peak = 0
    original = share.remove_tree

    async def counting(path: str) -> bool:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return await original(path)
        finally:
            running -= 1

    share.remove_tree = counting  # type: ignore[method-assign]
    for i in range(6):
        volume(share, f"base/pvc-{i}", files=1)
        await trash.delete(share, f"base/pvc-{i}")
    assert trash.backlog == 6
    await trash.drain()
    assert peak == 2
    assert trash_entries(share) == []


def test_trash_dir_is_beside_the_volume() -> None:
    assert trash_dir_for("a/b/pvc-1") == f"a/b/{TRASH_DIR}"
    assert trash_dir_for("pvc-1") == TRASH_DIR


@pytest.mark.parametrize("sub", [TRASH_DIR, f"x/{TRASH_DIR}/y", f"{TRASH_DIR}/y"])
def test_no_volume_may_live_in_the_trash(sub: str) -> None:
    with pytest.raises(InvalidArgument, match="kept for deleted volumes"):
        parse_params("pvc-1", {"source": "//srv/share", "subDir": sub}, [])


async def test_delete_volume_uses_the_trash() -> None:
    from tests.fakes.share import FakeBackends

    backends = FakeBackends()
    svc = ControllerService(backends)
    secrets = {"username": "u", "password": "p"}
    ctx: Any = None
    req = csi_pb2.CreateVolumeRequest(
        name="pvc-1",
        volume_capabilities=[cap()],
        parameters={"source": "//srv/share/base"},
        secrets=secrets,
    )
    vid = (await svc.CreateVolume(req, ctx)).volume.volume_id
    share = backends.share("smb://srv/share")
    share.files.add("base/pvc-1/data")
    await svc.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid, secrets=secrets), ctx)
    assert "base/pvc-1" not in share.dirs
    assert svc.trash.backlog == 1
    await svc.trash.drain()
    assert trash_entries(share) == []
    await svc.aclose()


async def test_a_failed_trash_listing_is_tried_again() -> None:
    share, trash = FakeShare(), Trash()
    volume(share, "base/pvc-old", files=1)
    await share.mkdir(TRASH)
    await share.rename("base/pvc-old", f"{TRASH}/pvc-old.1")
    share.fail_next.append(Unavailable("server went away"))
    trash.watch(share, "base/pvc-new")
    await trash.drain()
    assert trash_entries(share) == [f"{TRASH}/pvc-old.1"]
    trash.watch(share, "base/pvc-new")
    await trash.drain()
    assert trash_entries(share) == []


async def test_the_backlog_is_a_metric() -> None:
    from controller.service import ControllerPlugin
    from driver.metrics import Metrics
    from tests.fakes.share import FakeBackends

    backends = FakeBackends()
    plugin = ControllerPlugin(backends)
    metrics = Metrics()
    for name, (documentation, read) in plugin.gauges().items():
        metrics.gauge(name, documentation, read)
    share = backends.share("smb://srv/share")
    volume(share, files=1)
    await plugin.service.trash.delete(share, "base/pvc-1")
    assert b"csi_smb_nfs_trash_backlog 1.0" in metrics.render()
    await plugin.service.trash.drain()
    text = metrics.render()
    assert b"csi_smb_nfs_trash_backlog 0.0" in text
    assert b"csi_smb_nfs_trash_purged 1.0" in text
    await plugin.aclose()


async def test_a_tree_too_large_for_one_call_is_purged_piece_by_piece() -> None:
    share, trash = FakeShare(remove_tree_limit=40), Trash()
    volume(share)
    for d in range(3):
        volume(share, f"base/pvc-1/d{d}", files=30)
    for i in range(70):
        share.files.add(f"base/pvc-1/f{i}")
    assert await trash.delete(share, "base/pvc-1") is True
    assert trash_entries(share) != []
    await trash.drain()
    assert trash_entries(share) == []
    assert not [p for p in share.files | share.dirs if p.startswith(TRASH + "/")]
    assert trash.purged_entries == 1
    assert ops(share).count("list") >= 2  # the entry and its subdirectories, taken apart
