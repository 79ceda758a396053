"""controller.jobs: long copies that outlive the RPC, under the volume's lock."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from controller.jobs import DEADLINE_MARGIN, Job, Jobs, budget
from driver.errors import Aborted
from driver.locks import VolumeLocks


class Deadline:
    """An RPC context whose deadline is ``remaining`` seconds away; it records the asks."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining
        self.asked = 0

    def time_remaining(self) -> float | None:
        self.asked += 1
        return self.remaining


def _gated_job() -> tuple[Jobs, VolumeLocks, asyncio.Event, Job[str]]:
    """A job under key "k" for owner "src" that returns "copied" once its gate opens."""
    jobs, locks = Jobs(), VolumeLocks()
    gate = asyncio.Event()

    async def copy() -> str:
        await gate.wait()
        return "copied"

    with locks.acquire("k") as lock:
        job = jobs.start("k", "src", copy(), lock)
    return jobs, locks, gate, job


def test_budget_keeps_a_margin_before_the_deadline() -> None:
    assert budget(object()) is None  # a context without deadlines
    assert budget(Deadline(None)) is None
    assert budget(Deadline(DEADLINE_MARGIN + 9.0)) == 9.0
    assert budget(Deadline(DEADLINE_MARGIN / 2)) == 0.0  # never negative


async def test_a_job_that_ends_in_time_answers_and_leaves_the_registry() -> None:
    jobs, locks, gate, job = _gated_job()
    assert jobs.get("k") is job
    assert (job.owner, job.started_ns > 0) == ("src", True)
    gate.set()
    assert await Jobs.wait(job, Deadline(None)) == (True, "copied")
    await locks.wait_idle()
    assert jobs.get("k") is None
    assert "k" not in locks


async def test_a_job_running_past_the_deadline_goes_on_and_holds_the_lock() -> None:
    jobs, locks, gate, job = _gated_job()
    context = Deadline(DEADLINE_MARGIN)  # no time left to wait
    assert await Jobs.wait(job, context) == (False, None)
    assert context.asked == 1
    assert not job.task.done()
    # The retry finds the job, not a free lock.
    assert jobs.get("k") is job
    with pytest.raises(Aborted):
        locks.acquire("k")
    gate.set()
    assert await Jobs.wait(job, Deadline(None)) == (True, "copied")
    await locks.wait_idle()
    assert jobs.get("k") is None
    assert "k" not in locks


async def test_a_failed_job_raises_to_its_waiter_and_is_logged() -> None:
    jobs, locks = Jobs(), VolumeLocks()

    async def copy() -> str:
        raise OSError("share gone")

    with structlog.testing.capture_logs() as logs:
        with locks.acquire("k") as lock:
            job = jobs.start("k", "src", copy(), lock)
        with pytest.raises(OSError, match="share gone"):
            await Jobs.wait(job, Deadline(None))
        await locks.wait_idle()
    assert jobs.get("k") is None
    assert "k" not in locks
    assert {"event": "job failed", "job": "k", "error": "share gone"}.items() <= logs[0].items()


async def test_a_newer_job_under_the_key_is_not_forgotten_when_an_older_one_ends() -> None:
    jobs, locks = Jobs(), VolumeLocks()
    first_gate, second_gate = asyncio.Event(), asyncio.Event()

    async def copy(gate: asyncio.Event) -> None:
        await gate.wait()

    with locks.acquire("a") as lock:
        first = jobs.start("k", "one", copy(first_gate), lock)
    with locks.acquire("b") as lock:
        second = jobs.start("k", "two", copy(second_gate), lock)
    first_gate.set()
    assert await Jobs.wait(first, Deadline(None)) == (True, None)
    assert jobs.get("k") is second
    second_gate.set()
    await Jobs.wait(second, Deadline(None))
    await locks.wait_idle()
    assert jobs.get("k") is None


async def test_aclose_cancels_running_jobs_and_waits_for_their_cleanup() -> None:
    jobs, locks = Jobs(), VolumeLocks()
    cleaned: list[str] = []
    started = asyncio.Event()

    async def copy() -> None:
        try:
            started.set()
            await asyncio.Event().wait()  # a copy that never ends by itself
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits (removing the temp dir)
            cleaned.append("tmp")

    with locks.acquire("k") as lock:
        job = jobs.start("k", "src", copy(), lock)
    await started.wait()
    await jobs.aclose()
    assert cleaned == ["tmp"]
    assert job.task.cancelled()
    await locks.wait_idle()
    assert jobs.get("k") is None
    assert "k" not in locks
