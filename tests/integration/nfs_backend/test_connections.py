"""NfsBackend against a real nfs-ganesha (v4 and v3): connection problems, a
server killed, restarted or paused, reuse after aclose, the pool, and latency."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from controller.nfs.backend import NfsBackend
from controller.nfs.pool import NfsBackendPool
from driver.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from tests.harness import wait_until
from tests.integration.nfs_backend.support import FAULT_TIMEOUT, TIMEOUT, Target
from tests.servers.ganesha import GaneshaServer

pytestmark = pytest.mark.integration


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
        # The request has reached the stopped server: it waits there, unread.
        await wait_until(lambda: faulty.server.unread_bytes() > 0)
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


async def test_a_hundred_mkdirs_in_a_row_on_one_backend(target: Target, base: str) -> None:
    # Their speed is measured in `make bench` (tests.bench.provision), not here.
    b = target.backend()
    try:
        await b.exists(base)
        created = [await b.mkdir(f"{base}/m{i}") for i in range(100)]
    finally:
        await b.aclose()
    assert created == [True] * 100
    on_disk = sorted(p.name for p in target.disk(base).iterdir())
    assert on_disk == sorted(f"m{i}" for i in range(100))
