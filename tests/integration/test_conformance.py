"""One error vocabulary: the same situation gives the same gRPC code on every backend.

Each situation is driven through the Controller service (and, where no RPC
reaches it, through the share backend the service uses) against:

- SMB: the session's real Samba (tests/servers/samba.py);
- NFS v4 and NFS v3: real nfs-ganesha servers of this module (v3 in its
  private network namespace), each with a second, read-only export;
- the unit fake (tests/fakes.py), whose server conditions are state
  (``FakeShare.condition``, ``read_only``), not canned answers.

Every kind must answer the code in EXPECTED; a kind where a situation cannot
arise is listed in NOT_APPLICABLE with the reason (docs/csi-conformance.md
repeats both tables).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.pools import ShareBackends
from controller.service import ControllerService
from controller.share import BackendFactory, FileShareBackend
from driver.config import Config, parse_endpoint
from driver.credentials import smb_credentials
from driver.csi import csi_pb2
from driver.errors import DriverError
from driver.failures import Failure
from driver.source import Source, parse_source
from tests.csi_requests import cap
from tests.fakes.share import FakeBackends
from tests.servers.ganesha import GaneshaServer
from tests.servers.host import free_port
from tests.servers.plugin import SMB_READER, SMB_WRITER, require_root
from tests.servers.samba import SambaServer

pytestmark = pytest.mark.integration

CTX: Any = None
KINDS = ("smb", "nfs-v4", "nfs-v3", "fake")

#: situation → the gRPC code every backend answers.
EXPECTED = {
    "share missing: CreateVolume": "FAILED_PRECONDITION",
    "share missing: DeleteVolume": "FAILED_PRECONDITION",
    "share missing: DeleteVolume with onDelete=archive": "FAILED_PRECONDITION",
    "directory missing: DeleteVolume": "OK",
    "directory missing: DeleteVolume with onDelete=archive": "OK",
    "directory missing: clone source": "NOT_FOUND",
    "file where the volume directory should be": "ALREADY_EXISTS",
    "file where a parent directory should be": "FAILED_PRECONDITION",
    "permission denied: read-only identity or export": "PERMISSION_DENIED",
    "server down": "UNAVAILABLE",
    "name too long": "INVALID_ARGUMENT",
    "directory not empty: rename onto it": "ALREADY_EXISTS",
    "server busy: NFS grace period": "UNAVAILABLE",
}
#: (situation, kind) → why it cannot arise there.
NOT_APPLICABLE = {
    ("server busy: NFS grace period", "smb"): "SMB has no grace period",
    # The real NFS servers' grace period is driven in test_nfs_grace.py (it
    # needs a restart with state to reclaim and lasts seconds).
    ("server busy: NFS grace period", "nfs-v4"): "see test_nfs_grace.py",
    ("server busy: NFS grace period", "nfs-v3"): "see test_nfs_grace.py",
}


@dataclass
class Kind:
    """One backend kind: how to name its shares and reach its server."""

    name: str
    factory: BackendFactory
    root: str  # share root (SMB share / NFS export), no trailing slash
    missing_root: str  # a share/export the server does not have
    down_root: str  # the same kind of root on a port nobody listens on
    read_only_root: str
    secrets: dict[str, str] = field(default_factory=dict)
    read_only_secrets: dict[str, str] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    netns: Callable[[], AbstractContextManager[None]] = nullcontext
    base: str = field(default_factory=lambda: f"conf-{uuid.uuid4().hex[:8]}")

    @property
    def service(self) -> ControllerService:
        return ControllerService(self.factory)

    def cap(self) -> csi_pb2.VolumeCapability:
        return cap(*self.flags)

    def create(
        self, name: str, *, root: str | None = None, secrets: dict[str, str] | None = None, **p: str
    ) -> csi_pb2.CreateVolumeRequest:
        return csi_pb2.CreateVolumeRequest(
            name=name,
            volume_capabilities=[self.cap()],
            parameters={"source": f"{root or self.root}/{self.base}", **p},
            secrets=self.secrets if secrets is None else secrets,
        )

    def backend(self) -> FileShareBackend:
        src = parse_source(f"{self.root}/{self.base}", None)
        share = Source(src.protocol, src.server, src.port, src.share)
        creds = smb_credentials(self.secrets, which="secret") if src.protocol == "smb" else None
        version = next((f.split("=", 1)[1] for f in self.flags if f.startswith("nfsvers=")), None)
        return self.factory.get(share, credentials=creds, nfs_version=version)

    def path(self, rel: str = "") -> str:
        """``rel`` in this test's base directory, relative to the backend's root."""
        src = parse_source(f"{self.root}/{self.base}", None)
        if src.protocol == "nfs":  # the NFS backend's root is the whole source path
            return rel
        return "/".join(p for p in (src.base, rel) if p)


async def outcome(call: Awaitable[Any]) -> str:
    try:
        await call
    except DriverError as exc:
        return exc.code
    return "OK"


# ---------------------------------------------------------------- situations


async def _made_then_deleted(kind: Kind, name: str, **params: str) -> str:
    svc = kind.service
    vid = (await svc.CreateVolume(kind.create(name, **params), CTX)).volume.volume_id
    await svc.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid, secrets=kind.secrets), CTX)
    return vid


def _on(root: str, vid: str, kind: Kind) -> str:
    """``vid`` with its share root swapped for ``root`` (same format)."""
    share = parse_source(f"{kind.root}/{kind.base}", None)
    other = parse_source(f"{root}/{kind.base}", None)
    old, new = f"#{share.share}#", f"#{other.share}#"
    assert old in vid, vid
    return vid.replace(old, new, 1)


async def share_missing_create(kind: Kind) -> str:
    return await outcome(
        kind.service.CreateVolume(kind.create("pvc-a", root=kind.missing_root), CTX)
    )


async def share_missing_delete(kind: Kind, on_delete: str = "delete") -> str:
    vid = await _made_then_deleted(kind, f"pvc-{on_delete}", onDelete=on_delete)
    request = csi_pb2.DeleteVolumeRequest(
        volume_id=_on(kind.missing_root, vid, kind), secrets=kind.secrets
    )
    return await outcome(kind.service.DeleteVolume(request, CTX))


async def share_missing_archive(kind: Kind) -> str:
    return await share_missing_delete(kind, "archive")


async def dir_missing_delete(kind: Kind, on_delete: str = "delete") -> str:
    vid = await _made_then_deleted(kind, f"pvc-gone-{on_delete}", onDelete=on_delete)
    request = csi_pb2.DeleteVolumeRequest(volume_id=vid, secrets=kind.secrets)
    return await outcome(kind.service.DeleteVolume(request, CTX))


async def dir_missing_archive(kind: Kind) -> str:
    return await dir_missing_delete(kind, "archive")


async def dir_missing_clone(kind: Kind) -> str:
    vid = await _made_then_deleted(kind, "pvc-src")
    request = kind.create("pvc-clone")
    request.volume_content_source.volume.volume_id = vid
    return await outcome(kind.service.CreateVolume(request, CTX))


async def _file(kind: Kind, rel: str) -> None:
    backend = kind.backend()
    if kind.path():
        await backend.mkdir(kind.path())
    writer = await backend.open_write(kind.path(rel))
    await writer.write(b"not a directory")
    await writer.aclose()


async def file_as_volume(kind: Kind) -> str:
    await _file(kind, "pvc-file")
    return await outcome(kind.service.CreateVolume(kind.create("pvc-file"), CTX))


async def file_as_parent(kind: Kind) -> str:
    await _file(kind, "parent")
    request = kind.create("pvc-x", subDir="parent/pvc-x")
    return await outcome(kind.service.CreateVolume(request, CTX))


async def permission_denied(kind: Kind) -> str:
    request = kind.create("pvc-ro", root=kind.read_only_root, secrets=kind.read_only_secrets)
    return await outcome(kind.service.CreateVolume(request, CTX))


async def server_down(kind: Kind) -> str:
    return await outcome(kind.service.CreateVolume(kind.create("pvc-d", root=kind.down_root), CTX))


async def name_too_long(kind: Kind) -> str:
    request = kind.create("pvc-long", subDir="x" * 300)
    return await outcome(kind.service.CreateVolume(request, CTX))


async def not_empty_rename(kind: Kind) -> str:
    backend = kind.backend()
    await backend.mkdir(kind.path("src"))
    await backend.mkdir(kind.path("dst/child"))
    return await outcome(backend.rename(kind.path("src"), kind.path("dst")))


async def busy(kind: Kind) -> str:
    # Only the fake reaches here (NOT_APPLICABLE): its server goes into grace.
    assert isinstance(kind.factory, FakeBackends)
    vid = (await kind.service.CreateVolume(kind.create("pvc-busy"), CTX)).volume.volume_id
    source = parse_source(kind.root, None)
    share = kind.factory.share(Source(source.protocol, source.server, source.port, source.share))
    share.condition = Failure.BUSY
    try:
        snap = csi_pb2.CreateSnapshotRequest(
            name="snap", source_volume_id=vid, secrets=kind.secrets
        )
        return await outcome(kind.service.CreateSnapshot(snap, CTX))
    finally:
        share.condition = None


SITUATIONS: dict[str, Callable[[Kind], Awaitable[str]]] = {
    "share missing: CreateVolume": share_missing_create,
    "share missing: DeleteVolume": share_missing_delete,
    "share missing: DeleteVolume with onDelete=archive": share_missing_archive,
    "directory missing: DeleteVolume": dir_missing_delete,
    "directory missing: DeleteVolume with onDelete=archive": dir_missing_archive,
    "directory missing: clone source": dir_missing_clone,
    "file where the volume directory should be": file_as_volume,
    "file where a parent directory should be": file_as_parent,
    "permission denied: read-only identity or export": permission_denied,
    "server down": server_down,
    "name too long": name_too_long,
    "directory not empty: rename onto it": not_empty_rename,
    "server busy: NFS grace period": busy,
}
assert SITUATIONS.keys() == EXPECTED.keys()


# ---------------------------------------------------------------- backends


def _require_root() -> None:
    require_root("real servers need root")


@pytest.fixture(scope="module")
def ganesha4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GaneshaServer]:
    _require_root()
    root = tmp_path_factory.mktemp("conf4")
    with GaneshaServer(root, versions=("4",), read_only_export=True) as server:
        yield server


@pytest.fixture(scope="module")
def ganesha3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GaneshaServer]:
    _require_root()
    root = tmp_path_factory.mktemp("conf3")
    with GaneshaServer(root, versions=("3", "4"), read_only_export=True) as server:
        yield server


@pytest.fixture
async def kinds(
    samba: SambaServer, ganesha4: GaneshaServer, ganesha3: GaneshaServer
) -> AsyncIterator[dict[str, Kind]]:
    factory = ShareBackends(Config(endpoint=parse_endpoint("unix:///unused"), backend_timeout=5))
    g4, g3 = ganesha4, ganesha3
    down = free_port()
    fake = FakeBackends()
    fake.share("smb://fake/nosuch").condition = Failure.SHARE_MISSING
    fake.share("smb://down/share").condition = Failure.UNREACHABLE
    fake.share("smb://fake/ro").read_only = True
    found = {
        "smb": Kind(
            "smb",
            factory,
            root=f"//{samba.host}:{samba.port}/csi",
            missing_root=f"//{samba.host}:{samba.port}/nosuch",
            down_root=f"//{samba.host}:{down}/csi",
            read_only_root=f"//{samba.host}:{samba.port}/csi",
            secrets={"username": SMB_WRITER, "password": samba.password(SMB_WRITER)},
            read_only_secrets={"username": SMB_READER, "password": samba.password(SMB_READER)},
        ),
        "nfs-v4": Kind(
            "nfs-v4",
            factory,
            root=f"nfs://{g4.host}:{g4.port}{g4.pseudo_path}",
            missing_root=f"nfs://{g4.host}:{g4.port}/nosuch",
            down_root=f"nfs://{g4.host}:{down}{g4.pseudo_path}",
            read_only_root=f"nfs://{g4.host}:{g4.port}{g4.ro_pseudo_path}",
            flags=("nfsvers=4",),
        ),
        "nfs-v3": Kind(
            "nfs-v3",
            factory,
            root=f"{g3.host}:{g3.export}",
            missing_root=f"{g3.host}:{g3.root_dir}/nosuch",
            down_root=f"nfs://{g3.host}:{down}{g3.export}",
            read_only_root=f"{g3.host}:{g3.ro_export_path}",
            flags=("nfsvers=3",),
            netns=g3.client_netns,
        ),
        "fake": Kind(
            "fake",
            fake,
            root="//fake/share",
            missing_root="//fake/nosuch",
            down_root="//down/share",
            read_only_root="//fake/ro",
            secrets={"username": "u", "password": "p"},
            read_only_secrets={"username": "u", "password": "p"},
        ),
    }
    for name, server in (("nfs-v4", g4), ("nfs-v3", g3)):
        # The NFS backend mounts the whole source path: it must exist.
        for export in (server.export_path, server.ro_export_path):
            (export / found[name].base).mkdir()
    try:
        yield found
    finally:
        await factory.aclose()


@pytest.mark.parametrize("situation", list(EXPECTED))
async def test_every_backend_gives_the_same_code(
    kinds: dict[str, Kind], situation: str, tmp_path: Path
) -> None:
    got: dict[str, str] = {}
    for name in KINDS:
        if (situation, name) in NOT_APPLICABLE:
            continue
        kind = kinds[name]
        with kind.netns():
            got[name] = await SITUATIONS[situation](kind)
    assert got, situation
    assert got == dict.fromkeys(got, EXPECTED[situation]), got
