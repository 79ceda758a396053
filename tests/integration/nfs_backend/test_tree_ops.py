"""NfsBackend against a real nfs-ganesha (v4 and v3): mkdir with modes, rename,
remove_tree (read-only entries, ownership), exists, capacity, path defence."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.nfs.backend import DEFAULT_DIR_MODE, NfsBackend
from controller.share import ShareBackend
from driver.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from tests.integration.nfs_backend.support import TIMEOUT, UID, Target

pytestmark = pytest.mark.integration


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


# -- mkdir ---------------------------------------------------------------------


async def test_backend_satisfies_protocol(backend: NfsBackend) -> None:
    share: ShareBackend = backend
    assert share is backend


async def test_mkdir_new_nested_with_mode(backend: NfsBackend, target: Target, base: str) -> None:
    assert await backend.mkdir(f"{base}/a/b/c", mode=0o2770) is True
    leaf = target.disk(f"{base}/a/b/c")
    assert leaf.is_dir()
    assert _mode(leaf) == 0o2770  # setgid kept: chmod after mkdir
    assert _mode(target.disk(f"{base}/a")) == DEFAULT_DIR_MODE
    assert _mode(target.disk(f"{base}/a/b")) == DEFAULT_DIR_MODE


async def test_mkdir_modes_exact(backend: NfsBackend, target: Target, base: str) -> None:
    for mode in (0o777, 0o700, 0o1777, 0o2775, 0o555, 0o000):
        assert await backend.mkdir(f"{base}/m{mode:o}", mode=mode) is True
        assert _mode(target.disk(f"{base}/m{mode:o}")) == mode


async def test_mkdir_existing_is_false_and_mode_reapplied(
    backend: NfsBackend, target: Target, base: str
) -> None:
    assert await backend.mkdir(f"{base}/x") is True
    assert _mode(target.disk(f"{base}/x")) == DEFAULT_DIR_MODE
    assert await backend.mkdir(f"{base}/x") is False
    assert await backend.mkdir(f"{base}/x", mode=0o2770) is False
    assert _mode(target.disk(f"{base}/x")) == 0o2770


async def test_mkdir_over_file_and_under_file(
    backend: NfsBackend, target: Target, base: str
) -> None:
    target.disk(f"{base}/f").write_text("x")
    with pytest.raises(AlreadyExists):
        await backend.mkdir(f"{base}/f")
    with pytest.raises(FailedPrecondition):
        await backend.mkdir(f"{base}/f/sub")


async def test_mkdir_concurrent_same_path(backend: NfsBackend, target: Target, base: str) -> None:
    results = await asyncio.gather(*(backend.mkdir(f"{base}/p/q/r") for _ in range(20)))
    assert results.count(True) == 1
    assert target.disk(f"{base}/p/q/r").is_dir()


async def test_200_concurrent_mkdirs_one_connection(
    backend: NfsBackend, target: Target, base: str
) -> None:
    assert await backend.exists(base)
    before = backend.connects
    started = time.perf_counter()
    results = await asyncio.gather(*(backend.mkdir(f"{base}/c{i:03d}") for i in range(200)))
    elapsed = time.perf_counter() - started
    assert results == [True] * 200
    assert backend.connects == before == 1
    assert len(os.listdir(target.disk(base))) == 200
    assert elapsed < TIMEOUT


# -- rename ----------------------------------------------------------------------


async def test_rename_to_new_name(backend: NfsBackend, target: Target, base: str) -> None:
    target.disk(f"{base}/src/inner").mkdir(parents=True)
    target.disk(f"{base}/src/inner/f").write_text("data")
    await backend.rename(f"{base}/src", f"{base}/dst")
    assert not target.disk(f"{base}/src").exists()
    assert target.disk(f"{base}/dst/inner/f").read_text() == "data"


async def test_rename_without_replace_refuses_existing(
    backend: NfsBackend, target: Target, base: str
) -> None:
    target.disk(f"{base}/src").mkdir()
    target.disk(f"{base}/dst").mkdir()
    with pytest.raises(AlreadyExists):
        await backend.rename(f"{base}/src", f"{base}/dst")
    assert target.disk(f"{base}/src").is_dir()


async def test_rename_with_replace_removes_readonly_tree(
    backend: NfsBackend, target: Target, base: str
) -> None:
    target.disk(f"{base}/src").mkdir()
    target.disk(f"{base}/src/new").write_text("new")
    ro = target.disk(f"{base}/dst/ro")
    ro.mkdir(parents=True)
    (ro / "f").write_text("old")
    (ro / "f").chmod(0o444)
    ro.chmod(0o555)
    await backend.rename(f"{base}/src", f"{base}/dst", replace=True)
    assert sorted(os.listdir(target.disk(f"{base}/dst"))) == ["new"]
    assert not target.disk(f"{base}/src").exists()


async def test_rename_missing_source_and_missing_parent(
    backend: NfsBackend, target: Target, base: str
) -> None:
    assert await backend.rename(f"{base}/nope", f"{base}/dst") is False
    assert await backend.rename(f"{base}/nope", f"{base}/nope") is False
    target.disk(f"{base}/src").mkdir()
    with pytest.raises(NotFound, match="destination parent"):
        await backend.rename(f"{base}/src", f"{base}/missing/dst")


async def test_rename_into_itself_is_invalid(backend: NfsBackend, base: str) -> None:
    with pytest.raises(InvalidArgument):
        await backend.rename(f"{base}/a", f"{base}/a/b", replace=True)
    with pytest.raises(InvalidArgument):
        await backend.rename(f"{base}/a/b", f"{base}/a", replace=True)


# -- remove_tree -------------------------------------------------------------------


def _readonly_tree(root: Path) -> None:
    """Nested dirs and files, read-only files, 0555 dirs, a symlink out."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    for d in (root, root / "a", root / "a" / "b", root / "a" / "b" / "c"):
        for i in range(3):
            (d / f"f{i}").write_text(str(i))
            (d / f"f{i}").chmod(0o444)
    (root / "empty").mkdir()
    (root / "a" / "link").symlink_to("/etc/hostname")
    for d in (root / "a" / "b" / "c", root / "a" / "b", root / "empty"):
        d.chmod(0o555)
    (root / "a" / "b" / "c").chmod(0o500)


async def test_remove_tree_with_readonly_entries(
    backend: NfsBackend, target: Target, base: str
) -> None:
    _readonly_tree(target.disk(f"{base}/tree"))
    assert await backend.remove_tree(f"{base}/tree") is True
    assert not target.disk(f"{base}/tree").exists()
    assert Path("/etc/hostname").exists()  # the symlink was not followed
    assert await backend.remove_tree(f"{base}/tree") is False


async def test_remove_tree_readonly_as_unprivileged_owner(target: Target, base: str) -> None:
    # Squash-like case: the client is the owner but not root, so the server
    # enforces the 0555 directories and remove_tree must chmod them first.
    home = target.disk(f"{base}/home")
    home.mkdir()
    _readonly_tree(home / "tree")
    for dirpath, dirnames, filenames in os.walk(home):
        for name in (*dirnames, *filenames):
            os.lchown(Path(dirpath) / name, UID, UID)
    os.chown(home, UID, UID)
    b = target.backend(uid=UID, gid=UID)
    try:
        assert await b.remove_tree(f"{base}/home/tree") is True
    finally:
        await b.aclose()
    assert os.listdir(home) == []


async def test_remove_tree_not_owner_is_permission_denied(target: Target, base: str) -> None:
    target.disk(f"{base}/rootdir/sub").mkdir(parents=True)
    b = target.backend(uid=UID, gid=UID)
    try:
        with pytest.raises(PermissionDenied):
            await b.remove_tree(f"{base}/rootdir")
        with pytest.raises(PermissionDenied):
            await b.mkdir(f"{base}/rootdir/new")
    finally:
        await b.aclose()
    assert target.disk(f"{base}/rootdir/sub").is_dir()


async def test_remove_tree_file_missing_and_under_file(
    backend: NfsBackend, target: Target, base: str
) -> None:
    target.disk(f"{base}/f").write_text("x")
    assert await backend.remove_tree(f"{base}/f/below") is False
    assert await backend.remove_tree(f"{base}/f") is True
    assert not target.disk(f"{base}/f").exists()
    assert await backend.remove_tree(f"{base}/missing/deeper") is False


async def test_remove_wide_tree(backend: NfsBackend, target: Target, base: str) -> None:
    root = target.disk(f"{base}/wide")
    for i in range(30):
        (root / f"d{i}").mkdir(parents=True)
        for j in range(10):
            (root / f"d{i}" / f"f{j}").write_text("x")
    assert await backend.remove_tree(f"{base}/wide") is True
    assert not root.exists()


# -- exists / capacity -------------------------------------------------------------


async def test_exists(backend: NfsBackend, target: Target, base: str) -> None:
    target.disk(f"{base}/d").mkdir()
    target.disk(f"{base}/f").write_text("x")
    target.disk(f"{base}/dangling").symlink_to("nowhere")
    assert await backend.exists(f"{base}/d") is True
    assert await backend.exists(f"{base}/f") is True
    assert await backend.exists(f"{base}/dangling") is True
    assert await backend.exists(f"{base}/nope") is False
    assert await backend.exists(f"{base}/f/below") is False


async def test_capacity_matches_statvfs(backend: NfsBackend, target: Target) -> None:
    cap = await backend.capacity()
    st = os.statvfs(target.disk())
    total = st.f_blocks * st.f_frsize
    available = st.f_bavail * st.f_frsize
    assert abs(cap.total_bytes - total) <= 4096
    # Other processes write to the same disk meanwhile: allow 256 MiB.
    assert abs(cap.available_bytes - available) <= 256 << 20
    assert 0 < cap.available_bytes <= cap.total_bytes


# -- path defence ------------------------------------------------------------------

BAD_PATHS = ["", "/abs", "a/../b", "..", "a/./b", "a//b", "a/", "a\\b", "a\x00b", "."]


@pytest.mark.parametrize("bad", BAD_PATHS)
async def test_path_defence(backend: NfsBackend, bad: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: backend.mkdir(bad),
        lambda: backend.remove_tree(bad),
        lambda: backend.exists(bad),
        lambda: backend.rename(bad, "ok"),
        lambda: backend.rename("ok", bad),
    ]
    for call in calls:
        with pytest.raises(InvalidArgument):
            await call()  # type: ignore[misc]
    assert backend.connects == 0  # refused before any network traffic
