"""How SMB steps reach the server: the ``Channel`` Protocol and its in-process kind.

Design (the facts behind it are in ``shared/notes/libraries.md``):

* **One private connection cache per credential key** (server, port, domain,
  user, keyed hash of the password).  smbprotocol's global cache matches
  sessions by user name only, so a wrong password would silently reuse a good
  session; a private ``connection_cache`` dict per key makes that impossible,
  and two keys never share a TCP connection or a session.  A
  :class:`Connection` (``controller.smb.connection``) is that cache, on the
  blocking side.
* **Warm-up under a lock.** The first use of a cache (and the first use after
  the connection died) opens the connection, the session and the tree connect
  under a ``threading.Lock`` in the worker thread, so concurrent first calls
  open one session instead of one each.
* **Bounded concurrency.** smbprotocol does not queue for credits, so at most
  ``max_in_flight`` (default 8) steps run per connection, in a dedicated
  ``ThreadPoolExecutor`` of exactly that size (never the loop's default
  executor).  The :class:`Gate` holds the same number of slots on the event
  loop's side.
* **Per-step timeout.** Each step is bounded by ``op_timeout`` (waiting for a
  slot included) and raises ``DeadlineExceeded``.  A thread blocked on a hung
  server cannot be cancelled: it keeps its slot until the server answers or
  the connection is closed, so a hung server ties up at most
  ``max_in_flight`` threads per credential key and later calls fail fast with
  ``DeadlineExceeded`` instead of piling up threads.  ``aclose()`` shuts the
  sockets down, which wakes every such thread.  Call it before the process
  exits: the interpreter joins executor threads at exit.
* **Reconnect.** smbclient opens a new connection when the cached one is
  closed (measured: after a server restart the next call works).  If a call
  still fails with ``SMBConnectionClosed`` (the connection died while the call
  was in flight), the dead connection is dropped and an idempotent step is
  retried once (``driver.retry.on_broken_connection``, the rule NFS follows
  too).  ``rename`` is not retried: its outcome would be ambiguous.

A :class:`ThreadChannel` runs the steps in this process; the worker process
(``controller.smb.worker``) offers channels of the same Protocol whose steps
run in a child process, through the same :class:`Gate`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from controller.smb.connection import (
    Connection,
    CredentialKey,
    Secret,
    SmbSettings,
    password_digest,
)
from controller.smb.kerberos import KerberosLogon
from driver.aio import forget_late_result
from driver.errors import DeadlineExceeded, DriverError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from controller.smb.steps import Step

# The connection's names are re-exported: every user of a channel names them.
__all__ = [
    "Channel",
    "ChannelMaker",
    "Connection",
    "CredentialKey",
    "Gate",
    "Secret",
    "SmbSettings",
    "ThreadChannel",
    "ThreadChannels",
    "password_digest",
]

T = TypeVar("T")


class Channel(Protocol):
    """Runs steps against one credential key's connection, bounded and timed.

    Every failure comes out as a ``driver.errors`` domain error, scrubbed of
    the password.  ``op`` and ``path`` name the step in error messages.
    """

    @property
    def key(self) -> CredentialKey: ...

    @property
    def settings(self) -> SmbSettings: ...

    async def run(
        self, op: str, path: str, share_unc: str, step: Step[T], *args: Any, retry: bool = True
    ) -> T: ...

    async def aclose(self) -> None:
        """Log the connection off (it reopens on next use)."""
        ...


class ChannelMaker(Protocol):
    """Makes the channel of each credential key (one per key and pool)."""

    def channel(
        self,
        key: CredentialKey,
        password: str,
        settings: SmbSettings,
        kerberos: KerberosLogon | None = None,
    ) -> Channel:
        """``kerberos``: log on with it instead of the (then empty) password."""
        ...

    async def aclose(self) -> None: ...


# --- the event-loop side -------------------------------------------------------------


class Gate:
    """Slots and the per-step timeout of one channel, on the event loop's side."""

    def __init__(
        self, settings: SmbSettings, scrub: Callable[[BaseException, str, str], DriverError]
    ) -> None:
        self._settings = settings
        self._scrub = scrub
        self._slots = asyncio.Semaphore(settings.max_in_flight)

    async def run(self, op: str, path: str, start: Callable[[], Awaitable[asyncio.Future[T]]]) -> T:
        """Take a slot, ``start`` the step and wait for it, bounded by ``op_timeout``."""
        timeout = asyncio.timeout(self._settings.op_timeout)
        failure: Exception
        try:
            async with timeout:
                await self._slots.acquire()
                try:
                    future = await start()
                except BaseException:
                    self._slots.release()
                    raise
                # The slot is freed when the step is done, not when we stop
                # waiting: a thread stuck on a hung server keeps its slot.
                future.add_done_callback(self._release)
                return await asyncio.shield(future)
        except Exception as exc:  # noqa: BLE001 - every failure is mapped to a domain error below
            failure = exc
        # Raised outside the except block, so the library exception is not
        # attached as __context__ behind our back.
        if isinstance(failure, TimeoutError) and timeout.expired():
            err: DriverError = DeadlineExceeded(
                f"SMB {op} {path!r}: no answer within {self._settings.op_timeout:g}s "
                "(the server may be hung; the step may still complete)"
            )
        else:
            err = self._scrub(failure, op, path)
        del failure
        raise err

    def _release(self, future: asyncio.Future[Any]) -> None:
        self._slots.release()
        forget_late_result(future)  # a late failure after a timeout is expected


class ThreadChannel:
    """A :class:`Channel` whose steps run in this process's threads."""

    def __init__(
        self,
        key: CredentialKey,
        password: str,
        settings: SmbSettings,
        kerberos: KerberosLogon | None = None,
    ) -> None:
        self._connection = Connection(key, password, settings, kerberos)
        self._gate = Gate(settings, self._connection.scrub)

    def __repr__(self) -> str:
        key = self.key
        return f"ThreadChannel({key.username}@{key.server}:{key.port})"

    @property
    def key(self) -> CredentialKey:
        return self._connection.key

    @property
    def settings(self) -> SmbSettings:
        return self._connection.settings

    async def run(
        self, op: str, path: str, share_unc: str, step: Step[T], *args: Any, retry: bool = True
    ) -> T:
        async def start() -> asyncio.Future[T]:
            return asyncio.wrap_future(self._connection.start(share_unc, step, args, retry=retry))

        return await self._gate.run(op, path, start)

    async def aclose(self) -> None:
        """Log off politely within ``close_timeout``, then cut the sockets."""
        await asyncio.to_thread(self._connection.close)


class ThreadChannels:
    """The :class:`ChannelMaker` of steps that run in this process."""

    def channel(
        self,
        key: CredentialKey,
        password: str,
        settings: SmbSettings,
        kerberos: KerberosLogon | None = None,
    ) -> Channel:
        return ThreadChannel(key, password, settings, kerberos)

    async def aclose(self) -> None:
        """Nothing beyond the channels, which their pool closes."""
