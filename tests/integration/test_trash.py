"""Fast deletes, the trash and its purge against a real Samba and a real nfs-ganesha.

The backend's one-step removal (``remove_empty_dir``) is checked against the
servers' own answers (empty, full, missing, a file, read-only); DeleteVolume
through a real gRPC socket moves a full volume aside at once and the purge
empties the trash, also what an earlier process left there.
"""

from __future__ import annotations

import os
import pwd
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controller.params import TRASH_DIR
from controller.pools import ShareBackends
from controller.service import build
from controller.share import FileShareBackend
from driver.config import Config, parse_endpoint
from driver.credentials import Credentials
from driver.csi import csi_pb2
from driver.server import DriverServer
from driver.source import Source, parse_source
from tests.csi_requests import cap
from tests.harness import Client, running_driver, wait_until
from tests.servers.ganesha import GaneshaServer
from tests.servers.plugin import SMB_WRITER
from tests.servers.samba import SambaServer

pytestmark = pytest.mark.integration

CONFIG = Config(endpoint=parse_endpoint("unix:///unused"), backend_timeout=10)


class Share:
    """One protocol's share, as the tests need it: requests and the disk."""

    def __init__(self, protocol: str, disk: Path, source: str, secrets_: dict[str, str]) -> None:
        self.protocol = protocol
        self.disk = disk
        self.source = source
        self.secrets = secrets_
        self.flags = ["nfsvers=4"] if protocol == "nfs" else []

    def create(self, name: str) -> csi_pb2.CreateVolumeRequest:
        return csi_pb2.CreateVolumeRequest(
            name=name,
            volume_capabilities=[cap(*self.flags)],
            parameters={"source": self.source},
            secrets=self.secrets,
        )

    def delete(self, volume_id: str) -> csi_pb2.DeleteVolumeRequest:
        return csi_pb2.DeleteVolumeRequest(volume_id=volume_id, secrets=self.secrets)

    @property
    def trash(self) -> Path:
        return self.disk / TRASH_DIR

    def trash_entries(self) -> list[str]:
        return sorted(os.listdir(self.trash)) if self.trash.exists() else []


@pytest.fixture(params=["smb", "nfs"])
def share(request: pytest.FixtureRequest) -> Share:
    base = f"trash-{secrets.token_hex(4)}"
    if request.param == "smb":
        samba: SambaServer = request.getfixturevalue("samba")
        disk = samba.share_path("csi") / base
        source = f"//{samba.host}:{samba.port}/csi/{base}"
        creds = {"username": SMB_WRITER, "password": samba.password(SMB_WRITER)}
        made = Share("smb", disk, source, creds)
    else:
        server: GaneshaServer = request.getfixturevalue("ganesha_v4")
        disk = server.export_path / base
        source = f"nfs://{server.host}:{server.port}{server.pseudo_path}/{base}"
        made = Share("nfs", disk, source, {})
    disk.mkdir()
    disk.chmod(0o777)
    return made


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[tuple[DriverServer, Client]]:
    async with running_driver(tmp_path / "csi.sock", [build(CONFIG)], mode="controller") as pair:
        yield pair


def fill(directory: Path, files: int, *, owner: str | None = None) -> None:
    """``files`` files in a few subdirectories, as a pod would leave them."""
    for i in range(files):
        sub = directory / f"d{i % 7}" / "deeper"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}").write_text("x")
    ids: Any = pwd.getpwnam(owner) if owner else None
    for path in [directory, *directory.rglob("*")]:
        if ids is not None:
            os.chown(path, ids.pw_uid, ids.pw_gid)
        path.chmod(0o777 if path.is_dir() else 0o666)


# -- the one-step removal, as each server answers it ----------------------------------


@pytest.fixture
async def backend(share: Share) -> AsyncIterator[tuple[FileShareBackend, str]]:
    """The share's backend from the controller's own factory, and the prefix
    of ``share.disk`` inside it."""
    factory = ShareBackends(CONFIG)
    src = parse_source(share.source)
    root = Source(src.protocol, src.server, src.port, src.share)
    creds = Credentials(**share.secrets) if share.protocol == "smb" else None
    got = factory.get(root, credentials=creds, nfs_version="4" if creds is None else None)
    try:
        yield got, f"{src.base}/" if src.base else ""
    finally:
        await factory.aclose()


async def test_remove_empty_dir_answers(
    share: Share, backend: tuple[FileShareBackend, str]
) -> None:
    share_backend, prefix = backend
    (share.disk / "empty").mkdir()
    (share.disk / "full" / "sub").mkdir(parents=True)
    (share.disk / "a-file").write_text("x")
    for p in (share.disk / "empty", share.disk / "full", share.disk / "full" / "sub"):
        p.chmod(0o777)
    (share.disk / "a-file").chmod(0o666)

    assert await share_backend.remove_empty_dir(f"{prefix}empty") == "removed"
    assert not (share.disk / "empty").exists()
    assert await share_backend.remove_empty_dir(f"{prefix}empty") == "missing"
    assert await share_backend.remove_empty_dir(f"{prefix}full") == "not_empty"
    assert (share.disk / "full" / "sub").is_dir()  # untouched
    # A file: SMB's CREATE asks for a directory and is refused; NFSv4's RMDIR
    # is a REMOVE, which takes any type.  Either way a delete is satisfied.
    result = await share_backend.remove_empty_dir(f"{prefix}a-file")
    if share.protocol == "smb":
        assert result == "not_empty"
        assert (share.disk / "a-file").is_file()
    else:
        assert result == "removed"
        assert not (share.disk / "a-file").exists()


# -- DeleteVolume through the trash ----------------------------------------------------


async def test_a_full_volume_is_released_at_once_and_purged(
    share: Share, driver: tuple[DriverServer, Client]
) -> None:
    _, c = driver
    vid = (await c.controller.CreateVolume(share.create("pvc-full"))).volume.volume_id
    fill(share.disk / "pvc-full", 300, owner=SMB_WRITER if share.protocol == "smb" else None)
    await c.controller.DeleteVolume(share.delete(vid))
    # The name is free at once; a new volume of that name starts empty.
    assert not (share.disk / "pvc-full").exists()
    again = (await c.controller.CreateVolume(share.create("pvc-full"))).volume.volume_id
    assert again == vid
    assert list((share.disk / "pvc-full").iterdir()) == []
    await wait_until(lambda: share.trash_entries() == [], timeout=60)
    assert (share.disk / "pvc-full").is_dir()  # the purge took only the old tree


async def test_an_empty_volume_never_reaches_the_trash(
    share: Share, driver: tuple[DriverServer, Client]
) -> None:
    _, c = driver
    vid = (await c.controller.CreateVolume(share.create("pvc-empty"))).volume.volume_id
    await c.controller.DeleteVolume(share.delete(vid))
    assert not (share.disk / "pvc-empty").exists()
    assert share.trash_entries() == []


async def test_the_purge_resumes_after_a_restart(share: Share, tmp_path: Path) -> None:
    # What a controller that died mid-purge leaves: a tree in the trash.
    leftover = share.trash / "pvc-old.0.0"
    leftover.mkdir(parents=True)
    fill(leftover, 40, owner=SMB_WRITER if share.protocol == "smb" else None)
    share.trash.chmod(0o777)
    async with running_driver(tmp_path / "csi.sock", [build(CONFIG)], mode="controller") as (
        _,
        c,
    ):
        # Any volume operation in that directory resumes the purge.
        await c.controller.CreateVolume(share.create("pvc-new"))
        await wait_until(lambda: share.trash_entries() == [], timeout=60)
    assert (share.disk / "pvc-new").is_dir()
