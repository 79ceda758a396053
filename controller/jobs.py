"""Long copies (snapshots, restores, clones) that outlive the RPC that started them.

A CO gives each RPC a deadline (csi-provisioner: 10 s by default,
csi-snapshotter: 60 s), and a large volume takes longer to copy.  So the
copy runs as a job, keyed like the per-volume lock and holding that lock
until it ends; the RPC waits for it only until shortly before its deadline.
The CO's retry of the same request finds the job still running and waits
on it again, instead of starting over or getting ABORTED.  A finished job
leaves the registry; its result is on the share (the archive or the
directory renamed into place) and the next retry finds it there.

Not :class:`driver.aio.SingleFlight`, although both keep work per key: a
caller looks a job up before it takes the lock and refuses one started for
another owner (ALREADY_EXISTS / ABORTED) instead of joining it; it starts a
job only after checking the share under the lock, and the job then holds
that lock; a wait that reaches the RPC's deadline is an answer ("still
running"), not an error; a snapshot reports when its job started; shutdown
waits for cancelled jobs to remove their temporary files; and a job that
fails after every waiter left is logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

from driver.locks import VolumeLock
from driver.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")

#: Seconds kept back from the RPC deadline to answer before it expires.
DEADLINE_MARGIN: Final = 1.0


class HasDeadline(Protocol):
    def time_remaining(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Job(Generic[T]):
    task: asyncio.Task[T]
    owner: str  # what the job works for (e.g. the source volume ID): idempotency checks
    started_ns: int  # wall clock


def budget(context: object) -> float | None:
    """Seconds this RPC may still wait (None: no deadline)."""
    remaining = getattr(context, "time_remaining", None)
    if remaining is None:
        return None
    value = remaining()
    if value is None:
        return None
    return max(0.0, float(value) - DEADLINE_MARGIN)


class Jobs:
    def __init__(self) -> None:
        self._running: dict[str, Job[Any]] = {}

    def get(self, key: str) -> Job[Any] | None:
        return self._running.get(key)

    def start(self, key: str, owner: str, work: Coroutine[Any, Any, T], lock: VolumeLock) -> Job[T]:
        """Run ``work`` in the background; ``lock`` is released when it ends."""
        task = asyncio.get_running_loop().create_task(work, name=f"job {key}")
        job = Job(task, owner, time.time_ns())
        self._running[key] = job
        lock.release_after(task)

        def finished(done: asyncio.Task[T]) -> None:
            if self._running.get(key) is job:
                del self._running[key]
            if not done.cancelled() and done.exception() is not None:
                log.info("job failed", job=key, error=str(done.exception()))

        task.add_done_callback(finished)
        return job

    @staticmethod
    async def wait(job: Job[T], context: object) -> tuple[bool, T | None]:
        """(True, result) when the job ended within the RPC's budget (its
        error is raised), else (False, None): it keeps running."""
        limit = budget(context)
        try:
            async with asyncio.timeout(limit):
                return True, await asyncio.shield(job.task)
        except TimeoutError:
            if job.task.done():
                return True, job.task.result()
            return False, None

    async def aclose(self) -> None:
        """Cancel every job and wait until they have cleaned up."""
        jobs = list(self._running.values())
        for job in jobs:
            job.task.cancel()
        await asyncio.gather(*(job.task for job in jobs), return_exceptions=True)
