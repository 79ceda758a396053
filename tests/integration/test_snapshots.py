"""Snapshots, restores and clones through a real gRPC socket, against the
session's Samba and nfs-ganesha (NFSv4 on loopback, NFSv3 in its private
network namespace).

Every test works in a base directory of its own.  What is compared is what
lands on the servers' disks: bytes, names, empty directories, symlinks
(NFS), modes, owners and times as far as the protocol keeps them.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import pwd
import stat
import sys
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller.params import default_snapshot_area
from controller.snapshot_id import SnapshotId
from driver import paths
from driver.csi import csi_pb2
from driver.volume_id import parse_volume_id
from tests.csi_requests import cap
from tests.harness import ROOT, Client, expect_code, running_controller, wait_until
from tests.servers.ganesha import GaneshaServer
from tests.servers.plugin import SMB_WRITER
from tests.servers.samba import SambaServer

pytestmark = pytest.mark.integration

AM = csi_pb2.VolumeCapability.AccessMode
BASE_TIME = 1_600_000_000_123_456_789
BIG = 3 << 20


@dataclass
class Target:
    """One protocol's share, seen through the driver and on the server's disk."""

    kind: str  # smb, nfs4, nfs3
    root: Path  # the share's directory on disk
    source: str  # the StorageClass source (share + base)
    base: str  # the base directory (relative to the share root)
    flags: tuple[str, ...] = ()
    secrets: dict[str, str] | None = None
    samba: SambaServer | None = None
    ganesha: GaneshaServer | None = None

    @property
    def nfs(self) -> bool:
        return self.kind != "smb"

    def disk(self, rel: str = "") -> Path:
        return self.root / self.base / rel if rel else self.root / self.base

    def create(self, name: str, **params: str) -> csi_pb2.CreateVolumeRequest:
        return csi_pb2.CreateVolumeRequest(
            name=name,
            volume_capabilities=[cap(*self.flags)],
            parameters={"source": self.source, **params},
            secrets=self.secrets or {},
        )

    def from_snapshot(self, name: str, snapshot_id: str) -> csi_pb2.CreateVolumeRequest:
        req = self.create(name)
        req.volume_content_source.snapshot.snapshot_id = snapshot_id
        return req

    def from_volume(self, name: str, volume_id: str) -> csi_pb2.CreateVolumeRequest:
        req = self.create(name)
        req.volume_content_source.volume.volume_id = volume_id
        return req

    def snapshot(self, name: str, volume_id: str) -> csi_pb2.CreateSnapshotRequest:
        return csi_pb2.CreateSnapshotRequest(
            name=name, source_volume_id=volume_id, secrets=self.secrets or {}
        )

    def restart(self) -> None:
        if self.samba is not None:
            self.samba.start()
        elif self.ganesha is not None:
            self.ganesha.start()

    def kill(self) -> None:
        if self.samba is not None:
            self.samba.kill()
        elif self.ganesha is not None:
            self.ganesha.kill()


def _smb_target(samba: SambaServer) -> Target:
    base = f"snap-{uuid.uuid4().hex[:8]}"
    return Target(
        "smb",
        samba.share_path("csi"),
        f"//{samba.host}:{samba.port}/csi/{base}",
        base,
        secrets={"username": SMB_WRITER, "password": samba.password(SMB_WRITER)},
        samba=samba,
    )


def _nfs_target(server: GaneshaServer, version: str) -> Target:
    base = f"snap-{uuid.uuid4().hex[:8]}"
    if version == "3":
        source, flags = f"{server.host}:{server.export}/{base}", ("nfsvers=3",)
    else:
        source = f"nfs://{server.host}:{server.port}{server.pseudo_path}/{base}"
        flags = ("nfsvers=4.1",)
    kind = f"nfs{version}"
    return Target(kind, server.export_path, source, base, flags, ganesha=server)


def _smb_base(t: Target) -> None:
    """The base directory, owned by the SMB user (smbd acts as that user)."""
    t.disk().mkdir()
    owner = pwd.getpwnam(SMB_WRITER)
    os.chown(t.disk(), owner.pw_uid, owner.pw_gid)


@pytest.fixture(params=["smb", "nfs4", "nfs3"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    if request.param == "smb":
        t = _smb_target(request.getfixturevalue("samba"))
        _smb_base(t)
        yield t
        return
    server: GaneshaServer = request.getfixturevalue(f"ganesha_v{request.param[-1]}")
    t = _nfs_target(server, request.param[-1])
    t.disk().mkdir()
    with server.client_netns():  # v3: this thread's sockets open in the server's netns
        yield t


@pytest.fixture(params=["smb", "nfs4"])
def fast_target(request: pytest.FixtureRequest) -> Target:
    """SMB and NFSv4 only: for the tests that do not depend on the version."""
    if request.param == "smb":
        t = _smb_target(request.getfixturevalue("samba"))
        _smb_base(t)
    else:
        t = _nfs_target(request.getfixturevalue("ganesha_v4"), "4")
        t.disk().mkdir()
    return t


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    async with running_controller(tmp_path / "csi.sock", backend_timeout=5) as (_, c):
        yield c


# -- trees on disk ------------------------------------------------------------------


def populate(root: Path, t: Target) -> None:
    """Nested and empty directories, empty/small/large files, odd modes,
    symlinks (which Samba resolves on the server), fixed times."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "top.txt").write_text("hello\n")
    (root / "a" / "nothing").write_bytes(b"")
    (root / "a" / "b" / "big.bin").write_bytes(os.urandom(BIG))
    (root / "a" / "b" / "ro.txt").write_text("read only")
    for i in range(20):
        (root / "a" / f"n{i:02d}.txt").write_text(f"file {i}\n" * i)
    os.symlink("../top.txt", root / "a" / "ln")
    if t.nfs:
        os.symlink("b/big.bin", root / "a" / "biglink")
        os.symlink("..", root / "a" / "b" / "up")
        os.chown(root / "a" / "n01.txt", 1234, 4321)
        os.chmod(root / "a", 0o750)  # noqa: S103 - modes under test
        os.chmod(root / "a" / "b", 0o2775)  # noqa: S103 - modes under test
        os.chmod(root / "a" / "n02.txt", 0o600)
    os.chmod(root / "a" / "b" / "ro.txt", 0o444)
    if not t.nfs:
        owner = pwd.getpwnam(SMB_WRITER)
        for p in [root, *root.rglob("*")]:
            os.lchown(p, owner.pw_uid, owner.pw_gid)
    # Times last, deepest first, so nothing changes them afterwards.
    entries = sorted([root, *root.rglob("*")], key=lambda p: -len(p.parts))
    for i, p in enumerate(entries):
        if not p.is_symlink():
            ns = BASE_TIME + i * 1_000_000_007
            os.utime(p, ns=(ns, ns))


def picture(root: Path, t: Target) -> dict[str, tuple[object, ...]]:
    """What must survive a snapshot and restore, or a clone."""
    unit = 1000 if t.kind in ("smb", "nfs3") else 1  # SMB listings, NFSv3 utimes: µs
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in ["", *dirnames, *filenames]:
            path = Path(dirpath) / name if name else Path(dirpath)
            if not name and path != root:
                continue
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
                continue
            mtime: int | None = st.st_mtime_ns // unit
            if t.nfs and path == root:
                # The volume's root was made over NFS and nfs-ganesha caches
                # its attributes: it does not see populate()'s local utime.
                mtime = None
            if stat.S_ISDIR(st.st_mode):
                item: tuple[object, ...] = ("dir", mtime)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                item = ("file", digest, st.st_size, mtime)
            if t.nfs:
                item += (oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid)
            elif not stat.S_ISDIR(st.st_mode):
                item += (bool(st.st_mode & stat.S_IWUSR),)  # the DOS read-only attribute
            out[rel] = item
    return out


# -- tests ------------------------------------------------------------------------------


async def test_snapshot_restore_and_clone_are_identical(client: Client, target: Target) -> None:
    c, t = client, target
    vol = (await c.controller.CreateVolume(t.create("pvc-src"))).volume
    src = t.disk("pvc-src")
    populate(src, t)
    expected = picture(src, t)

    snap = (await c.controller.CreateSnapshot(t.snapshot("snap-1", vol.volume_id))).snapshot
    assert snap.ready_to_use
    assert snap.source_volume_id == vol.volume_id
    archive = t.disk(".snapshots/snap-1.tar.gz")
    assert snap.size_bytes == archive.stat().st_size
    assert not t.disk(".snapshots/snap-1.tar.gz.partial").exists()
    with tarfile.open(archive) as tar:  # a plain tar.gz any tool can read
        members = {m.name: m for m in tar.getmembers()}
    assert members["a/b/big.bin"].size == BIG
    # Samba resolves symlinks on the server: there, the link's target is archived.
    assert members["a/ln"].issym() == t.nfs

    restored = (
        await c.controller.CreateVolume(t.from_snapshot("pvc-restored", snap.snapshot_id))
    ).volume
    assert restored.content_source.snapshot.snapshot_id == snap.snapshot_id
    got = picture(t.disk("pvc-restored"), t)
    if not t.nfs:
        # Samba resolved the link: it came back as a copy of its target.
        link = got.pop("a/ln")
        assert link[:3] == ("file", *got["top.txt"][1:3])
        expected.pop("a/ln")
    assert got == expected

    clone = (await c.controller.CreateVolume(t.from_volume("pvc-clone", vol.volume_id))).volume
    assert clone.content_source.volume.volume_id == vol.volume_id
    got = picture(t.disk("pvc-clone"), t)
    if not t.nfs:
        assert got.pop("a/ln")[0] == "file"
    assert got == expected
    assert not [p for p in t.disk().iterdir() if p.name.startswith(".csi-tmp-")]

    # Retries of finished requests: same answers, nothing rewritten.
    before = archive.stat().st_mtime_ns
    again = (await c.controller.CreateSnapshot(t.snapshot("snap-1", vol.volume_id))).snapshot
    assert again == snap
    assert archive.stat().st_mtime_ns == before
    assert (
        await c.controller.CreateVolume(t.from_snapshot("pvc-restored", snap.snapshot_id))
    ).volume == restored


async def test_clone_of_1000_files(client: Client, fast_target: Target) -> None:
    c, t = client, fast_target
    vol = (await c.controller.CreateVolume(t.create("pvc-many"))).volume
    src = t.disk("pvc-many")
    for d in range(10):
        (src / f"d{d}").mkdir()
        for f in range(100):
            (src / f"d{d}" / f"f{f:03d}").write_bytes(f"{d}/{f}".encode() * (f + 1))
    if not t.nfs:
        owner = pwd.getpwnam(SMB_WRITER)
        for p in [src, *src.rglob("*")]:
            os.chown(p, owner.pw_uid, owner.pw_gid)
    await c.controller.CreateVolume(t.from_volume("pvc-many-clone", vol.volume_id))
    dst = t.disk("pvc-many-clone")
    files = sorted(p.relative_to(dst) for p in dst.rglob("*") if p.is_file())
    assert len(files) == 1000
    assert files == sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    for rel in files[::37]:
        assert (dst / rel).read_bytes() == (src / rel).read_bytes()


def _craft(members: list[tuple[str, bytes, str | bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in members:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            if kind == tarfile.SYMTYPE:
                assert isinstance(payload, str)
                ti.linkname = payload
                tar.addfile(ti)
            else:
                assert isinstance(payload, bytes)
                ti.size = len(payload)
                tar.addfile(ti, io.BytesIO(payload))
    return buf.getvalue()


CRAFTED = {
    "dotdot": [("ok.txt", tarfile.REGTYPE, b"fine"), ("../escape.txt", tarfile.REGTYPE, b"x")],
    "absolute": [
        ("ok.txt", tarfile.REGTYPE, b"fine"),
        ("/tmp/csi-abs-escape", tarfile.REGTYPE, b"x"),
    ],
    "link-out": [("ln", tarfile.SYMTYPE, "../../escape-dir")],
    "through-link": [("ln", tarfile.SYMTYPE, "."), ("ln/../escape.txt", tarfile.REGTYPE, b"x")],
    "link-abs": [("ok.txt", tarfile.REGTYPE, b"fine"), ("ln", tarfile.SYMTYPE, "/etc/passwd")],
}


async def test_crafted_archives_are_refused(client: Client, fast_target: Target) -> None:
    c, t = client, fast_target
    vol = (await c.controller.CreateVolume(t.create("pvc-src"))).volume
    area = t.disk(".snapshots")
    area.mkdir()
    vid = parse_volume_id(vol.volume_id)
    for case, members in CRAFTED.items():
        (area / f"{case}.tar.gz").write_bytes(_craft(members))
        archive = paths.join(default_snapshot_area(vid.dir), f"{case}.tar.gz")
        sid = SnapshotId(vid.source, archive, vid.dir, vid.on_delete, vid.options).format()
        before = sorted(p.name for p in t.disk().iterdir())
        details = await expect_code(
            c.controller.CreateVolume(t.from_snapshot(f"pvc-{case}", sid)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "refused" in details, details
        assert sorted(p.name for p in t.disk().iterdir()) == before, case
        assert not (t.root / "escape.txt").exists()
        assert not t.disk("escape.txt").exists()
        assert not Path("/tmp/csi-abs-escape").exists()


async def test_server_killed_during_snapshot(client: Client, fast_target: Target) -> None:
    c, t = client, fast_target
    vol = (await c.controller.CreateVolume(t.create("pvc-big"))).volume
    src = t.disk("pvc-big")
    for i in range(3):
        (src / f"r{i}.bin").write_bytes(os.urandom(8 << 20))
    if not t.nfs:
        owner = pwd.getpwnam(SMB_WRITER)
        for p in [src, *src.iterdir()]:
            os.chown(p, owner.pw_uid, owner.pw_gid)
    final = t.disk(".snapshots/snap-k.tar.gz")
    partial = t.disk(".snapshots/snap-k.tar.gz.partial")
    call = c.controller.CreateSnapshot(t.snapshot("snap-k", vol.volume_id))

    def half_written() -> bool:
        return partial.exists() and partial.stat().st_size > (1 << 20)

    try:
        await wait_until(half_written, timeout=30)
        t.kill()
        await expect_code(
            call,
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.INTERNAL,
        )
        assert not final.exists()
    finally:
        t.restart()
    snap = (await c.controller.CreateSnapshot(t.snapshot("snap-k", vol.volume_id))).snapshot
    assert snap.ready_to_use
    assert final.exists()
    assert not partial.exists()
    with tarfile.open(final) as tar:
        for i in range(3):
            data = tar.extractfile(f"r{i}.bin")
            assert data is not None
            assert data.read() == (src / f"r{i}.bin").read_bytes()


async def test_delete_and_list(client: Client, fast_target: Target) -> None:
    c, t = client, fast_target
    vol = (await c.controller.CreateVolume(t.create("pvc-l"))).volume
    (t.disk("pvc-l") / "f.txt").write_text("x")
    if not t.nfs:
        os.chown(t.disk("pvc-l") / "f.txt", pwd.getpwnam(SMB_WRITER).pw_uid, -1)
    ids = sorted(
        [
            (
                await c.controller.CreateSnapshot(t.snapshot(f"s{i}", vol.volume_id))
            ).snapshot.snapshot_id
            for i in range(3)
        ]
    )
    secrets = t.secrets or {}
    first = await c.controller.ListSnapshots(
        csi_pb2.ListSnapshotsRequest(source_volume_id=vol.volume_id, max_entries=2, secrets=secrets)
    )
    assert [e.snapshot.snapshot_id for e in first.entries] == ids[:2]
    assert first.next_token
    second = await c.controller.ListSnapshots(
        csi_pb2.ListSnapshotsRequest(
            source_volume_id=vol.volume_id, starting_token=first.next_token, secrets=secrets
        )
    )
    assert [e.snapshot.snapshot_id for e in second.entries] == ids[2:]
    assert not second.next_token
    await expect_code(
        c.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(starting_token="nope")),
        grpc.StatusCode.ABORTED,
    )
    by_id = await c.controller.ListSnapshots(
        csi_pb2.ListSnapshotsRequest(snapshot_id=ids[1], secrets=secrets)
    )
    assert [e.snapshot.source_volume_id for e in by_id.entries] == [vol.volume_id]

    delete = csi_pb2.DeleteSnapshotRequest(snapshot_id=ids[0], secrets=secrets)
    await c.controller.DeleteSnapshot(delete)
    assert not t.disk(".snapshots/s0.tar.gz").exists()
    await c.controller.DeleteSnapshot(delete)  # missing: success
    await c.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id="s1#garbage"))
    after = await c.controller.ListSnapshots(
        csi_pb2.ListSnapshotsRequest(source_volume_id=vol.volume_id, secrets=secrets)
    )
    assert [e.snapshot.snapshot_id for e in after.entries] == ids[1:]


async def _ctl(endpoint: str, *args: str) -> Any:
    """``csi-smb-nfs ctl`` as a subprocess (without blocking the loop that
    serves the driver in this process)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "driver",
        "ctl",
        "--endpoint",
        endpoint,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def test_ctl_commands(tmp_path: Path, ganesha_v4: GaneshaServer) -> None:
    t = _nfs_target(ganesha_v4, "4")
    t.disk().mkdir()
    sock = tmp_path / "csi.sock"
    async with running_controller(sock, backend_timeout=5):
        ep = f"unix://{sock}"
        common = ["--param", f"source={t.source}", "--mount-option", "nfsvers=4.1"]
        vid = (await _ctl(ep, "create-volume", "pvc-ctl", *common))["volume"]["volume_id"]
        (t.disk("pvc-ctl") / "data.txt").write_text("from ctl")
        snap = (await _ctl(ep, "create-snapshot", "snap-ctl", vid))["snapshot"]
        assert snap["ready_to_use"] is True
        listed = await _ctl(ep, "list-snapshots", "--volume-id", vid)
        assert [e["snapshot"]["snapshot_id"] for e in listed["entries"]] == [snap["snapshot_id"]]
        restored = await _ctl(
            ep, "create-volume", "pvc-ctl-r", "--from-snapshot", snap["snapshot_id"], *common
        )
        assert (
            restored["volume"]["content_source"]["snapshot"]["snapshot_id"] == snap["snapshot_id"]
        )
        assert (t.disk("pvc-ctl-r") / "data.txt").read_text() == "from ctl"
        await _ctl(ep, "create-volume", "pvc-ctl-c", "--from-volume", vid, *common)
        assert (t.disk("pvc-ctl-c") / "data.txt").read_text() == "from ctl"
        await _ctl(ep, "delete-snapshot", snap["snapshot_id"])
        assert (await _ctl(ep, "list-snapshots", "--volume-id", vid)) == {"entries": []}
