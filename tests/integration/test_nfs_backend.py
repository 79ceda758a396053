"""NfsBackend against a real nfs-ganesha on loopback (v4) and in a private
network namespace (v3, see tests/servers/ganesha.py for how the client gets
there).

Needs root and ``apt-get install -y --no-install-recommends nfs-ganesha
nfs-ganesha-vfs rpcbind libnfs13``.  Every test works in its own directory
of a module-wide server; the fault tests get a server of their own.
"""

from __future__ import annotations

import asyncio
import os
import stat
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.nfs.backend import DEFAULT_DIR_MODE, NfsBackend, NfsBackendPool, Version
from controller.share import ShareBackend
from driver.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from tests.servers.ganesha import GaneshaServer
from tests.servers.plugin import require_root

pytestmark = pytest.mark.integration

TIMEOUT = 5.0
FAULT_TIMEOUT = 1.5
UID = 4242  # an unprivileged owner for permission tests (no account needed)


@dataclass
class Target:
    """A server plus how to build a backend for one NFS version."""

    server: GaneshaServer
    version: Version

    def backend(self, timeout: float = TIMEOUT, **kwargs: int) -> NfsBackend:
        s = self.server
        if self.version == "3":
            return NfsBackend(s.host, None, s.export, "3", timeout, **kwargs)
        port = None if s.namespaced else s.port
        return NfsBackend(s.host, port, s.pseudo_path, self.version, timeout, **kwargs)

    def disk(self, rel: str = "") -> Path:
        return self.server.export_path / rel if rel else self.server.export_path


@pytest.fixture(params=["4", "3"], ids=["v4", "v3"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    version: Version = request.param
    server: GaneshaServer = request.getfixturevalue(f"ganesha_v{version}")
    # v3: this (main) thread joins the server's network namespace for the
    # test; the event loop runs here, so libnfs' sockets are created inside.
    with server.client_netns():
        yield Target(server, version)


@pytest.fixture
async def backend(target: Target) -> AsyncIterator[NfsBackend]:
    b = target.backend()
    yield b
    await b.aclose()


@pytest.fixture
def base(target: Target) -> str:
    """A fresh directory name (relative to the export) for one test."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    target.disk(name).mkdir()
    return name


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


# -- connection problems -----------------------------------------------------------


async def test_connection_refused_is_unavailable(target: Target) -> None:
    if target.version == "3":
        b = NfsBackend("127.0.0.1", 1, "/x", "3", FAULT_TIMEOUT, mount_port=1)
    else:
        b = NfsBackend("127.0.0.1", 1, "/x", "4", FAULT_TIMEOUT)
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await b.exists("a")
    assert time.monotonic() - started < FAULT_TIMEOUT
    await b.aclose()


async def test_unknown_export(target: Target) -> None:
    s = target.server
    if target.version == "3":
        b = NfsBackend(s.host, None, "/no/such/export", "3", TIMEOUT)
    else:
        b = NfsBackend(s.host, None if s.namespaced else s.port, "/nosuch", "4", TIMEOUT)
    # A missing export is a configuration problem (as a missing SMB share):
    # never NotFound, which DeleteVolume would take for "already gone".
    with pytest.raises(FailedPrecondition):
        await b.exists("a")
    await b.aclose()


async def test_version_41_talks_40(ganesha_v4: GaneshaServer) -> None:
    b = NfsBackend(ganesha_v4.host, ganesha_v4.port, ganesha_v4.pseudo_path, "4.1", TIMEOUT)
    name = f"v41-{uuid.uuid4().hex[:8]}"
    assert await b.mkdir(name) is True
    assert (ganesha_v4.export_path / name).is_dir()
    await b.aclose()


@pytest.fixture(params=["4", "3"], ids=["v4", "v3"])
def faulty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """A server of its own (fixed names, kills and pauses): not the session's."""
    require_root("nfs-ganesha tests need root")
    version: Version = request.param
    versions = ("4",) if version == "4" else ("3", "4")
    with GaneshaServer(tmp_path / "g", versions=versions) as server, server.client_netns():
        yield Target(server, version)


async def _ticker(counter: list[int]) -> None:
    while True:
        await asyncio.sleep(0.01)
        counter[0] += 1


async def test_server_killed_then_restarted(faulty: Target) -> None:
    b = faulty.backend(timeout=FAULT_TIMEOUT)
    try:
        assert await b.mkdir("before") is True
        faulty.server.kill()
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await b.mkdir("during")
        assert time.monotonic() - started < FAULT_TIMEOUT
        # Still down: fails fast again, never hangs.
        with pytest.raises(Unavailable):
            await b.exists("before")
        faulty.server.start()
        assert await b.mkdir("after") is True
        assert await b.exists("before") is True
        assert (faulty.disk("after")).is_dir()
    finally:
        await b.aclose()


async def test_server_restarted_behind_idle_connection(faulty: Target) -> None:
    # No loop iteration between kill and start: the client meets the dead
    # socket only with the next call, which reconnects and retries once.
    b = faulty.backend(timeout=FAULT_TIMEOUT)
    try:
        assert await b.mkdir("before") is True
        faulty.server.kill()
        faulty.server.start()
        assert await b.mkdir("after") is True
        assert await b.exists("before") is True
        assert b.connects == 2
    finally:
        await b.aclose()


async def test_server_killed_during_call(faulty: Target) -> None:
    b = faulty.backend(timeout=FAULT_TIMEOUT * 4)
    try:
        assert await b.exists("x") is False
        faulty.server.pause()
        call = asyncio.ensure_future(b.mkdir("x"))
        await asyncio.sleep(0.1)
        assert not call.done()
        started = time.monotonic()
        faulty.server.kill()
        with pytest.raises(Unavailable):
            await call
        assert time.monotonic() - started < FAULT_TIMEOUT
        faulty.server.start()
        assert await b.mkdir("x") in (True, False)  # the first may have landed
        assert faulty.disk("x").is_dir()
    finally:
        await b.aclose()


async def test_server_paused_deadline_and_loop_stays_responsive(faulty: Target) -> None:
    b = faulty.backend(timeout=FAULT_TIMEOUT)
    ticks = [0]
    ticker = asyncio.ensure_future(_ticker(ticks))
    try:
        assert await b.mkdir("before") is True
        faulty.server.pause()
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await b.mkdir("during")
        elapsed = time.monotonic() - started
        assert FAULT_TIMEOUT * 0.9 <= elapsed < FAULT_TIMEOUT + 0.5
        # 10 ms ticks kept coming while the call waited (not blocked).
        assert ticks[0] >= FAULT_TIMEOUT / 0.01 * 0.5
        # Concurrent calls are bounded the same way.
        started = time.monotonic()
        results = await asyncio.gather(
            *(b.exists(f"x{i}") for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, DeadlineExceeded) for r in results), results
        assert time.monotonic() - started < FAULT_TIMEOUT + 0.5
        faulty.server.resume()
        assert await b.mkdir("after") is True
        assert await b.exists("before") is True
    finally:
        ticker.cancel()
        faulty.server.resume()
        await b.aclose()


async def test_backend_reusable_after_aclose(backend: NfsBackend, base: str) -> None:
    assert await backend.exists(base) is True
    await backend.aclose()
    assert await backend.exists(base) is True
    assert backend.connects == 2


# -- pool --------------------------------------------------------------------------


async def test_pool_one_backend_per_key(ganesha_v4: GaneshaServer) -> None:
    pool = NfsBackendPool(timeout=TIMEOUT)
    s = ganesha_v4
    a = pool.get(s.host, s.port, s.pseudo_path, "4")
    assert pool.get(s.host, s.port, s.pseudo_path, "4") is a
    other = pool.get(s.host, s.port, s.pseudo_path, "4.1")
    assert other is not a
    assert len(pool) == 2
    assert await a.exists("nothing-here") is False
    await pool.aclose()
    assert len(pool) == 0
    assert pool.get(s.host, s.port, s.pseudo_path, "4") is not a


# -- measurements (printed with -s; asserted loosely) --------------------------------


async def test_measure_mkdir_latency(target: Target, base: str) -> None:
    b = target.backend()
    try:
        await b.exists(base)
        samples = []
        for i in range(100):
            started = time.perf_counter()
            await b.mkdir(f"{base}/m{i}")
            samples.append(time.perf_counter() - started)
    finally:
        await b.aclose()
    median_ms = statistics.median(samples) * 1000
    print(
        f"\nNFSv{target.version}: median mkdir {median_ms:.2f} ms; "
        f"ganesha start {target.server.last_start_seconds * 1000:.0f} ms"
    )
    assert median_ms < 50
