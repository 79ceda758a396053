"""SmbBackend against a real Samba: connections and sessions under concurrency,
and paths that would leave the share (refused before any I/O)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.smb.backend import SmbBackend
from controller.smb.pool import SmbBackendPool
from driver.credentials import Credentials
from driver.errors import InvalidArgument
from tests.integration.smb_backend.support import HOST, SETTINGS, fails, tcp_to, unique
from tests.servers.host import free_port
from tests.servers.plugin import SMB_WRITER, SMB_WRITER2
from tests.servers.samba import SambaServer

pytestmark = pytest.mark.integration


# --- concurrency and sessions -----------------------------------------------------


async def test_200_concurrent_mkdirs_share_one_connection(
    make: Callable[..., SmbBackend], server: SambaServer, share_dir: Path
) -> None:
    backend = make()
    d = unique()  # not created first: the parent is raced for too
    results = await asyncio.gather(*(backend.mkdir(f"{d}/c{i:03}") for i in range(200)))
    assert results == [True] * 200
    assert len(list((share_dir / d).iterdir())) == 200
    assert len(tcp_to(server.port)) == 1


async def test_two_credentials_two_sessions(
    make: Callable[..., SmbBackend], server: SambaServer
) -> None:
    first, second = make(SMB_WRITER), make(SMB_WRITER2)
    await asyncio.gather(first.exists("x"), second.exists("x"), first.exists("y"))
    ours = tcp_to(server.port)
    assert len(ours) == 2
    clients = {f"ipv4:{c.laddr.ip}:{c.laddr.port}" for c in ours}
    users = sorted(s["username"] for s in server.sessions() if s["client"] in clients)
    assert users == sorted([SMB_WRITER, SMB_WRITER2])


async def test_pool_one_connection_per_credentials(server: SambaServer, share_dir: Path) -> None:
    pool = SmbBackendPool(SETTINGS)
    creds = Credentials(SMB_WRITER, server.password(SMB_WRITER))
    try:
        csi = pool.get(HOST, server.port, "csi", creds)
        assert pool.get(HOST, server.port, "CSI", creds) is csi
        extra = pool.get(HOST, server.port, "extra", creds)
        assert extra is not csi
        assert pool.cached(HOST, server.port, "extra") is extra
        d = unique()
        assert await csi.mkdir(d) is True
        assert await extra.mkdir(d) is True
        assert (share_dir / d).is_dir()
        assert (server.share_path("extra") / d).is_dir()
        assert len(tcp_to(server.port)) == 1
        other = pool.get(
            HOST, server.port, "csi", Credentials(SMB_WRITER2, server.password(SMB_WRITER2))
        )
        assert await other.exists(d) is True
        assert len(tcp_to(server.port)) == 2
        assert len(pool.keys) == 2
        assert all(creds.password not in repr(k) for k in pool.keys)
        await csi.aclose()  # pool-owned: a no-op
        assert await extra.exists(d) is True
    finally:
        await pool.aclose()
    assert tcp_to(server.port) == []
    assert pool.cached(HOST, server.port, "csi") is None


# --- path defence -----------------------------------------------------------------

BAD_PATHS = [
    "",
    "/abs",
    "..",
    "a/../b",
    "a/..",
    ".",
    "./a",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "\\\\server\\share",
    "a\x00b",
    "a:b",
    "file.txt:stream",
    "C:",
]


@pytest.mark.parametrize("path", BAD_PATHS)
async def test_path_defence(path: str, make: Callable[..., SmbBackend], share_dir: Path) -> None:
    before = sorted(p.name for p in share_dir.iterdir())
    backend = make()
    # A backend that could not even connect: the check happens before any I/O.
    offline = SmbBackend(HOST, free_port(), "csi", "nobody", "x", settings=SETTINGS)
    for target in (backend, offline):
        await fails(InvalidArgument, target.mkdir(path))
        await fails(InvalidArgument, target.exists(path))
        await fails(InvalidArgument, target.remove_tree(path))
        await fails(InvalidArgument, target.rename(path, "ok"))
        await fails(InvalidArgument, target.rename("ok", path, replace=True))
    await offline.aclose()
    assert sorted(p.name for p in share_dir.iterdir()) == before
