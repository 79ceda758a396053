from __future__ import annotations

import asyncio

import pytest

from driver.errors import Aborted, DeadlineExceeded
from driver.locks import VolumeLocks


def test_try_lock_aborts_second_caller() -> None:
    locks = VolumeLocks()
    with locks.acquire("v1"):
        assert "v1" in locks
        with pytest.raises(Aborted, match="already in progress"):
            locks.acquire("v1")
        with locks.acquire("v2"):  # other volumes are independent
            assert len(locks) == 2
    assert len(locks) == 0
    with locks.acquire("v1"):
        pass


def test_released_on_error() -> None:
    locks = VolumeLocks()
    with pytest.raises(RuntimeError), locks.acquire("v"):
        raise RuntimeError("boom")
    assert "v" not in locks


async def test_lock_outlives_rpc_until_work_ends() -> None:
    locks = VolumeLocks()
    finish = asyncio.Event()

    async def hung_mount() -> None:
        await finish.wait()

    work = asyncio.ensure_future(hung_mount())
    with locks.acquire("v") as lock:
        lock.release_after(work)
    # The RPC returned (e.g. timed out) but the mount still runs: retries abort.
    assert "v" in locks
    with pytest.raises(Aborted):
        locks.acquire("v")
    finish.set()
    await locks.wait_idle()
    assert "v" not in locks


async def test_hold_hands_the_lock_to_work_that_outlives_a_timeout() -> None:
    locks = VolumeLocks()
    finish = asyncio.Event()
    still_running = asyncio.ensure_future(finish.wait())
    timeout = DeadlineExceeded("mount timed out")
    timeout.finished = still_running  # type: ignore[attr-defined]  # what the runner attaches
    with pytest.raises(DeadlineExceeded), locks.hold("v"):
        raise timeout
    assert "v" in locks  # the killed mount has not ended: retries abort
    with pytest.raises(Aborted):
        locks.acquire("v")
    finish.set()
    await locks.wait_idle()
    assert "v" not in locks


def test_hold_releases_on_other_errors_and_plain_timeouts() -> None:
    locks = VolumeLocks()
    with pytest.raises(RuntimeError), locks.hold("v"):
        raise RuntimeError("boom")
    assert "v" not in locks
    with pytest.raises(DeadlineExceeded), locks.hold("v"):
        raise DeadlineExceeded("nothing left running")
    assert "v" not in locks
