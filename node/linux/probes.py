"""Blocking filesystem calls on possibly dead mounts, bounded in time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from driver.aio import SingleFlight, in_daemon_thread

T = TypeVar("T")

# At most this many probe threads may be stuck on dead servers at once.
MAX_PROBES = 64


class ProbeTimeout(Exception):
    """A probe did not answer within its bound (its thread is abandoned)."""


class ProbesExhausted(ProbeTimeout):
    """Too many earlier probes are stuck to start another one: the answer is
    unknown (not evidence that this path is broken)."""


class Prober:
    """Blocking filesystem calls with a time bound.

    Each call runs in its own daemon thread: a thread stuck on a dead server
    cannot be cancelled, only abandoned, and a daemon thread does not keep the
    process from exiting (executor threads would be joined at shutdown).  At
    most one call per key is in flight: a second caller waits for the first
    call's answer instead of starting another thread, so the number of stuck
    threads is bounded by the number of paths (and by ``limit``).
    """

    def __init__(self, limit: int = MAX_PROBES) -> None:
        self._limit = limit
        self._flights: SingleFlight[str, Any] = SingleFlight()

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def call(
        self,
        key: str,
        fn: Callable[[], T],
        timeout: float,  # noqa: ASYNC109 - bounds the wait; the thread itself cannot be stopped
    ) -> T:
        if not self._flights.busy(key) and len(self._flights) >= self._limit:
            raise ProbesExhausted(f"{len(self._flights)} earlier probes are still stuck")

        def work() -> asyncio.Future[T]:  # a future, not a task: nothing to leak
            return in_daemon_thread(fn, name=f"probe {key}")

        try:
            result: T = await self._flights.run(key, work, timeout)
        except TimeoutError:
            raise ProbeTimeout(f"no answer within {timeout:g} s") from None
        return result
