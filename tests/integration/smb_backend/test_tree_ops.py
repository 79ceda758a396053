"""SmbBackend against a real Samba: mkdir, rename, remove_tree, exists, capacity.

Every test works in a directory of its own on the session's server."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import smbclient
from smbprotocol.exceptions import SMBOSError
from smbprotocol.header import NtStatus

from controller.smb.backend import SmbBackend
from controller.smb.channel import SmbSettings
from driver.errors import AlreadyExists, FailedPrecondition, NotFound
from tests.integration.smb_backend.support import HOST, READONLY, fails, own, unique
from tests.servers.plugin import SMB_WRITER
from tests.servers.samba import SambaServer

pytestmark = pytest.mark.integration


# --- mkdir ---------------------------------------------------------------------


async def test_mkdir_new_existing_nested(make: Callable[..., SmbBackend], share_dir: Path) -> None:
    backend = make()
    d = unique()
    assert await backend.mkdir(d) is True
    assert (share_dir / d).is_dir()
    assert await backend.mkdir(d) is False
    assert await backend.mkdir(f"{d}/a/b/c") is True
    assert (share_dir / d / "a" / "b" / "c").is_dir()
    assert await backend.mkdir(f"{d}/a/b/c") is False
    assert await backend.mkdir(f"{d}/a/b") is False
    assert await backend.mkdir(f"{d}/a/x") is True


async def test_mkdir_over_a_file_is_already_exists(
    make: Callable[..., SmbBackend], share_dir: Path
) -> None:
    backend = make()
    d = unique()
    await backend.mkdir(d)
    (share_dir / d / "file").write_text("x")
    await fails(AlreadyExists, backend.mkdir(f"{d}/file"))
    # A file where a parent should be: the share's state, as on NFS (ENOTDIR).
    await fails(FailedPrecondition, backend.mkdir(f"{d}/file/below/deeper"))
    assert (share_dir / d / "file").is_file()


async def test_mkdir_mode_is_ignored(make: Callable[..., SmbBackend], share_dir: Path) -> None:
    backend = make()
    d = unique()
    assert await backend.mkdir(d, mode=0o2770) is True
    # The share's ``directory mask`` decides, not the caller (documented).
    assert stat.S_IMODE((share_dir / d).stat().st_mode) == 0o777


# --- rename ------------------------------------------------------------------


async def test_rename(make: Callable[..., SmbBackend], share_dir: Path) -> None:
    backend = make()
    d = unique()
    await backend.mkdir(f"{d}/src/inner")
    await backend.rename(f"{d}/src", f"{d}/dst")
    assert not (share_dir / d / "src").exists()
    assert (share_dir / d / "dst" / "inner").is_dir()


async def test_rename_refuses_an_existing_target(
    make: Callable[..., SmbBackend], share_dir: Path
) -> None:
    backend = make()
    d = unique()
    await backend.mkdir(f"{d}/src")
    await backend.mkdir(f"{d}/dst/kept")
    await fails(AlreadyExists, backend.rename(f"{d}/src", f"{d}/dst"))
    assert (share_dir / d / "src").is_dir()
    assert (share_dir / d / "dst" / "kept").is_dir()


async def test_rename_with_replace_removes_the_target_tree(
    make: Callable[..., SmbBackend], share_dir: Path
) -> None:
    backend = make()
    d = unique()
    await backend.mkdir(f"{d}/src/new")
    await backend.mkdir(f"{d}/dst/old/deep")
    ro = share_dir / d / "dst" / "old" / "ro.txt"
    ro.write_text("x")
    own(ro)
    ro.chmod(0o444)
    await backend.rename(f"{d}/src", f"{d}/dst", replace=True)
    assert not (share_dir / d / "src").exists()
    assert sorted(p.name for p in (share_dir / d / "dst").iterdir()) == ["new"]
    # replace also works when there is nothing to replace
    await backend.mkdir(f"{d}/other")
    await backend.rename(f"{d}/other", f"{d}/fresh", replace=True)
    assert (share_dir / d / "fresh").is_dir()


async def test_rename_missing_source_is_an_answer(
    make: Callable[..., SmbBackend], share_dir: Path
) -> None:
    backend = make()
    d = unique()
    await backend.mkdir(f"{d}/dst/kept")
    assert await backend.rename(f"{d}/nope", f"{d}/new") is False
    # With replace, a missing source must not cost the target.
    assert await backend.rename(f"{d}/nope", f"{d}/dst", replace=True) is False
    assert (share_dir / d / "dst" / "kept").is_dir()
    await backend.mkdir(f"{d}/src")
    await fails(NotFound, backend.rename(f"{d}/src", f"{d}/missing/dst"))
    assert await backend.rename(f"{d}/src", f"{d}/moved") is True


# --- remove_tree / exists ------------------------------------------------------


async def test_remove_tree_with_read_only_files_and_dirs(
    make: Callable[..., SmbBackend], server: SambaServer, share_dir: Path
) -> None:
    backend = make()
    d = unique()
    await backend.mkdir(f"{d}/tree/plain")
    tree = share_dir / d / "tree"
    # Made on the server side (as if by a pod through a mount), owned by the user.
    for name in ("plain.txt", "srv_ro.txt"):
        (tree / name).write_text(name)
        own(tree / name)
    (tree / "srv_ro.txt").chmod(0o444)
    rodir = tree / "rodir"
    (rodir / "sub").mkdir(parents=True)
    (rodir / "inner.txt").write_text("inner")
    (rodir / "sub" / "deep.txt").write_text("deep")
    for path in (rodir, rodir / "sub", rodir / "inner.txt", rodir / "sub" / "deep.txt"):
        own(path)
    (rodir / "inner.txt").chmod(0o444)
    (rodir / "sub").chmod(0o555)
    rodir.chmod(0o555)

    # Made through SMB with FILE_ATTRIBUTE_READONLY; and proof that read-only
    # is really enforced by this Samba before the backend deals with it.
    cache: dict[str, Any] = {}
    kw = {
        "port": server.port,
        "username": SMB_WRITER,
        "password": server.password(SMB_WRITER),
        "connection_cache": cache,
    }
    unc = rf"\\{HOST}\csi\{d}\tree"
    try:
        with smbclient.open_file(
            rf"{unc}\smb_ro.txt", mode="w", file_attributes=READONLY, **kw
        ) as f:
            f.write("smb")
        assert (tree / "smb_ro.txt").stat().st_mode & 0o222 == 0
        for name in ("smb_ro.txt", "srv_ro.txt", "rodir"):
            assert smbclient.stat(rf"{unc}\{name}", **kw).st_file_attributes & READONLY, name
        with pytest.raises(SMBOSError) as denied:
            smbclient.open_file(rf"{unc}\srv_ro.txt", mode="a", **kw)
        assert denied.value.ntstatus == NtStatus.STATUS_ACCESS_DENIED
        with pytest.raises(SMBOSError) as denied:
            smbclient.remove(rf"{unc}\rodir\sub\deep.txt", **kw)
        assert denied.value.ntstatus == NtStatus.STATUS_ACCESS_DENIED
    finally:
        smbclient.reset_connection_cache(connection_cache=cache)

    assert await backend.remove_tree(f"{d}/tree") is True
    assert not tree.exists()
    assert await backend.remove_tree(f"{d}/tree") is False


async def test_remove_tree_of_a_wide_and_deep_tree(
    make: Callable[..., SmbBackend], share_dir: Path
) -> None:
    # max_in_flight=2: some subdirectories are walked side by side, the rest inline.
    backend = make(settings=SmbSettings(op_timeout=5.0, close_timeout=1.0, max_in_flight=2))
    d = unique()
    await backend.mkdir(d)
    for i in range(12):
        deep = share_dir / d / f"w{i}" / "x" / "y"
        deep.mkdir(parents=True)
        for j in range(3):
            (deep.parent / f"f{j}").write_text("x")
        (deep / "leaf").write_text("x")
    for path in (share_dir / d).rglob("*"):
        own(path)
    (share_dir / d / "w3" / "x").chmod(0o555)
    assert await backend.remove_tree(d) is True
    assert not (share_dir / d).exists()


async def test_remove_tree_of_a_file_and_of_nothing(
    make: Callable[..., SmbBackend], share_dir: Path
) -> None:
    backend = make()
    d = unique()
    await backend.mkdir(d)
    (share_dir / d / "f").write_text("x")
    assert await backend.remove_tree(f"{d}/f") is True
    assert not (share_dir / d / "f").exists()
    assert await backend.remove_tree(f"{d}/missing/below") is False
    assert await backend.remove_tree(d) is True
    assert not (share_dir / d).exists()


async def test_exists(make: Callable[..., SmbBackend], share_dir: Path) -> None:
    backend = make()
    d = unique()
    assert await backend.exists(d) is False
    await backend.mkdir(f"{d}/dir")
    (share_dir / d / "file").write_text("x")
    assert await backend.exists(d) is True
    assert await backend.exists(f"{d}/dir") is True
    assert await backend.exists(f"{d}/file") is True
    assert await backend.exists(f"{d}/file/below") is False
    assert await backend.exists(f"{d}/nope/below") is False


async def test_capacity_matches_statvfs(make: Callable[..., SmbBackend], share_dir: Path) -> None:
    cap = await make().capacity()
    st = os.statvfs(share_dir)
    assert cap.total_bytes == st.f_blocks * st.f_frsize
    assert 0 < cap.available_bytes <= cap.total_bytes
    # Other processes write to the same disk meanwhile: allow some drift.
    assert abs(cap.available_bytes - st.f_bavail * st.f_frsize) < 256 * 2**20
