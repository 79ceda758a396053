"""Clones (volume from volume), DeleteSnapshot and ListSnapshots."""

from __future__ import annotations

from typing import Any

import pytest

from controller.service import ControllerService
from controller.snapshot_id import SnapshotId
from driver.csi import csi_pb2
from driver.errors import (
    Aborted,
    AlreadyExists,
    DriverError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from tests.fakes.share import FakeBackends
from tests.unit.snapshots.support import (
    CTX,
    ROOT,
    fill,
    filled_volume,
    from_volume,
    share_of,
    snapshot,
    tree,
    volume,
)

# -- clones ------------------------------------------------------------------------


async def test_clone_is_identical(svc: ControllerService, backends: FakeBackends) -> None:
    vid, share = await filled_volume(svc, backends)
    resp = await svc.CreateVolume(from_volume("pvc-clone", vid), CTX)
    assert resp.volume.content_source.volume.volume_id == vid
    assert tree(share, "pvc-clone") == tree(share, "pvc-src")
    assert any(a[0] == "copy" for a in share.actions)  # the share copies, not us
    again = await svc.CreateVolume(from_volume("pvc-clone", vid), CTX)
    assert again.volume == resp.volume
    with pytest.raises(AlreadyExists):  # same name, other source
        await svc.CreateVolume(from_volume("pvc-clone", await volume(svc, "pvc-b")), CTX)


@pytest.mark.parametrize(
    ("name", "source", "code"),
    [
        ("pvc-c", "garbage", NotFound),
        ("pvc-c", "v1#nfs#srv#/export#missing#delete", NotFound),
        ("pvc-c", "v1#nfs#other#/export#pvc-src#delete", InvalidArgument),
        ("pvc-src", "v1#nfs#srv#/export#pvc-src#delete", InvalidArgument),
        ("pvc-c", "", InvalidArgument),
    ],
)
async def test_clone_rejects(
    svc: ControllerService, backends: FakeBackends, name: str, source: str, code: type[DriverError]
) -> None:
    await volume(svc, "pvc-src")
    share = share_of(backends)
    before = set(share.dirs)
    with pytest.raises(code):
        await svc.CreateVolume(from_volume(name, source), CTX)
    assert share.dirs == before


async def test_clone_refuses_links_that_leave(
    svc: ControllerService, backends: FakeBackends
) -> None:
    vid, share = await filled_volume(svc, backends)
    share.links["pvc-src/abs"] = "/etc/passwd"
    with pytest.raises(FailedPrecondition, match="abs"):
        await svc.CreateVolume(from_volume("pvc-clone", vid), CTX)
    assert "pvc-clone" not in share.dirs
    assert not [d for d in share.dirs if d.startswith(".csi-tmp-")]


# -- delete and list --------------------------------------------------------------------


async def test_delete_snapshot(svc: ControllerService, backends: FakeBackends) -> None:
    vid, share = await filled_volume(svc, backends)
    snap = await snapshot(svc, "snap-1", vid)
    req = csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id)
    await svc.DeleteSnapshot(req, CTX)
    assert ".snapshots/snap-1.tar.gz" not in share.files
    await svc.DeleteSnapshot(req, CTX)  # missing: success
    for bad in ("garbage", "s1#nfs#srv#/export#../x.tar.gz#pvc#delete"):
        await svc.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=bad), CTX)
    with pytest.raises(InvalidArgument):
        await svc.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(), CTX)
    # A file that is not one of our archives is left alone.
    share.files.add("pvc-other/data.tar.gz")
    share.dirs.add("pvc-other")
    share.contents["pvc-other/data.tar.gz"] = b"user data"
    sid = SnapshotId(ROOT, "pvc-other/data.tar.gz", "pvc-src", "delete")
    with pytest.raises(FailedPrecondition):
        await svc.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=sid.format()), CTX)
    assert share.contents["pvc-other/data.tar.gz"] == b"user data"


async def test_list_snapshots(svc: ControllerService, backends: FakeBackends) -> None:
    vid = await volume(svc, "pvc-src")
    other = await volume(svc, "pvc-other")
    share = share_of(backends)
    fill(share, "pvc-src", links=False)
    share.dirs.add("pvc-other")
    ids = sorted([(await snapshot(svc, f"s{i}", vid)).snapshot_id for i in range(5)])
    theirs = (await snapshot(svc, "theirs", other)).snapshot_id
    share.files.add(".snapshots/junk.tar.gz")  # not an archive: skipped
    share.contents[".snapshots/junk.tar.gz"] = b"junk"

    async def page(**kw: Any) -> csi_pb2.ListSnapshotsResponse:
        return await svc.ListSnapshots(csi_pb2.ListSnapshotsRequest(**kw), CTX)

    got: list[str] = []
    token = ""
    pages = 0
    while True:
        resp = await page(source_volume_id=vid, max_entries=2, starting_token=token)
        got += [e.snapshot.snapshot_id for e in resp.entries]
        pages += 1
        assert all(e.snapshot.ready_to_use and e.snapshot.size_bytes for e in resp.entries)
        token = resp.next_token
        if not token:
            break
    assert got == ids
    assert pages == 3
    everything = await page()
    assert {e.snapshot.snapshot_id for e in everything.entries} == {*ids, theirs}
    one = await page(snapshot_id=ids[2])
    assert [e.snapshot.snapshot_id for e in one.entries] == [ids[2]]
    assert one.entries[0].snapshot.source_volume_id == vid
    assert not (await page(snapshot_id="garbage")).entries
    assert not (await page(snapshot_id=ids[2].replace("s2.tar", "zz.tar"))).entries
    assert not (await page(snapshot_id=ids[2], source_volume_id=other)).entries
    with pytest.raises(Aborted):
        await page(starting_token="bogus")
    with pytest.raises(InvalidArgument):
        await page(max_entries=-1)
    # Deleted between pages: the next page still starts in the right place.
    resp = await page(source_volume_id=vid, max_entries=2)
    await svc.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=ids[2]), CTX)
    rest = await page(source_volume_id=vid, starting_token=resp.next_token)
    assert [e.snapshot.snapshot_id for e in rest.entries] == ids[3:]
