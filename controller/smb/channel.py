"""How SMB steps reach the server: the ``Channel`` Protocol and its in-process kind.

Design (the facts behind it are in ``shared/notes/libraries.md``):

* **One private connection cache per credential key** (server, port, domain,
  user, keyed hash of the password).  smbprotocol's global cache matches
  sessions by user name only, so a wrong password would silently reuse a good
  session; a private ``connection_cache`` dict per key makes that impossible,
  and two keys never share a TCP connection or a session.  A
  :class:`Connection` is that cache, on the blocking side.
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
  retried once.  ``rename`` is not retried: its outcome would be ambiguous.

A :class:`ThreadChannel` runs the steps in this process; the worker process
(``controller.smb.worker``) offers channels of the same Protocol whose steps
run in a child process, through the same :class:`Gate`.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypeVar

import smbclient
from smbprotocol.exceptions import SMBConnectionClosed, SMBResponseException

from controller.smb.errors import Status, detach, ntstatus
from controller.smb.kerberos import KerberosLogon
from driver.aio import forget_late_result
from driver.errors import DeadlineExceeded, DriverError
from driver.log import get_logger

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from controller.smb.steps import Step

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
log = get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class SmbSettings:
    """Limits and timeouts of one SMB connection (one credential key)."""

    max_in_flight: int = 8
    """Operations in flight per connection; also the size of its thread pool."""
    op_timeout: float = 30.0
    """Seconds for one SMB step, waiting for a free slot included."""
    connect_timeout: float = 10.0
    """Seconds for the TCP connect (smbprotocol ``connection_timeout``)."""
    close_timeout: float = 2.0
    """Seconds ``aclose`` waits for a polite logoff before cutting the sockets."""
    auth_protocol: Literal["negotiate", "ntlm", "kerberos"] = "negotiate"
    encrypt: bool | None = None
    """None: as the server requires; True: insist on SMB3 encryption."""
    require_signing: bool = True

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            msg = "max_in_flight must be at least 1"
            raise ValueError(msg)
        if min(self.op_timeout, self.connect_timeout, self.close_timeout) <= 0:
            msg = "timeouts must be positive"
            raise ValueError(msg)


# A per-process random key: digests identify a password inside this process
# only, cannot be compared across processes and cannot be brute-forced from a log.
_DIGEST_KEY: Final = secrets.token_bytes(32)


def password_digest(password: str) -> str:
    return hashlib.blake2b(
        password.encode("utf-8", "surrogatepass"), key=_DIGEST_KEY, digest_size=16
    ).hexdigest()


@dataclass(frozen=True, slots=True)
class CredentialKey:
    """What one private connection cache is keyed by (safe to log)."""

    server: str
    port: int
    domain: str | None
    username: str
    password_digest: str


class Secret:
    """A password that does not show up in repr()/str() or pickles."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__

    def __reduce__(self) -> str:
        msg = "a secret cannot be pickled"
        raise TypeError(msg)


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


# --- the blocking side ------------------------------------------------------------


class Connection:
    """Private connection cache, warm-up lock and threads of one credential key."""

    def __init__(
        self,
        key: CredentialKey,
        password: str,
        settings: SmbSettings,
        kerberos: KerberosLogon | None = None,
    ) -> None:
        self.key = key
        self.settings = settings
        self._password = Secret(password)
        self._kerberos = kerberos
        # With Kerberos: pyspnego's credential object (made in an SMB thread).
        self._name = f"{key.domain}\\{key.username}" if key.domain else key.username
        self._user: Any = self._name
        self._conn_key = f"{key.server.lower()}:{key.port}"
        self._cache: dict[str, Any] = {}
        self._warm_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._generation = 0

    def __repr__(self) -> str:
        return f"Connection({self.key.username}@{self.key.server}:{self.key.port})"

    def _kwargs(self) -> dict[str, Any]:
        """smbclient keyword arguments; built in the worker thread, never stored."""
        kerberos = self._kerberos is not None
        return {
            "username": self._user,
            "password": None if kerberos else self._password.reveal(),
            "port": self.key.port,
            "connection_cache": self._cache,
            "connection_timeout": self.settings.connect_timeout,
            "auth_protocol": "kerberos" if kerberos else self.settings.auth_protocol,
            "encrypt": self.settings.encrypt,
            "require_signing": self.settings.require_signing,
        }

    def _ready(self, share_unc: str) -> bool:
        conn = self._cache.get(self._conn_key)
        if conn is None or not conn.transport.connected:
            return False
        wanted = share_unc.lower()
        for session in list(conn.session_table.values()):
            if session.username == self._user:
                return any(
                    t.share_name.lower() == wanted
                    for t in list(session.tree_connect_table.values())
                )
        return False

    def _drop_dead(self) -> None:
        conn = self._cache.get(self._conn_key)
        if conn is not None and not conn.transport.connected:
            self._cache.pop(self._conn_key, None)
            try:
                conn.disconnect(close=False)
            except Exception:
                log.debug("closing a dead SMB connection failed", exc_info=True)

    def _log_on_again(self, exc: BaseException, generation: int, share_unc: str) -> None:
        """A Kerberos session ends when its ticket does: a new logon gets fresh
        tickets.  Anything else is re-raised.  (smbclient raises it as
        SMBOSError, smbprotocol as SMBResponseException.)"""
        if ntstatus(exc) != Status.NETWORK_SESSION_EXPIRED or generation != self._generation:
            raise exc
        log.info("SMB session expired; logging on again", server=self.key.server)
        self._drop_connection()
        self._warm_up(share_unc)

    def _drop_connection(self) -> None:
        conn = self._cache.pop(self._conn_key, None)
        if conn is not None:
            try:
                conn.disconnect(close=True)
            except Exception:
                log.debug("closing an expired SMB connection failed", exc_info=True)

    def _warm_up(self, share_unc: str) -> None:
        """Connection, session and tree connect, opened by one thread at a time."""
        if self._ready(share_unc):
            return
        if not self._warm_lock.acquire(timeout=self.settings.op_timeout):
            msg = "waited too long for another thread to open the SMB session"
            raise TimeoutError(msg)
        try:
            if self._ready(share_unc):
                return
            self._drop_dead()
            if self._kerberos is not None and isinstance(self._user, str):
                self._user = self._kerberos.credential()
            kw = self._kwargs()
            smbclient.register_session(
                self.key.server,
                username=kw["username"],
                password=kw["password"],
                port=self.key.port,
                encrypt=self.settings.encrypt,
                connection_timeout=self.settings.connect_timeout,
                connection_cache=self._cache,
                auth_protocol=kw["auth_protocol"],
                require_signing=self.settings.require_signing,
            )
            # The tree connect; it also tells a missing share apart early.
            smbclient.stat(share_unc, **kw)
            log.debug(
                "SMB session ready",
                user=self.key.username,
                server=self.key.server,
                port=self.key.port,
                share=share_unc,
            )
        finally:
            self._warm_lock.release()

    def call(self, share_unc: str, step: Step[T], args: tuple[Any, ...], *, retry: bool) -> T:
        """Run ``step`` in the calling thread (raw library exceptions)."""
        generation = self._generation
        try:
            self._warm_up(share_unc)
        except (SMBResponseException, OSError) as exc:
            # (a tree connect on a session that has expired meanwhile)
            self._log_on_again(exc, generation, share_unc)
        try:
            return step.fn(*args, **self._kwargs())
        except SMBConnectionClosed:
            # The connection died under this call.  Reconnect and repeat once,
            # unless the connection is being closed or the step is not idempotent.
            if not retry or generation != self._generation:
                raise
        except (SMBResponseException, OSError) as exc:
            # The server refused the request before acting on it: even a
            # rename may repeat.
            self._log_on_again(exc, generation, share_unc)
            return step.fn(*args, **self._kwargs())
        log.info(
            "SMB connection was closed; reconnecting", server=self.key.server, port=self.key.port
        )
        self._warm_up(share_unc)  # drops the dead connection under the lock
        return step.fn(*args, **self._kwargs())

    def start(
        self, share_unc: str, step: Step[T], args: tuple[Any, ...], *, retry: bool
    ) -> Future[T]:
        """Run ``step`` in this connection's threads; the future has the raw outcome."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.settings.max_in_flight,
                thread_name_prefix=f"smb-{self.key.server}:{self.key.port}",
            )
        return self._executor.submit(self.call, share_unc, step, args, retry=retry)

    def scrub(self, exc: BaseException, op: str, path: str) -> DriverError:
        """``exc`` as a domain error that holds no trace of the password."""
        return detach(exc, op, path, self._password.reveal() or _kerberos_text(self._kerberos))

    def close(self) -> None:
        """Log off within ``close_timeout``, then cut the sockets (blocking).

        Best effort against concurrency: a step that is opening a connection at
        this very moment may leave it open until the next close.
        """
        self._generation += 1
        executor, self._executor = self._executor, None
        connections = list(self._cache.values())
        self._cache.clear()
        if connections:
            done = threading.Event()

            def polite() -> None:
                for conn in connections:
                    try:
                        conn.disconnect(close=True)
                    except Exception:
                        log.debug("SMB logoff failed", exc_info=True)
                        _cut(conn)
                done.set()

            # Daemon threads: a hung server must not keep the process alive.
            threading.Thread(target=polite, name="smb-close", daemon=True).start()
            if not done.wait(self.settings.close_timeout):
                log.warning(
                    "SMB server did not answer the logoff; closing the sockets",
                    server=self.key.server,
                    port=self.key.port,
                )
                for conn in connections:
                    threading.Thread(target=_cut, args=(conn,), name="smb-cut", daemon=True).start()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if self._kerberos is not None:
            self._kerberos.forget()
            self._user = self._name  # a later warm-up makes the credential again


def _kerberos_text(logon: KerberosLogon | None) -> str:
    return logon.secret_texts()[0] if logon is not None else ""


def _cut(conn: Any) -> None:
    """Shut the socket down: wakes every thread waiting on this connection."""
    try:
        conn.transport.close()
    except Exception:
        log.debug("closing an SMB socket failed", exc_info=True)


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
