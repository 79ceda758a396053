"""How an NFS backend call reaches the server: connection, deadline, retries.

Every call runs ``body`` on a connected :class:`NfsOps` within the
backend's ``timeout`` (DeadlineExceeded past it).  A call that timed out
without a single reply arriving on its connection meanwhile marks the
connection as hung: it is torn down and the next call connects afresh.
"Try again later" answers (BUSY: NFSv4 GRACE/DELAY, NFSv3 JUKEBOX) are
retried with backoff while the caller's deadline and our own bound leave
time; what is still busy then is Unavailable.  A call that met a broken
connection is tried once more on a new one if it is idempotent
(``driver.retry.on_broken_connection``); a call on an open file handle is
not: the handle does not survive a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from controller.nfs.context import NfsContext
from controller.nfs.errors import ConnectionLost
from controller.nfs.ops import NfsOps
from controller.nfs.treeops import REMOVE_CONCURRENCY
from driver import rpc
from driver.errors import DeadlineExceeded, DriverError, Unavailable
from driver.failures import Failure
from driver.log import get_logger
from driver.retry import on_broken_connection

log = get_logger(__name__)

T = TypeVar("T")

#: Backoff between retries of a BUSY answer: doubling from the first to the
#: last, within the call's time budget.
BUSY_FIRST_DELAY: Final = 0.1
BUSY_MAX_DELAY: Final = 2.0
#: Time kept back from the caller's deadline for the answer to reach it.
RPC_REPLY_MARGIN: Final = 0.5


class NfsCalls:
    """The calls of one backend over its one connection (``NfsContext``)."""

    def __init__(self, nfs: NfsContext, *, server: str, timeout: float, v4: bool) -> None:
        self.nfs = nfs
        self.ops = NfsOps(nfs)
        self._server = server
        self._timeout = timeout
        self._v4 = v4
        # asyncio primitives belong to one loop: made anew for each loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connect_lock = asyncio.Lock()
        self.remove_slots = asyncio.Semaphore(REMOVE_CONCURRENCY)
        self._open_lock = asyncio.Lock()

    async def _connected(self) -> NfsOps:
        if not self.nfs.connected:
            async with self._connect_lock:
                if not self.nfs.connected:
                    await self.nfs.connect()
        return self.ops

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._connect_lock = asyncio.Lock()
            self.remove_slots = asyncio.Semaphore(REMOVE_CONCURRENCY)
            self._open_lock = asyncio.Lock()

    async def run(
        self,
        op: str,
        body: Callable[[NfsOps], Awaitable[T]],
        *,
        generation: int | None = None,
    ) -> T:
        """Run ``body`` on a connected context within the deadline.

        With ``generation`` (a call on an open file handle) the call must
        run on that very connection: a handle does not survive a reconnect
        (it would be a dangling pointer), so a changed or lost connection is
        Unavailable and nothing is retried.
        """
        self._bind_loop()
        started = time.monotonic()
        left = rpc.time_left()
        # Answer before the caller gives up, so it sees UNAVAILABLE and not
        # its own DEADLINE_EXCEEDED.
        budget = self._timeout if left is None else min(self._timeout, left - RPC_REPLY_MARGIN)
        delay = BUSY_FIRST_DELAY
        tries = 0
        try:
            async with asyncio.timeout(self._timeout):
                while True:
                    try:
                        return await self._attempt(op, body, generation)
                    except DriverError as exc:
                        if exc.failure is not Failure.BUSY:
                            raise
                        tries += 1
                        spent = time.monotonic() - started
                        # Leave room for one more try after the wait.
                        wait = min(delay, budget - spent - BUSY_FIRST_DELAY)
                        if wait <= 0:
                            raise Unavailable(
                                f"{exc.message}: still busy after {tries} tries in "
                                f"{spent:.1f} s; retry later"
                            ) from None
                        log.info("nfs: busy; retrying", op=op, error=exc.message, wait=wait)
                        await asyncio.sleep(wait)
                        delay = min(delay * 2, BUSY_MAX_DELAY)
        except TimeoutError:
            nfs = self.nfs
            if nfs.last_reply_at < started and nfs.connected:
                # Not one reply since this call began: the connection is hung
                # (server stopped or gone without a reset).  Start over.
                log.warning(
                    "nfs: server not answering; dropping the connection", server=self._server
                )
                nfs.close(Unavailable(f"nfs: {self._server} stopped answering"))
            raise DeadlineExceeded(
                f"nfs {op}: no answer from {self._server} within {self._timeout:g} s"
            ) from None

    async def _attempt(
        self, op: str, body: Callable[[NfsOps], Awaitable[T]], generation: int | None
    ) -> T:
        async def once() -> T:
            return await body(await self._ops_for(op, generation))

        def reconnect(exc: Exception) -> None:
            # E.g. the server restarted and this call met the dead socket first.
            message = exc.message if isinstance(exc, DriverError) else str(exc)
            log.info("nfs: retrying on a new connection", op=op, error=message)
            self.nfs.close(ConnectionLost(message))

        policy = on_broken_connection(idempotent=generation is None)
        return await policy.run_async(
            once, retry_if=lambda exc: isinstance(exc, ConnectionLost), before_retry=reconnect
        )

    async def _ops_for(self, op: str, generation: int | None) -> NfsOps:
        if generation is None:
            return await self._connected()
        if not self.nfs.connected or self.nfs.generation != generation:
            raise Unavailable(
                f"nfs {op}: the connection to {self._server} was reset; the open file is gone"
            )
        return self.ops

    def seqid(self) -> contextlib.AbstractAsyncContextManager[object]:
        """NFSv4.0 numbers OPEN and CLOSE per open-owner (``seqid``), and
        libnfs uses one open-owner per connection: two in flight at once
        reach the server out of order (measured: NFS4ERR_BAD_SEQID, then
        BAD_STATEID).  So they go one at a time; READ/WRITE do not count."""
        if not self._v4:
            return contextlib.nullcontext()
        return self._open_lock

    # -- HandleCalls (controller.nfs.files) ---------------------------------

    async def on_handle(
        self, op: str, body: Callable[[NfsOps], Awaitable[T]], generation: int
    ) -> T:
        """Run ``body`` within the deadline on connection ``generation`` only."""
        return await self.run(op, body, generation=generation)

    async def close_handle(
        self, fh: int, path: str, generation: int, *, strict: bool = False
    ) -> None:
        """Close an open file.  On a connection that is gone the handle went
        with it: nothing to do.  Errors count only with ``strict`` (the
        close after writing: NFSv4 CLOSE may report a late write error)."""
        nfs = self.nfs
        if not nfs.connected or nfs.generation != generation:
            return
        try:
            async with self.seqid():
                await self.run("close", lambda c: c.close_file(fh, path), generation=generation)
        except DriverError:
            if strict:
                raise
            log.debug("nfs: closing a file failed", path=path, exc_info=True)
