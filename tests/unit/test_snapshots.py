"""Snapshots, restores and clones: RPC logic against stateful fake shares.

The fake keeps bytes, symlinks and attributes, and records any path that
leaves the share or goes through a symlink, so the archive guards are
checked against what would really have been written.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller import archive
from controller.populate import temp_dir_for
from controller.service import ControllerService
from controller.share import Features, FileInfo
from controller.snapshot_id import SnapshotId, parse_snapshot_id
from controller.snapshots import decode_token, encode_token
from controller.tree import TreeGuard
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
from driver.source import Source
from tests.fakes.share import FakeBackends, FakeShare

AM = csi_pb2.VolumeCapability.AccessMode
CAP = csi_pb2.VolumeCapability(
    mount=csi_pb2.VolumeCapability.MountVolume(), access_mode=AM(mode=AM.MULTI_NODE_MULTI_WRITER)
)
NFS = "nfs://srv/export"
SHARE_KEY = "nfs://srv//export"
SMB_SECRETS = {"username": "alice", "password": "pw-123"}
CTX: Any = None
MTIME = 1_700_000_000_123_456_789


class Deadline:
    """A servicer context whose RPC deadline is (almost) over."""

    def time_remaining(self) -> float:
        return 0.2


@pytest.fixture
def backends() -> FakeBackends:
    return FakeBackends()


@pytest.fixture
async def svc(backends: FakeBackends) -> AsyncIterator[ControllerService]:
    service = ControllerService(backends)
    yield service
    await service.aclose()
    assert backends.all_escapes == []
    for share in backends.shares.values():
        assert not share.open_handles, "a file was left open"


def share_of(backends: FakeBackends, key: str = SHARE_KEY) -> FakeShare:
    return backends.share(key)


def create_req(name: str, source: str = NFS, **params: str) -> csi_pb2.CreateVolumeRequest:
    secrets = SMB_SECRETS if source.startswith("//") else {}
    return csi_pb2.CreateVolumeRequest(
        name=name,
        volume_capabilities=[CAP],
        parameters={"source": source, **params},
        secrets=secrets,
    )


def from_snapshot(name: str, snapshot_id: str, **params: str) -> csi_pb2.CreateVolumeRequest:
    req = create_req(name, **params)
    req.volume_content_source.snapshot.snapshot_id = snapshot_id
    return req


def from_volume(name: str, volume_id: str, **params: str) -> csi_pb2.CreateVolumeRequest:
    req = create_req(name, **params)
    req.volume_content_source.volume.volume_id = volume_id
    return req


def snap_req(name: str, volume_id: str, **params: str) -> csi_pb2.CreateSnapshotRequest:
    return csi_pb2.CreateSnapshotRequest(name=name, source_volume_id=volume_id, parameters=params)


def info(kind: str, mode: int, *, uid: int = 1000, gid: int = 100, offset: int = 0) -> FileInfo:
    return FileInfo(
        kind,  # type: ignore[arg-type]
        mtime_ns=MTIME + offset,
        atime_ns=MTIME - 5,
        mode=mode,
        uid=uid,
        gid=gid,
    )


def fill(share: FakeShare, root: str, *, links: bool = True) -> None:
    """A small tree: nested dirs, an empty dir, files (one empty, one > 1 MiB),
    odd modes, a symlink inside the tree."""
    for d, mode in (
        (root, 0o2770),
        (f"{root}/a", 0o750),
        (f"{root}/a/b", 0o555),
        (f"{root}/e", 0o700),
    ):
        share.dirs.add(d)
        share.attrs[d] = info("dir", mode, offset=len(d))
    files = {
        f"{root}/top.txt": b"hello\n",
        f"{root}/a/empty": b"",
        f"{root}/a/b/big.bin": bytes(range(256)) * 5000,  # > SMALL_FILE
        f"{root}/a/b/ro.txt": b"read only",
    }
    for i in range(30):
        files[f"{root}/a/n{i:02d}"] = f"file {i}".encode() * i
    for path, data in files.items():
        share.files.add(path)
        share.contents[path] = data
        share.attrs[path] = info("file", 0o444 if path.endswith("ro.txt") else 0o640, uid=7)
    if links:
        share.links[f"{root}/a/ln"] = "../top.txt"
        share.links[f"{root}/a/b/up"] = "../n01"


def tree(share: FakeShare, root: str) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for path in sorted(share._under(root)):
        rel = path[len(root) :]
        got = share.info(path)
        assert got is not None
        if got.kind == "symlink":
            out[rel] = ("symlink", share.links[path])
        elif got.kind == "file":
            out[rel] = ("file", share.contents[path], got.mode, got.mtime_ns, got.uid, got.gid)
        else:
            out[rel] = ("dir", got.mode, got.mtime_ns, got.uid, got.gid)
    return out


async def volume(svc: ControllerService, name: str, source: str = NFS) -> str:
    return (await svc.CreateVolume(create_req(name, source), CTX)).volume.volume_id


async def snapshot(svc: ControllerService, name: str, vid: str, **params: str) -> csi_pb2.Snapshot:
    return (await svc.CreateSnapshot(snap_req(name, vid, **params), CTX)).snapshot


# -- snapshot IDs --------------------------------------------------------------

ROOT = Source("nfs", "srv", None, "/export")


def test_snapshot_id_format_and_source_volume() -> None:
    sid = SnapshotId(ROOT, ".snapshots/s1.tar.gz", "pvc-1", "retain", (("vers", "3"),))
    text = sid.format()
    assert text == "s1#nfs#srv#/export#.snapshots/s1.tar.gz#pvc-1#retain#vers=3"
    assert parse_snapshot_id(text) == sid
    assert sid.name == "s1"
    assert sid.area == ".snapshots"
    assert sid.source_volume().format() == "v1#nfs#srv#/export#pvc-1#retain#vers=3"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "v1#nfs#srv#/export#pvc#delete",
        "s1#nfs#srv#/export#../x.tar.gz#pvc#delete",
        "s1#nfs#srv#/export#/abs.tar.gz#pvc#delete",
        "s1#nfs#srv#/export#a/../../x.tar.gz#pvc#delete",
        "s1#nfs#srv#/export#s.zip#pvc#delete",
        "s1#nfs#srv#/export#.tar.gz#pvc#delete",
        "s1#nfs#srv#/export#pvc/s.tar.gz#pvc#delete",  # inside its source volume
        "s1#nfs#srv#/export#s.tar.gz#..#delete",
        "s1#nfs#srv#/export#s.tar.gz#pvc#never",
        "s1#smb#srv#sh%2Fare#s.tar.gz#pvc#delete",
        "s1#nfs#srv#/export#s%2Etar.gz#pvc#delete",  # not canonical
        "s1#nfs#srv:2049#/export#s.tar.gz#pvc#delete#x",
        "s1#nfs#srv#/export#a%5Cb.tar.gz#pvc#delete",
        "s1#nfs#srv#/export#a%00.tar.gz#pvc#delete",
    ],
)
def test_snapshot_id_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_snapshot_id(text)


_part = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 ._#%-]{0,12}[A-Za-z0-9]", fullmatch=True)


@given(
    area=st.lists(_part, max_size=3),
    name=_part,
    source=st.lists(_part, min_size=1, max_size=3),
    on_delete=st.sampled_from(["delete", "retain", "archive"]),
)
def test_snapshot_id_roundtrip(
    area: list[str], name: str, source: list[str], on_delete: Any
) -> None:
    archive_path = "/".join([*area, name + ".tar.gz"])
    source_dir = "/".join(source)
    try:
        sid = SnapshotId(ROOT, archive_path, source_dir, on_delete)
    except InvalidArgument:
        return  # e.g. the archive lies inside the source volume
    assert parse_snapshot_id(sid.format()) == sid


def test_page_tokens() -> None:
    sid = SnapshotId(ROOT, ".snapshots/s.tar.gz", "pvc").format()
    assert decode_token(encode_token(sid)) == sid
    for bad in ("x", "n1.", "n1.!!!", "n1." + "Z2FyYmFnZQ=="):
        with pytest.raises(Aborted):
            decode_token(bad)


# -- the guard -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a//b", "a\\b", "a/./b"])
def test_guard_refuses_member_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        TreeGuard(InvalidArgument, "t").member_path(name)


def test_guard_normalises_member_names() -> None:
    guard = TreeGuard(InvalidArgument, "t")
    assert guard.member_path("./a/b/") == "a/b"
    assert guard.member_path(".") == ""
    assert guard.member_path("./") == ""


def test_guard_links() -> None:
    guard = TreeGuard(InvalidArgument, "t")
    guard.admit("d", "dir")
    guard.link("d/ok", "../x")
    for rel, target in (("esc", "../x"), ("abs", "/etc"), ("d/up", "../../x")):
        with pytest.raises(InvalidArgument):
            guard.link(rel, target)
    guard.admit("ln", "symlink")
    guard.link("ln", "d")
    with pytest.raises(InvalidArgument, match="below"):
        guard.admit("ln/file", "file")  # would write through the link
    with pytest.raises(InvalidArgument, match="twice"):
        guard.admit("ln", "file")  # would follow the link when written
    guard.check_links()


def test_guard_resolves_links_through_links() -> None:
    guard = TreeGuard(InvalidArgument, "t")
    guard.link("a", ".")  # harmless alone
    guard.link("b", "a/..")  # harmless alone lexically; a/.. is the parent
    with pytest.raises(InvalidArgument, match="leaves"):
        guard.check_links()
    loop = TreeGuard(InvalidArgument, "t")
    loop.link("x", "y")
    loop.link("y", "x")
    with pytest.raises(InvalidArgument, match="levels"):
        loop.check_links()


def test_global_header_parser() -> None:
    meta = archive.meta_for(source_volume_id="v1#nfs#s#/e#p#delete", name="n", created_ns=MTIME)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT, pax_headers=meta):
        pass
    parsed = archive.global_header(buf.getvalue())
    assert {k: v for k, v in parsed.items() if k.startswith(archive.META_PREFIX)} == meta
    assert archive.global_header(b"") == {}
    assert archive.global_header(b"x" * 1024) == {}


# -- CreateSnapshot + restore ------------------------------------------------------


async def test_snapshot_restore_is_identical(
    svc: ControllerService, backends: FakeBackends
) -> None:
    vid = await volume(svc, "pvc-src")
    share = share_of(backends)
    fill(share, "pvc-src")
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
    vid = await volume(svc, "pvc-src")
    share = share_of(backends)
    fill(share, "pvc-src")
    share.links["pvc-src/a/evil"] = "../../pvc-other"
    with pytest.raises(FailedPrecondition, match="evil"):
        await snapshot(svc, "snap-x", vid)
    assert not [f for f in share.files if f.startswith(".snapshots/")]


async def test_failed_snapshot_leaves_no_archive_and_retry_works(
    svc: ControllerService, backends: FakeBackends
) -> None:
    vid = await volume(svc, "pvc-src")
    share = share_of(backends)
    fill(share, "pvc-src")

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
    vid = await volume(svc, "pvc-src")
    share = share_of(backends)
    fill(share, "pvc-src")
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
    vid = await volume(svc, "pvc-src")
    share = share_of(backends)
    fill(share, "pvc-src")
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
    vid = await volume(svc, "pvc-src")
    share = share_of(backends)
    fill(share, "pvc-src")
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
    vid = await volume(svc, "pvc-src")
    share = share_of(backends)
    fill(share, "pvc-src")
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


# -- clones ------------------------------------------------------------------------


async def test_clone_is_identical(svc: ControllerService, backends: FakeBackends) -> None:
    vid = await volume(svc, "pvc-src")
    share = share_of(backends)
    fill(share, "pvc-src")
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
    vid = await volume(svc, "pvc-src")
    share = share_of(backends)
    fill(share, "pvc-src")
    share.links["pvc-src/abs"] = "/etc/passwd"
    with pytest.raises(FailedPrecondition, match="abs"):
        await svc.CreateVolume(from_volume("pvc-clone", vid), CTX)
    assert "pvc-clone" not in share.dirs
    assert not [d for d in share.dirs if d.startswith(".csi-tmp-")]


# -- delete and list --------------------------------------------------------------------


async def test_delete_snapshot(svc: ControllerService, backends: FakeBackends) -> None:
    vid = await volume(svc, "pvc-src")
    share = share_of(backends)
    fill(share, "pvc-src")
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
