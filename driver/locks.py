"""Per-volume try-locks.

A CSI caller retries; two operations on one volume at once are never useful.
The second caller gets ABORTED at once instead of queueing behind the first.
A lock may outlive the RPC that took it: when a mount times out, the RPC
returns but the lock stays held until the mount process has really ended
(:meth:`VolumeLock.release_after`), so kubelet retries cannot pile up mounts.
:meth:`VolumeLocks.hold` does that hand-over for work whose timeout or
cancellation says what is still running (a ``finished`` attribute).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from types import TracebackType

from driver.errors import Aborted, DeadlineExceeded


class VolumeLocks:
    def __init__(self) -> None:
        self._held: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    def __contains__(self, key: str) -> bool:
        return key in self._held

    def __len__(self) -> int:
        return len(self._held)

    def acquire(self, key: str, *, what: str = "volume") -> VolumeLock:
        """Take the lock for ``key`` or raise Aborted; use as a context manager."""
        if key in self._held:
            raise Aborted(f"an operation on {what} {key} is already in progress")
        self._held.add(key)
        return VolumeLock(self, key)

    @contextlib.contextmanager
    def hold(self, key: str, *, what: str = "volume") -> Iterator[VolumeLock]:
        """:meth:`acquire`, kept past the ``with`` block by work that outlives
        it: a DeadlineExceeded (or cancellation) carrying a ``finished``
        awaitable, e.g. a killed mount still stuck in the kernel, hands the
        lock over until that has finished."""
        with self.acquire(key, what=what) as lock:
            try:
                yield lock
            except (DeadlineExceeded, asyncio.CancelledError) as exc:
                finished = getattr(exc, "finished", None)
                if finished is not None:
                    lock.release_after(finished)
                raise

    def _release(self, key: str) -> None:
        self._held.discard(key)

    async def wait_idle(self) -> None:
        """Wait for locks handed over to background work (used at shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)


class VolumeLock:
    def __init__(self, owner: VolumeLocks, key: str) -> None:
        self._owner = owner
        self.key = key
        self._handed_over = False
        self._released = False

    def release_after(self, work: Awaitable[object]) -> None:
        """Keep holding the lock until ``work`` finishes, then release it."""
        self._handed_over = True

        async def wait_then_release() -> None:
            try:
                await work
            except BaseException:  # noqa: BLE001, S110 - only the end matters, not the outcome
                pass
            finally:
                self.release()

        task = asyncio.get_running_loop().create_task(wait_then_release())
        self._owner._background.add(task)
        task.add_done_callback(self._owner._background.discard)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._owner._release(self.key)

    def __enter__(self) -> VolumeLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._handed_over:
            self.release()
