"""SmbBackend against a real Samba: identities and permissions, and a server
that stops, restarts, crashes or hangs (brought back before each test ends)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from controller.smb.backend import SmbBackend
from controller.smb.channel import SmbSettings
from controller.smb.pool import SmbBackendPool
from driver.credentials import Credentials
from driver.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from tests.integration.smb_backend.support import (
    ERRORS,
    HOST,
    SETTINGS,
    WRONG_PASSWORD,
    fails,
    tcp_to,
    unique,
)
from tests.servers.plugin import SMB_READER, SMB_WRITER, SMB_WRITER2
from tests.servers.samba import SambaServer

pytestmark = pytest.mark.integration


# --- identities and permissions -------------------------------------------------


async def test_wrong_password_is_unauthenticated(make: Callable[..., SmbBackend]) -> None:
    good = make()
    d = unique()
    assert await good.mkdir(d) is True
    bad = make(password=WRONG_PASSWORD)
    err = await fails(Unauthenticated, bad.exists(d))
    assert "LOGON_FAILURE" in str(err)
    await fails(Unauthenticated, bad.mkdir(f"{d}/x"))
    # The good session is unharmed and still answers.
    assert await good.exists(d) is True
    assert await good.mkdir(f"{d}/y") is True


async def test_wrong_password_never_reuses_a_good_session(
    make: Callable[..., SmbBackend], server: SambaServer
) -> None:
    good = make(SMB_WRITER2)
    d = unique()
    assert await good.mkdir(d) is True  # a live, authenticated session exists now
    late = make(SMB_WRITER2, password=WRONG_PASSWORD)
    await fails(Unauthenticated, late.exists(d))
    await fails(Unauthenticated, late.mkdir(f"{d}/sneaky"))
    assert not (server.share_path("csi") / d / "sneaky").exists()

    pool = SmbBackendPool(SETTINGS)
    try:
        pooled_good = pool.get(
            HOST, server.port, "csi", Credentials(SMB_WRITER2, server.password(SMB_WRITER2))
        )
        assert await pooled_good.exists(d) is True
        pooled_bad = pool.get(HOST, server.port, "csi", Credentials(SMB_WRITER2, WRONG_PASSWORD))
        assert pooled_bad is not pooled_good
        await fails(Unauthenticated, pooled_bad.exists(d))
        assert WRONG_PASSWORD not in repr(pool.keys)
    finally:
        await pool.aclose()


async def test_read_only_user_cannot_write(make: Callable[..., SmbBackend]) -> None:
    writer, reader = make(SMB_WRITER), make(SMB_READER)
    d = unique()
    await writer.mkdir(d)
    assert await reader.exists(d) is True
    await fails(PermissionDenied, reader.mkdir(f"{d}/x"))
    await fails(PermissionDenied, reader.remove_tree(d))
    assert await writer.exists(d) is True


async def test_missing_share_is_failed_precondition(make: Callable[..., SmbBackend]) -> None:
    backend = make(share="no-such-share")
    err = await fails(FailedPrecondition, backend.exists("x"))
    assert "share" in str(err)
    await fails(FailedPrecondition, backend.remove_tree("x"))


# --- server faults ---------------------------------------------------------------


async def test_stopped_server_is_unavailable_until_it_is_back(
    make: Callable[..., SmbBackend], server: SambaServer
) -> None:
    backend = make()
    d = unique()
    await backend.mkdir(d)
    server.stop()
    try:
        await fails(Unavailable, backend.exists(d))
        await fails(Unavailable, backend.mkdir(f"{d}/x"))
        await fails(Unavailable, make().capacity())  # never connected at all
    finally:
        server.start()
    assert await backend.mkdir(f"{d}/x") is True


async def test_reconnects_after_restart_and_crash(
    make: Callable[..., SmbBackend], server: SambaServer
) -> None:
    backend = make()
    d = unique()
    await backend.mkdir(d)
    server.restart()
    assert await backend.mkdir(f"{d}/after-restart") is True
    server.kill()
    server.start()
    assert await backend.exists(f"{d}/after-restart") is True
    assert await backend.mkdir(f"{d}/after-crash") is True
    assert len(tcp_to(server.port)) == 1


async def test_hung_server_times_out_with_bounded_threads(
    make: Callable[..., SmbBackend], server: SambaServer
) -> None:
    # op_timeout leaves room for a new session on a loaded machine after aclose.
    settings = SmbSettings(op_timeout=1.0, close_timeout=0.3, max_in_flight=2)
    backend = make(settings=settings)
    d = unique()
    await backend.mkdir(d)
    server.pause()
    try:
        results = await asyncio.gather(
            *(backend.exists(f"{d}/{i}") for i in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, DeadlineExceeded) for r in results), results
        for r in results:
            assert isinstance(r, BaseException)
            ERRORS.append(r)
        prefix = f"smb-{backend.key.server}:{backend.key.port}"
        step_threads = [t for t in threading.enumerate() if t.name.startswith(prefix)]
        assert 0 < len(step_threads) <= 2
        started = time.monotonic()
        await backend.aclose()  # must not hang on the hung server
        assert time.monotonic() - started < 2.0
    finally:
        server.resume()
    assert await backend.mkdir(f"{d}/after") is True  # usable again after aclose
    leftovers = [t for t in threading.enumerate() if t.name.startswith("smb-close")]
    assert len(leftovers) <= 1
