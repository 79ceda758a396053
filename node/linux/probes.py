"""Blocking filesystem calls on possibly dead mounts, bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

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
        self._pending: dict[str, asyncio.Future[Any]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def call(
        self,
        key: str,
        fn: Callable[[], T],
        timeout: float,  # noqa: ASYNC109 - bounds the wait; the thread itself cannot be stopped
    ) -> T:
        fut = self._pending.get(key)
        if fut is None:
            if len(self._pending) >= self._limit:
                raise ProbesExhausted(f"{len(self._pending)} earlier probes are still stuck")
            fut = self._start(key, fn)
        try:
            result: T = await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise ProbeTimeout(f"no answer within {timeout:g} s") from None
        return result

    def _start(self, key: str, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if fut.done():
                return
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

        def work() -> None:
            try:
                value, ok = fn(), True
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                value, ok = exc, False
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, ok, value)

        def forget(done: asyncio.Future[Any]) -> None:
            if self._pending.get(key) is done:
                del self._pending[key]
            if not done.cancelled():
                done.exception()  # retrieved: an abandoned probe's error is not "lost"

        fut.add_done_callback(forget)
        self._pending[key] = fut
        threading.Thread(target=work, name=f"probe {key}", daemon=True).start()
        return fut
