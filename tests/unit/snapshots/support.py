"""Snapshot tests' vocabulary: requests, a sample tree on a fake share, and what it holds.

The fake keeps bytes, symlinks and attributes, and records any path that
leaves the share or goes through a symlink, so the archive guards are
checked against what would really have been written.
"""

from __future__ import annotations

from typing import Any

from controller.service import ControllerService
from controller.share import FileInfo
from driver.csi import csi_pb2
from driver.source import Source
from tests.csi_requests import cap
from tests.fakes.share import FakeBackends, FakeShare

CAP = cap()
NFS = "nfs://srv/export"
SHARE_KEY = "nfs://srv//export"
SMB_SECRETS = {"username": "alice", "password": "pw-123"}
CTX: Any = None
MTIME = 1_700_000_000_123_456_789


class Deadline:
    """A servicer context whose RPC deadline is (almost) over."""

    def time_remaining(self) -> float:
        return 0.2


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


ROOT = Source("nfs", "srv", None, "/export")


async def filled_volume(
    svc: ControllerService, backends: FakeBackends, name: str = "pvc-src"
) -> tuple[str, FakeShare]:
    """A volume holding the sample tree (:func:`fill`): its ID and its share."""
    vid = await volume(svc, name)
    share = share_of(backends)
    fill(share, name)
    return vid, share
