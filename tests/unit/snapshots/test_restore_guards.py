"""Restoring crafted, damaged or foreign archives (refused, nothing created);
failed and long restores, permissions."""

from __future__ import annotations

import asyncio
import io
import tarfile

import pytest

from controller.populate import temp_dir_for
from controller.service import ControllerService
from controller.share import Features
from controller.snapshot_id import SnapshotId
from driver.errors import (
    Aborted,
    DriverError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from driver.source import Source
from tests.fakes.share import FakeBackends, FakeShare
from tests.unit.snapshots.support import (
    CTX,
    ROOT,
    Deadline,
    create_req,
    filled_volume,
    from_snapshot,
    share_of,
    snapshot,
    tree,
    volume,
)

# -- restore guards ------------------------------------------------------------------


def build_archive(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
            else:
                tar.addfile(ti)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return ti


def plant(share: FakeShare, name: str, data: bytes) -> str:
    share.dirs.add(".snapshots")
    path = f".snapshots/{name}.tar.gz"
    share.files.add(path)
    share.contents[path] = data
    return SnapshotId(ROOT, path, "pvc-src", "delete").format()


EVIL: dict[str, list[tuple[tarfile.TarInfo, bytes | None]]] = {
    "dotdot": [(member("ok.txt"), b"fine"), (member("../escape.txt"), b"x")],
    "nested-dotdot": [(member("a/../../escape.txt"), b"x")],
    "absolute": [(member("ok.txt"), b"fine"), (member("/etc/evil"), b"x")],
    "link-out": [(member("ln", tarfile.SYMTYPE, "../../etc"), None)],
    "link-absolute": [(member("ln", tarfile.SYMTYPE, "/etc/passwd"), None)],
    "write-through-link": [
        (member("ln", tarfile.SYMTYPE, "sub"), None),
        (member("ln/file"), b"x"),
    ],
    "file-over-link": [(member("ln", tarfile.SYMTYPE, "sub"), None), (member("ln"), b"x")],
    "link-pair": [
        (member("a", tarfile.SYMTYPE, "."), None),
        (member("b", tarfile.SYMTYPE, "a/.."), None),
    ],
    "hardlink-out": [(member("h", tarfile.LNKTYPE, "../outside"), None)],
    "hardlink-unknown": [(member("h", tarfile.LNKTYPE, "nope"), None)],
    "device": [(member("dev", tarfile.CHRTYPE), None)],
    "fifo": [(member("fifo", tarfile.FIFOTYPE), None)],
    "root-file": [(member("."), b"x")],
}


@pytest.mark.parametrize("case", sorted(EVIL))
async def test_crafted_archives_are_refused_and_create_nothing(
    svc: ControllerService, backends: FakeBackends, case: str
) -> None:
    await volume(svc, "pvc-src")
    share = share_of(backends)
    sid = plant(share, case, build_archive(EVIL[case]))
    before = (set(share.dirs), set(share.files), dict(share.links))
    with pytest.raises(InvalidArgument, match="refused"):
        await svc.CreateVolume(from_snapshot("pvc-new", sid), CTX)
    assert (share.dirs, share.files, share.links) == before
    assert share.escapes == []


async def test_damaged_archive_creates_nothing(
    svc: ControllerService, backends: FakeBackends
) -> None:
    await volume(svc, "pvc-src")
    share = share_of(backends)
    good = build_archive([(member("a.txt"), b"x" * 100_000)])
    for case, data in (("garbage", b"not a tar.gz at all"), ("cut", good[: len(good) // 2])):
        sid = plant(share, case, data)
        with pytest.raises(FailedPrecondition, match="damaged"):
            await svc.CreateVolume(from_snapshot(f"pvc-{case}", sid), CTX)
        assert f"pvc-{case}" not in share.dirs
        assert not [d for d in share.dirs if d.startswith(".csi-tmp-")]


async def test_foreign_archive_without_parent_entries(
    svc: ControllerService, backends: FakeBackends
) -> None:
    await volume(svc, "pvc-src")
    share = share_of(backends)
    sid = plant(
        share,
        "plain",
        build_archive(
            [
                (member("deep/er/file.txt"), b"data"),
                (member("deep/er/hard", tarfile.LNKTYPE, "deep/er/file.txt"), None),
                (member("./deep/ok", tarfile.SYMTYPE, "er/file.txt"), None),
            ]
        ),
    )
    await svc.CreateVolume(from_snapshot("pvc-new", sid), CTX)
    assert share.contents["pvc-new/deep/er/file.txt"] == b"data"
    assert share.contents["pvc-new/deep/er/hard"] == b"data"
    assert share.links["pvc-new/deep/ok"] == "er/file.txt"


async def test_smb_share_refuses_symlinks_in_archive(
    svc: ControllerService, backends: FakeBackends
) -> None:
    smb = backends.share("smb://srv/share")
    smb.features = Features(symlinks=False, modes=False, owners=False, server_copy=True)
    await volume(svc, "pvc-src", "//srv/share")
    smb.dirs.add(".snapshots")
    smb.files.add(".snapshots/l.tar.gz")
    smb.contents[".snapshots/l.tar.gz"] = build_archive(
        [(member("ln", tarfile.SYMTYPE, "x"), None)]
    )
    sid = SnapshotId(Source("smb", "srv", None, "share"), ".snapshots/l.tar.gz", "pvc-src").format()
    req = create_req("pvc-new", "//srv/share")
    req.volume_content_source.snapshot.snapshot_id = sid
    with pytest.raises(InvalidArgument, match="symlink"):
        await svc.CreateVolume(req, CTX)
    assert "pvc-new" not in smb.dirs


async def test_failed_restore_is_cleaned_and_retried(
    svc: ControllerService, backends: FakeBackends
) -> None:
    vid, share = await filled_volume(svc, backends)
    snap = await snapshot(svc, "snap-1", vid)
    # A previous attempt's leftovers are cleaned before the restore.
    tmp = temp_dir_for("pvc-new")
    share.dirs.add(tmp)
    share.files.add(f"{tmp}/stale")
    share.contents[f"{tmp}/stale"] = b"old"

    async def fail_later() -> None:
        while not any(a[0] == "open_write" and a[1].startswith(tmp) for a in share.actions):
            await asyncio.sleep(0)
        share.fail_next.append(Unavailable("server went away"))

    helper = asyncio.create_task(fail_later())
    with pytest.raises(Unavailable):
        await svc.CreateVolume(from_snapshot("pvc-new", snap.snapshot_id), CTX)
    await helper
    assert "pvc-new" not in share.dirs
    assert tmp not in share.dirs
    await svc.CreateVolume(from_snapshot("pvc-new", snap.snapshot_id), CTX)
    assert tree(share, "pvc-new") == tree(share, "pvc-src")
    assert "pvc-new/stale" not in share.files


async def test_long_restore_is_aborted_then_joined(
    svc: ControllerService, backends: FakeBackends
) -> None:
    vid, share = await filled_volume(svc, backends)
    snap = await snapshot(svc, "snap-1", vid)
    share.hold_io = asyncio.Event()
    with pytest.raises(Aborted, match="still running"):
        await svc.CreateVolume(from_snapshot("pvc-new", snap.snapshot_id), Deadline())
    waiting = asyncio.create_task(svc.CreateVolume(from_snapshot("pvc-new", snap.snapshot_id), CTX))
    await asyncio.sleep(0)
    share.hold_io.set()
    share.hold_io = None
    resp = await waiting
    assert resp.volume.volume_id.endswith("#pvc-new#delete")
    assert tree(share, "pvc-new") == tree(share, "pvc-src")


async def test_restore_applies_mount_permissions(
    svc: ControllerService, backends: FakeBackends
) -> None:
    vid, share = await filled_volume(svc, backends)
    snap = await snapshot(svc, "snap-1", vid)
    await svc.CreateVolume(from_snapshot("pvc-new", snap.snapshot_id, mountPermissions="0771"), CTX)
    assert share.modes["pvc-new"] == 0o771
    assert share.modes["pvc-new/a"] == 0o750


@pytest.mark.parametrize(
    ("snapshot_id", "code"),
    [
        ("garbage", NotFound),
        ("s1#nfs#srv#/export#.snapshots/none.tar.gz#pvc-src#delete", NotFound),
        ("s1#nfs#other#/export#.snapshots/x.tar.gz#pvc-src#delete", InvalidArgument),
        ("s1#nfs#srv#/elsewhere#.snapshots/x.tar.gz#pvc-src#delete", InvalidArgument),
        ("s1#nfs#srv#/export#pvc-new/x.tar.gz#pvc-src#delete", InvalidArgument),
        ("", InvalidArgument),
    ],
)
async def test_restore_rejects(
    svc: ControllerService, backends: FakeBackends, snapshot_id: str, code: type[DriverError]
) -> None:
    await volume(svc, "pvc-src")
    share = share_of(backends)
    before = set(share.dirs)
    with pytest.raises(code):
        await svc.CreateVolume(from_snapshot("pvc-new", snapshot_id), CTX)
    assert share.dirs == before
