"""CreateSnapshot and restoring from it: identical trees, idempotency, failures, long runs."""

from __future__ import annotations

import asyncio
import io
import tarfile

import pytest

from controller import archive
from controller.service import ControllerService
from controller.snapshot_id import parse_snapshot_id
from driver.csi import csi_pb2
from driver.errors import (
    Aborted,
    AlreadyExists,
    DriverError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from tests.fakes.share import FakeBackends
from tests.unit.snapshots.support import (
    CTX,
    Deadline,
    fill,
    filled_volume,
    from_snapshot,
    share_of,
    snap_req,
    snapshot,
    tree,
    volume,
)

# -- CreateSnapshot + restore ------------------------------------------------------


async def test_snapshot_restore_is_identical(
    svc: ControllerService, backends: FakeBackends
) -> None:
    vid, share = await filled_volume(svc, backends)
    snap = await snapshot(svc, "snap-1", vid)
    assert snap.ready_to_use
    assert snap.source_volume_id == vid
    assert snap.snapshot_id == "s1#nfs#srv#/export#.snapshots/snap-1.tar.gz#pvc-src#delete"
    assert snap.size_bytes == len(share.contents[".snapshots/snap-1.tar.gz"]) > 0
    assert snap.creation_time.ToNanoseconds() > 0
    assert ".snapshots/snap-1.tar.gz.partial" not in share.files
    # An ordinary tar.gz with the facts in its global header.
    with tarfile.open(fileobj=io.BytesIO(share.contents[".snapshots/snap-1.tar.gz"])) as tar:
        assert "./a/b/big.bin" in ["./" + n for n in tar.getnames()]
        assert tar.pax_headers[archive.META_PREFIX + "source"] == vid

    resp = await svc.CreateVolume(from_snapshot("pvc-new", snap.snapshot_id), CTX)
    assert resp.volume.content_source.snapshot.snapshot_id == snap.snapshot_id
    assert tree(share, "pvc-new") == tree(share, "pvc-src")
    assert not [d for d in share.dirs if d.startswith(".csi-tmp-")]
    # The retry of a finished restore changes nothing.
    writes = share.bytes_written
    again = await svc.CreateVolume(from_snapshot("pvc-new", snap.snapshot_id), CTX)
    assert again.volume == resp.volume
    assert share.bytes_written == writes


async def test_snapshot_is_idempotent_and_names_are_unique(
    svc: ControllerService, backends: FakeBackends
) -> None:
    vid = await volume(svc, "pvc-src")
    other = await volume(svc, "pvc-other")
    fill(share_of(backends), "pvc-src")
    first = await snapshot(svc, "snap-1", vid)
    share = share_of(backends)
    writes = share.bytes_written
    assert await snapshot(svc, "snap-1", vid) == first
    assert share.bytes_written == writes
    with pytest.raises(AlreadyExists):
        await snapshot(svc, "snap-1", other)
    # A fresh controller (no memory) reads the source from the archive.
    fresh = ControllerService(backends)
    try:
        assert await snapshot(fresh, "snap-1", vid) == first
        with pytest.raises(AlreadyExists):
            await snapshot(fresh, "snap-1", other)
    finally:
        await fresh.aclose()


async def test_snapshot_dir_parameter(svc: ControllerService, backends: FakeBackends) -> None:
    vid = await volume(svc, "pvc-src")
    fill(share_of(backends), "pvc-src")
    snap = await snapshot(svc, "s2", vid, snapshotDir="/backups/k8s/")
    assert parse_snapshot_id(snap.snapshot_id).archive == "backups/k8s/s2.tar.gz"
    assert "backups/k8s/s2.tar.gz" in share_of(backends).files
    for params, code in (
        ({"snapshotDir": "pvc-src/inside"}, InvalidArgument),
        ({"snapshotDir": "../up"}, InvalidArgument),
        ({"bogus": "1"}, InvalidArgument),
        ({"SnapshotDir": "a", "snapshotdir": "b"}, InvalidArgument),
    ):
        with pytest.raises(code):
            await snapshot(svc, "s3", vid, **params)
    # Kubernetes' own keys are accepted.
    await snapshot(svc, "s4", vid, **{"csi.storage.k8s.io/volumesnapshot/name": "x"})


@pytest.mark.parametrize(
    ("name", "vid", "code"),
    [
        ("", "v1#nfs#srv#/export#pvc-src#delete", InvalidArgument),
        ("s", "", InvalidArgument),
        ("s", "garbage", NotFound),
        ("s", "v1#nfs#srv#/export#missing#delete", NotFound),
        ("../s", "v1#nfs#srv#/export#pvc-src#delete", InvalidArgument),
        (".hidden", "v1#nfs#srv#/export#pvc-src#delete", InvalidArgument),
        ("s", "v1#smb#srv#share#pvc-src#delete", InvalidArgument),  # no snapshotter secret
    ],
)
async def test_snapshot_rejects_and_writes_nothing(
    svc: ControllerService, backends: FakeBackends, name: str, vid: str, code: type[DriverError]
) -> None:
    await volume(svc, "pvc-src")
    share = share_of(backends)
    before = (set(share.dirs), set(share.files))
    with pytest.raises(code):
        await snapshot(svc, name, vid)
    assert (share.dirs, share.files) == before


async def test_snapshot_refuses_links_that_leave(
    svc: ControllerService, backends: FakeBackends
) -> None:
    vid, share = await filled_volume(svc, backends)
    share.links["pvc-src/a/evil"] = "../../pvc-other"
    with pytest.raises(FailedPrecondition, match="evil"):
        await snapshot(svc, "snap-x", vid)
    assert not [f for f in share.files if f.startswith(".snapshots/")]


async def test_failed_snapshot_leaves_no_archive_and_retry_works(
    svc: ControllerService, backends: FakeBackends
) -> None:
    vid, share = await filled_volume(svc, backends)

    async def fail_later() -> None:
        while share.bytes_written == 0:
            await asyncio.sleep(0)
        share.fail_next.append(Unavailable("server went away"))

    helper = asyncio.create_task(fail_later())
    with pytest.raises(Unavailable):
        await snapshot(svc, "snap-1", vid)
    await helper
    assert ".snapshots/snap-1.tar.gz" not in share.files
    assert ".snapshots/snap-1.tar.gz.partial" not in share.files
    snap = await snapshot(svc, "snap-1", vid)
    assert snap.ready_to_use


async def test_long_snapshot_is_not_ready_then_ready(
    svc: ControllerService, backends: FakeBackends
) -> None:
    vid, share = await filled_volume(svc, backends)
    share.hold_io = asyncio.Event()
    first = (await svc.CreateSnapshot(snap_req("slow", vid), Deadline())).snapshot
    assert not first.ready_to_use
    assert first.snapshot_id.endswith("slow.tar.gz#pvc-src#delete")
    # Deleting it meanwhile is refused, not half done.
    with pytest.raises(Aborted):
        await svc.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=first.snapshot_id), CTX)
    # Same name, other volume, while it runs: still a conflict.
    other = await volume(svc, "pvc-other")
    with pytest.raises(AlreadyExists):
        await svc.CreateSnapshot(snap_req("slow", other), Deadline())
    share.hold_io.set()
    share.hold_io = None
    done = (await svc.CreateSnapshot(snap_req("slow", vid), CTX)).snapshot
    assert done.ready_to_use
    assert done.snapshot_id == first.snapshot_id


async def test_shutdown_cancels_a_running_snapshot(backends: FakeBackends) -> None:
    service = ControllerService(backends)
    vid = await volume(service, "pvc-src")
    share = share_of(backends)
    fill(share, "pvc-src")
    share.hold_io = asyncio.Event()
    resp = await service.CreateSnapshot(snap_req("cut", vid), Deadline())
    assert not resp.snapshot.ready_to_use
    await service.aclose()
    assert not [f for f in share.files if f.startswith(".snapshots/")]
