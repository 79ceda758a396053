"""Small asyncio helpers that several parts of the driver need.

* :func:`forget_late_result`: a done callback for work whose caller may have
  stopped waiting (timed out, cancelled); its late error is expected, not
  "never retrieved".
* :class:`SingleFlight`: at most one piece of work per key in flight; later
  callers for the same key wait for that one (bounded in time) instead of
  starting more.  Work stuck on a dead server is then bounded by the number
  of keys, not the number of calls.
* :func:`in_daemon_thread`: a blocking call in a thread of its own that can be
  abandoned (a daemon thread is never joined at exit, unlike executor threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

__all__ = ["SingleFlight", "forget_late_result", "in_daemon_thread"]


def forget_late_result(future: asyncio.Future[Any]) -> None:
    """Done callback: mark the outcome retrieved (nobody may wait any more)."""
    if not future.cancelled():
        future.exception()


class SingleFlight(Generic[K, T]):
    """One piece of work per key at a time, shared by every caller of that key."""

    def __init__(self) -> None:
        self._pending: dict[K, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        """Keys with work in flight (finished or abandoned work is forgotten)."""
        return len(self._pending)

    def busy(self, key: K) -> bool:
        return key in self._pending

    def start(self, key: K, work: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """The work in flight for ``key``, started from ``work`` if there is none.

        ``work`` may return a future (kept as it is) or a coroutine (run as a task).
        """
        future = self._pending.get(key)
        if future is None:
            future = asyncio.ensure_future(work())
            self._pending[key] = future

            def forget(done: asyncio.Future[T]) -> None:
                if self._pending.get(key) is done:
                    del self._pending[key]
                forget_late_result(done)

            future.add_done_callback(forget)
        return future

    async def run(
        self,
        key: K,
        work: Callable[[], Awaitable[T]],
        timeout: float | None = None,  # noqa: ASYNC109 - bounds this caller's wait, not the work
    ) -> T:
        """The outcome of the work for ``key``; TimeoutError after ``timeout``
        seconds (the work goes on for the other callers, or alone)."""
        future = self.start(key, work)
        if timeout is None:
            return await asyncio.shield(future)
        return await asyncio.wait_for(asyncio.shield(future), timeout)

    def cancel_all(self) -> None:
        for future in list(self._pending.values()):
            future.cancel()


def in_daemon_thread(fn: Callable[[], T], *, name: str) -> asyncio.Future[T]:
    """Run blocking ``fn`` in a new daemon thread; its outcome as a future.

    The thread cannot be stopped: a caller that gives up abandons it.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def work() -> None:
        value: Any
        try:
            value, ok = fn(), True
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
            value, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future
