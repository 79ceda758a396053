"""SMB share backend: ``ShareBackend`` over smbprotocol's ``smbclient`` API.

Design (the facts behind it are in ``shared/notes/libraries.md``):

* **One private connection cache per credential key** (server, port, domain,
  user, keyed hash of the password).  smbprotocol's global cache matches
  sessions by user name only, so a wrong password would silently reuse a good
  session; a private ``connection_cache`` dict per key makes that impossible,
  and two keys never share a TCP connection or a session.
* **Warm-up under a lock.** The first use of a cache (and the first use after
  the connection died) opens the connection, the session and the tree connect
  under a ``threading.Lock`` in the worker thread, so concurrent first calls
  open one session instead of one each.
* **Bounded concurrency.** smbprotocol does not queue for credits, so at most
  ``max_in_flight`` (default 8) operations run per connection.  They run in a
  dedicated ``ThreadPoolExecutor`` of exactly that size (never the loop's
  default executor).
* **A worker process, in the controller.** ``SmbBackendPool(worker=...)``
  runs the steps below in one child process (``controller.smb_worker``):
  smbprotocol's Python CPU then does not share the gRPC process's
  interpreter lock.  Slots and timeouts stay on this side; a backend made
  directly (``SmbBackend(...)``) runs its steps in this process.
* **Per-operation timeout.** Each SMB step is bounded by ``op_timeout``
  (waiting for a slot included) and raises ``DeadlineExceeded``.  A thread
  blocked on a hung server cannot be cancelled: it keeps its slot until the
  server answers or the connection is closed, so a hung server ties up at
  most ``max_in_flight`` threads per credential key and later calls fail fast
  with ``DeadlineExceeded`` instead of piling up threads.  ``aclose()`` shuts
  the sockets down, which wakes every such thread.  Call it (or
  ``SmbBackendPool.aclose()``) before the process exits: the interpreter joins
  executor threads at exit.
* **Reconnect.** smbclient opens a new connection when the cached one is
  closed (measured: after a server restart the next call works).  If a call
  still fails with ``SMBConnectionClosed`` (the connection died while the call
  was in flight), the dead connection is dropped and an idempotent step is
  retried once.  ``rename`` is not retried: its outcome would be ambiguous.
* **Errors** are mapped once, by :func:`map_smb_error`, to ``driver.errors``.
  A missing share is ``FailedPrecondition``, not ``NotFound``: it is a
  configuration problem of the StorageClass/secret, and a caller must never
  read it as "the volume is already gone" (DeleteVolume treats NotFound as
  success).  Messages carry the operation, the share-relative path and the
  NT status name, never the password; the original exception is kept as
  ``__cause__`` only with its traceback stripped (frames hold the password as a
  local) and only if no text of it contains the password.
* **Modes.** SMB has no POSIX mode bits in general, so ``mkdir(mode=...)`` is
  accepted and ignored; ownership and permissions follow the server's share
  configuration (e.g. ``create mask``/``directory mask``, ``force user``).
* **Read-only entries.** ``remove_tree`` clears ``FILE_ATTRIBUTE_READONLY`` on
  directories before emptying them (Samba with ``map readonly = yes`` maps it to
  the owner's write bit; Windows refuses to delete read-only directories) and
  smbclient clears it on each file in the same compound request as the delete.
  Entries the user does not own and may not change stay ``PermissionDenied``.
  Reparse points (symlinks) are removed, not followed; a server that resolves
  symlinks itself (Samba's default ``follow symlinks = yes``) shows them as
  plain directories, which the client cannot tell apart.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import hashlib
import logging
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

# smbprotocol ships no type information (no py.typed): these modules are Any to
# mypy.  Every value that leaves them is converted to a typed one right here.
import smbclient
import smbclient._os as smbclient_os
import smbclient.shutil as smbclient_shutil
from smbprotocol.exceptions import (
    SMBAuthenticationError,
    SMBConnectionClosed,
    SMBException,
    SMBOSError,
    SMBResponseException,
)
from smbprotocol.header import NtStatus

from controller.backend import Capacity, Features, FileInfo, FileKind
from driver.credentials import Credentials
from driver.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DriverError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from controller.smb_worker import SmbWorker

__all__ = [
    "SMB_FEATURES",
    "SmbBackend",
    "SmbBackendPool",
    "SmbReader",
    "SmbSettings",
    "SmbWriter",
    "check_path",
    "map_smb_error",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")

#: Bytes per read/write step (one trip to a worker thread).
_IO_CHUNK: Final = 1 << 20
#: Bytes per SMB READ/WRITE request: one credit (64 KiB).  Larger requests
#: take several credits each, and concurrent ones then run the session out
#: of credits (measured against Samba: "Request requires 1 credits but only
#: 0 credits are available"); smbprotocol does not queue for credits.  With
#: at most ``max_in_flight`` requests of one credit each, they never run out.
_PIECE: Final = 64 << 10

#: Samba (4.17, measured) resolves symlinks on the server: clients see the
#: target as a plain file or directory, links that leave the share are not
#: listed, and it refuses FSCTL_SET_REPARSE_POINT.  So nothing is a symlink
#: to us, and none can be made.  SMB has no POSIX modes or owners either.
SMB_FEATURES: Final = Features(symlinks=False, modes=False, owners=False, server_copy=True)

# FILE_ATTRIBUTE_* ([MS-FSCC] 2.6)
_ATTR_READONLY: Final = 0x1
_ATTR_DIRECTORY: Final = 0x10
_ATTR_REPARSE_POINT: Final = 0x400


class _St:
    """NTSTATUS values ([MS-ERREF] 2.3.1); smbprotocol's NtStatus lacks some."""

    ACCESS_DENIED: Final = 0xC0000022
    PRIVILEGE_NOT_HELD: Final = 0xC0000061
    WRONG_PASSWORD: Final = 0xC000006A
    LOGON_FAILURE: Final = 0xC000006D
    ACCOUNT_RESTRICTION: Final = 0xC000006E
    INVALID_LOGON_HOURS: Final = 0xC000006F
    INVALID_WORKSTATION: Final = 0xC0000070
    PASSWORD_EXPIRED: Final = 0xC0000071
    ACCOUNT_DISABLED: Final = 0xC0000072
    ACCOUNT_LOCKED_OUT: Final = 0xC0000234
    PASSWORD_MUST_CHANGE: Final = 0xC0000224
    NETWORK_ACCESS_DENIED: Final = 0xC00000CA
    MEDIA_WRITE_PROTECTED: Final = 0xC00000A2
    CANNOT_DELETE: Final = 0xC0000121
    USER_SESSION_DELETED: Final = 0xC0000203
    NETWORK_NAME_DELETED: Final = 0xC00000C9
    BAD_NETWORK_NAME: Final = 0xC00000CC
    NOT_FOUND: Final = 0xC0000225
    NO_SUCH_FILE: Final = 0xC000000F
    OBJECT_NAME_NOT_FOUND: Final = 0xC0000034
    OBJECT_PATH_NOT_FOUND: Final = 0xC000003A
    OBJECT_NAME_COLLISION: Final = 0xC0000035
    OBJECT_NAME_INVALID: Final = 0xC0000033
    OBJECT_PATH_INVALID: Final = 0xC0000039
    OBJECT_PATH_SYNTAX_BAD: Final = 0xC000003B
    NAME_TOO_LONG: Final = 0xC0000106
    INVALID_PARAMETER: Final = 0xC000000D
    DIRECTORY_NOT_EMPTY: Final = 0xC0000101
    NOT_A_DIRECTORY: Final = 0xC0000103
    FILE_IS_A_DIRECTORY: Final = 0xC00000BA
    SHARING_VIOLATION: Final = 0xC0000043
    DELETE_PENDING: Final = 0xC0000056
    DISK_FULL: Final = 0xC000007F
    QUOTA_EXCEEDED: Final = 0xC0000044
    INSUFF_SERVER_RESOURCES: Final = 0xC0000205
    INSUFFICIENT_RESOURCES: Final = 0xC000009A
    IO_TIMEOUT: Final = 0xC00000B5
    SERVER_UNAVAILABLE: Final = 0xC0000466
    REQUEST_NOT_ACCEPTED: Final = 0xC00000D0


_DENIED: Final = frozenset(
    {
        _St.ACCESS_DENIED,
        _St.PRIVILEGE_NOT_HELD,
        _St.WRONG_PASSWORD,
        _St.LOGON_FAILURE,
        _St.ACCOUNT_RESTRICTION,
        _St.INVALID_LOGON_HOURS,
        _St.INVALID_WORKSTATION,
        _St.PASSWORD_EXPIRED,
        _St.ACCOUNT_DISABLED,
        _St.ACCOUNT_LOCKED_OUT,
        _St.PASSWORD_MUST_CHANGE,
        _St.NETWORK_ACCESS_DENIED,
        _St.MEDIA_WRITE_PROTECTED,
        _St.CANNOT_DELETE,
    }
)
_SHARE_MISSING: Final = frozenset({_St.BAD_NETWORK_NAME, _St.NOT_FOUND})
_PATH_MISSING: Final = frozenset(
    {_St.OBJECT_NAME_NOT_FOUND, _St.OBJECT_PATH_NOT_FOUND, _St.NO_SUCH_FILE}
)
_INVALID: Final = frozenset(
    {
        _St.OBJECT_NAME_INVALID,
        _St.OBJECT_PATH_INVALID,
        _St.OBJECT_PATH_SYNTAX_BAD,
        _St.NAME_TOO_LONG,
        _St.INVALID_PARAMETER,
    }
)
_EXHAUSTED: Final = frozenset({_St.DISK_FULL, _St.QUOTA_EXCEEDED})
_UNAVAILABLE: Final = frozenset(
    {
        _St.USER_SESSION_DELETED,
        _St.NETWORK_NAME_DELETED,
        _St.INSUFF_SERVER_RESOURCES,
        _St.INSUFFICIENT_RESOURCES,
        _St.SERVER_UNAVAILABLE,
        _St.REQUEST_NOT_ACCEPTED,
        _St.SHARING_VIOLATION,
        _St.DELETE_PENDING,
    }
)


# --- configuration -----------------------------------------------------------


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


class _Secret:
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


# --- paths ---------------------------------------------------------------------

_BAD_CHARS: Final = frozenset("\\\x00:")


def check_path(path: str) -> tuple[str, ...]:
    """Split a share-relative ``/`` path into parts or raise InvalidArgument.

    Refuses: empty path, leading ``/`` (absolute), empty parts (``a//b``,
    trailing ``/``), ``.`` and ``..``, backslash, NUL and ``:`` (alternate data
    streams).
    """
    if not isinstance(path, str) or not path:
        msg = "path must be a non-empty share-relative string"
        raise InvalidArgument(msg)
    if _BAD_CHARS.intersection(path):
        msg = f"path {path!r} contains a backslash, NUL or colon"
        raise InvalidArgument(msg)
    parts = tuple(path.split("/"))
    if any(part in ("", ".", "..") for part in parts):
        msg = f"path {path!r} must be relative with no empty, '.' or '..' parts"
        raise InvalidArgument(msg)
    return parts


def _check_name(what: str, value: str) -> str:
    if not value or any(c in value for c in "\\/\x00") or value.strip() != value:
        msg = f"invalid SMB {what} {value!r}"
        raise InvalidArgument(msg)
    return value


# --- error mapping -----------------------------------------------------------


def _ntstatus(exc: BaseException) -> int | None:
    if isinstance(exc, SMBOSError):
        return int(exc.ntstatus)
    if isinstance(exc, SMBResponseException):
        return int(exc.status)
    return None


_STATUS_NAMES: Final[dict[int, str]] = {
    int(value): str(name) for name, value in vars(NtStatus).items() if name.startswith("STATUS_")
}


def _status_name(status: int) -> str:
    return _STATUS_NAMES.get(status, f"NTSTATUS 0x{status:08x}")


def _is_missing(exc: BaseException) -> bool:
    """The path (not the share) does not exist."""
    status = _ntstatus(exc)
    if status is not None:
        return status in _PATH_MISSING
    return isinstance(exc, FileNotFoundError)


def _is_connect_failure(exc: BaseException) -> bool:
    # smbprotocol's transport raises ValueError("Failed to connect to ...") from the OSError.
    return isinstance(exc, ValueError) and isinstance(exc.__cause__, OSError)


def map_smb_error(exc: BaseException, op: str, path: str) -> DriverError:
    """Translate an smbprotocol/socket failure of ``op`` on ``path`` to a domain error.

    The message is built from the operation, the share-relative path and the
    NT status or errno name only; the exception's own text is used only for
    connection failures (host, port and the socket error).
    """
    if isinstance(exc, DriverError):
        return exc
    where = f"SMB {op} {path!r}"
    status = _ntstatus(exc)
    err_no = exc.errno if isinstance(exc, OSError) else None

    if status is not None and status != 0:
        name = _status_name(status)
        if status in _DENIED:
            return PermissionDenied(f"{where}: permission denied ({name})")
        if status in _SHARE_MISSING:
            return FailedPrecondition(f"{where}: the share does not exist on the server ({name})")
        if status in _PATH_MISSING:
            return NotFound(f"{where}: not found ({name})")
        if status == _St.OBJECT_NAME_COLLISION:
            return AlreadyExists(f"{where}: already exists ({name})")
        if status in _EXHAUSTED:
            return ResourceExhausted(f"{where}: no space left ({name})")
        if status in _INVALID:
            return InvalidArgument(f"{where}: the server refused the name ({name})")
        if status in (_St.NOT_A_DIRECTORY, _St.FILE_IS_A_DIRECTORY):
            return AlreadyExists(f"{where}: exists with another file type ({name})")
        if status == _St.DIRECTORY_NOT_EMPTY:
            return FailedPrecondition(f"{where}: directory not empty ({name})")
        if status == _St.IO_TIMEOUT:
            return DeadlineExceeded(f"{where}: the server timed out ({name})")
        if status in _UNAVAILABLE:
            return Unavailable(f"{where}: temporarily unavailable ({name})")
        return Internal(f"{where} failed ({name})")

    if isinstance(exc, SMBConnectionClosed):
        return Unavailable(f"{where}: the SMB connection was closed")
    if isinstance(exc, SMBAuthenticationError):
        return PermissionDenied(f"{where}: authentication failed")
    if _is_connect_failure(exc):
        return Unavailable(f"{where}: cannot connect to the SMB server ({exc.__cause__})")
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded(f"{where}: timed out")
    if err_no is not None and not isinstance(exc, SMBException):
        code = errno.errorcode.get(err_no, str(err_no))
        if err_no in (errno.ENOSPC, errno.EDQUOT):
            return ResourceExhausted(f"{where}: no space left ({code})")
        if err_no in (errno.EACCES, errno.EPERM):
            return PermissionDenied(f"{where}: permission denied ({code})")
        if err_no == errno.ENOENT:
            return NotFound(f"{where}: not found ({code})")
        if err_no == errno.EEXIST:
            return AlreadyExists(f"{where}: already exists ({code})")
        return Unavailable(f"{where}: network error ({code})")
    if isinstance(exc, OSError):
        return Unavailable(f"{where}: network error ({type(exc).__name__})")
    return Internal(f"{where} failed ({type(exc).__name__})")


def _exception_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _detach(exc: BaseException, op: str, path: str, secret: str) -> DriverError:
    """Map ``exc``; keep it as ``__cause__`` only if it is clean of ``secret``.

    Tracebacks are cut from the whole chain: the frames of smbprotocol (and of
    our worker functions) hold the password as a local, and some loggers render
    frame locals.
    """
    mapped = map_smb_error(exc, op, path)
    chain = _exception_chain(exc)
    clean = all(secret not in str(e) and secret not in repr(e) for e in chain)
    for e in chain:
        e.__traceback__ = None
    if mapped is not exc:
        mapped.__cause__ = exc if clean else None
        mapped.__suppress_context__ = True
    return mapped


# --- the connection of one credential key ------------------------------------


class _MkdirResult(Enum):
    CREATED = "created"
    EXISTED = "existed"
    NOT_A_DIRECTORY = "not a directory"


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    attributes: int

    @property
    def is_dir(self) -> bool:
        return bool(self.attributes & _ATTR_DIRECTORY)

    @property
    def is_link(self) -> bool:
        return bool(self.attributes & _ATTR_REPARSE_POINT)


class _Channel:
    """Private connection cache, warm-up lock, slots and threads of one credential key."""

    def __init__(self, key: CredentialKey, password: str, settings: SmbSettings) -> None:
        self.key = key
        self.settings = settings
        self._password = _Secret(password)
        self._user = f"{key.domain}\\{key.username}" if key.domain else key.username
        self._conn_key = f"{key.server.lower()}:{key.port}"
        self._cache: dict[str, Any] = {}
        self._warm_lock = threading.Lock()
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._executor: ThreadPoolExecutor | None = None
        self._generation = 0

    def __repr__(self) -> str:
        return f"_Channel({self.key.username}@{self.key.server}:{self.key.port})"

    # -- worker-thread side --

    def kwargs(self) -> dict[str, Any]:
        """smbclient keyword arguments; built in the worker thread, never stored."""
        return {
            "username": self._user,
            "password": self._password.reveal(),
            "port": self.key.port,
            "connection_cache": self._cache,
            "connection_timeout": self.settings.connect_timeout,
            "auth_protocol": self.settings.auth_protocol,
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
            except Exception:  # noqa: BLE001 - already dead; nothing more to release
                _log.debug("closing a dead SMB connection failed", exc_info=True)

    def warm_up(self, share_unc: str) -> None:
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
            kw = self.kwargs()
            smbclient.register_session(
                self.key.server,
                username=kw["username"],
                password=kw["password"],
                port=self.key.port,
                encrypt=self.settings.encrypt,
                connection_timeout=self.settings.connect_timeout,
                connection_cache=self._cache,
                auth_protocol=self.settings.auth_protocol,
                require_signing=self.settings.require_signing,
            )
            # The tree connect; it also tells a missing share apart early.
            smbclient.stat(share_unc, **kw)
            _log.debug(
                "SMB session ready: %s@%s:%s %s",
                self.key.username,
                self.key.server,
                self.key.port,
                share_unc,
            )
        finally:
            self._warm_lock.release()

    def call(
        self, share_unc: str, fn: Callable[..., T], args: tuple[Any, ...], *, retry: bool
    ) -> T:
        generation = self._generation
        self.warm_up(share_unc)
        try:
            return fn(*args, **self.kwargs())
        except SMBConnectionClosed:
            # The connection died under this call.  Reconnect and repeat once,
            # unless the channel is being closed or the step is not idempotent.
            if not retry or generation != self._generation:
                raise
        _log.info(
            "SMB connection to %s:%s was closed; reconnecting", self.key.server, self.key.port
        )
        self.warm_up(share_unc)  # drops the dead connection under the lock
        return fn(*args, **self.kwargs())

    # -- event-loop side --

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.settings.max_in_flight,
                thread_name_prefix=f"smb-{self.key.server}:{self.key.port}",
            )
        return self._executor

    async def run(
        self,
        op: str,
        path: str,
        share_unc: str,
        fn: Callable[..., T],
        *args: Any,
        retry: bool = True,
    ) -> T:
        """Run one blocking SMB step in this channel's threads, bounded and timed."""
        timeout = asyncio.timeout(self.settings.op_timeout)
        failure: Exception
        try:
            async with timeout:
                await self._slots.acquire()
                try:
                    future = await self._submit(op, path, share_unc, fn, args, retry)
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
                f"SMB {op} {path!r}: no answer within {self.settings.op_timeout:g}s "
                "(the server may be hung; the step may still complete)"
            )
        else:
            err = _detach(failure, op, path, self._password.reveal())
        del failure
        raise err

    async def _submit(  # noqa: PLR0917 - run()'s arguments, passed on
        self,
        op: str,
        path: str,
        share_unc: str,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        retry: bool,
    ) -> asyncio.Future[T]:
        """Start the step; its future resolves when the step is done.

        ``op`` and ``path`` name the step in error messages (``run`` maps
        errors of steps run here; a worker process maps its own).
        """
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._pool(), self._call, share_unc, fn, args, retry)

    def _call(self, share_unc: str, fn: Callable[..., T], args: tuple[Any, ...], retry: bool) -> T:
        return self.call(share_unc, fn, args, retry=retry)

    def _release(self, future: asyncio.Future[Any]) -> None:
        self._slots.release()
        if not future.cancelled():
            future.exception()  # mark retrieved: a late failure after a timeout is expected

    async def aclose(self) -> None:
        """Log off politely within ``close_timeout``, then cut the sockets."""
        await asyncio.to_thread(self.close_connections)

    def close_connections(self) -> None:
        """Blocking ``aclose``: at most ``close_timeout`` for a polite logoff.

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
                    except Exception:  # noqa: BLE001 - best effort; the socket is cut below anyway
                        _log.debug("SMB logoff failed", exc_info=True)
                        _cut(conn)
                done.set()

            # Daemon threads: a hung server must not keep the process alive.
            threading.Thread(target=polite, name="smb-close", daemon=True).start()
            if not done.wait(self.settings.close_timeout):
                _log.warning(
                    "SMB server %s:%s did not answer the logoff; closing the sockets",
                    self.key.server,
                    self.key.port,
                )
                for conn in connections:
                    threading.Thread(target=_cut, args=(conn,), name="smb-cut", daemon=True).start()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def _cut(conn: Any) -> None:
    """Shut the socket down: wakes every thread waiting on this connection."""
    try:
        conn.transport.close()
    except Exception:  # noqa: BLE001 - best effort
        _log.debug("closing an SMB socket failed", exc_info=True)


# --- blocking steps (run in the channel's threads) ---------------------------


def _unc(share_unc: str, parts: tuple[str, ...]) -> str:
    return share_unc + "\\" + "\\".join(parts)


def _mkdir_step(share_unc: str, parts: tuple[str, ...], **kw: Any) -> tuple[_MkdirResult, str]:
    target = _unc(share_unc, parts)
    try:
        smbclient.mkdir(target, **kw)
    except SMBOSError as exc:
        if exc.errno == errno.EEXIST:
            return _existing(target, "/".join(parts), **kw)
        if not _is_missing(exc):
            raise
    else:
        return _MkdirResult.CREATED, ""
    # A parent is missing: create from the top down (makedirs).
    for depth in range(1, len(parts) + 1):
        prefix = _unc(share_unc, parts[:depth])
        try:
            smbclient.mkdir(prefix, **kw)
        except SMBOSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            result = _existing(prefix, "/".join(parts[:depth]), **kw)
            if result[0] is _MkdirResult.NOT_A_DIRECTORY or depth == len(parts):
                return result
    return _MkdirResult.CREATED, ""


def _existing(unc: str, rel: str, **kw: Any) -> tuple[_MkdirResult, str]:
    attributes = int(smbclient.stat(unc, **kw).st_file_attributes)
    if attributes & _ATTR_DIRECTORY:
        return _MkdirResult.EXISTED, rel
    return _MkdirResult.NOT_A_DIRECTORY, rel


def _attributes_step(unc: str, **kw: Any) -> int | None:
    """Attributes of ``unc`` (not following a reparse point); None if missing."""
    try:
        return int(smbclient.lstat(unc, **kw).st_file_attributes)
    except SMBOSError as exc:
        if _is_missing(exc):
            return None
        raise


def _list_step(unc: str, **kw: Any) -> list[_Entry] | None:
    """Entries of directory ``unc``; None if it vanished."""
    try:
        with smbclient.scandir(unc, **kw) as entries:
            return [_Entry(str(e.name), int(e.smb_info.file_attributes)) for e in entries]
    except SMBOSError as exc:
        if _is_missing(exc):
            return None
        raise


def _set_attributes_step(unc: str, attributes: int, **kw: Any) -> None:
    # smbclient has no public "chattr"; this is the helper its own shutil uses.
    smbclient_os._set_basic_information(
        unc, file_attributes=attributes, follow_symlinks=False, **kw
    )


def _remove_step(unc: str, directory: bool, **kw: Any) -> bool:
    """Delete one entry (smbclient clears its read-only attribute first)."""
    try:
        if directory:
            smbclient.rmdir(unc, **kw)
        else:
            smbclient.remove(unc, **kw)
    except SMBOSError as exc:
        if _is_missing(exc):
            return False
        raise
    return True


def _rename_step(src: str, dst: str, **kw: Any) -> None:
    smbclient.rename(src, dst, **kw)


_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_FILETIME_EPOCH: Final = 116_444_736_000_000_000  # 1970-01-01 in 100 ns since 1601


def _ns(when: datetime.datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return (when - _EPOCH) // datetime.timedelta(microseconds=1) * 1000


def _filetime(ns: int | None) -> int:
    """FILETIME for SET_INFO; 0 means "leave unchanged"."""
    return 0 if ns is None else ns // 100 + _FILETIME_EPOCH


def _kind(attributes: int) -> FileKind:
    if attributes & _ATTR_REPARSE_POINT:
        return "symlink"
    if attributes & _ATTR_DIRECTORY:
        return "dir"
    return "file"


def _file_info(attributes: int, size: int, mtime_ns: int, atime_ns: int, file_id: int) -> FileInfo:
    kind = _kind(attributes)
    return FileInfo(
        kind=kind,
        size=size if kind == "file" else 0,
        mtime_ns=mtime_ns,
        atime_ns=atime_ns,
        read_only=bool(attributes & _ATTR_READONLY),
        file_id=file_id,
    )


def _lstat_step(unc: str, **kw: Any) -> FileInfo | None:
    try:
        st = smbclient.lstat(unc, **kw)
    except SMBOSError as exc:
        if _is_missing(exc):
            return None
        raise
    return _file_info(
        int(st.st_file_attributes),
        int(st.st_size),
        int(st.st_mtime_ns),
        int(st.st_atime_ns),
        int(st.st_ino),
    )


def _list_info_step(unc: str, **kw: Any) -> list[tuple[str, FileInfo]]:
    with smbclient.scandir(unc, **kw) as entries:
        out: list[tuple[str, FileInfo]] = []
        for e in entries:
            info = e.smb_info
            out.append(
                (
                    str(e.name),
                    _file_info(
                        int(info.file_attributes),
                        int(info.end_of_file),
                        _ns(info.last_write_time),
                        _ns(info.last_access_time),
                        int(info.file_id),
                    ),
                )
            )
        return out


def _open_step(unc: str, mode: str, **kw: Any) -> Any:
    # Others may read meanwhile (a pod reading the volume being snapshotted).
    return smbclient.open_file(unc, mode=mode, buffering=0, share_access="r", **kw)


def _read_step(handle: Any, size: int, **_kw: Any) -> bytes:
    """Up to ``size`` bytes in READs of one credit each (see ``_PIECE``)."""
    parts: list[bytes] = []
    left = size
    while left > 0:
        data = handle.read(min(left, _PIECE))
        if not data:
            break
        parts.append(bytes(data))
        left -= len(data)
    return b"".join(parts)


def _write_step(handle: Any, data: bytes, **_kw: Any) -> None:
    view = memoryview(data)
    while view:
        written = handle.write(view[:_PIECE])
        if not written:
            msg = "the server accepted no bytes"
            raise OSError(errno.EIO, msg)
        view = view[written:]


def _close_step(handle: Any, **_kw: Any) -> None:
    handle.close()


def _times_step(unc: str, atime: int, mtime: int, attributes: int, **kw: Any) -> None:
    smbclient_os._set_basic_information(
        unc,
        last_access_time=atime,
        last_write_time=mtime,
        file_attributes=attributes,
        follow_symlinks=False,
        **kw,
    )


def _copy_step(src: str, dst: str, **kw: Any) -> None:
    try:
        # FSCTL_SRV_COPYCHUNK: the server copies; no data crosses the wire.
        smbclient_os.copyfile(src, dst, **kw)
    except SMBOSError as exc:
        if _ntstatus(exc) != NtStatus.STATUS_NOT_SUPPORTED:
            raise
        with (
            smbclient.open_file(src, mode="rb", share_access="r", **kw) as fin,
            smbclient.open_file(dst, mode="wb", **kw) as fout,
        ):
            smbclient_shutil.copyfileobj(fin, fout, _IO_CHUNK)


def _capacity_step(unc: str, **kw: Any) -> tuple[int, int]:
    result = smbclient.stat_volume(unc, **kw)
    return int(result.total_size), int(result.caller_available_size)


# --- the backend -------------------------------------------------------------


class SmbBackend:
    """``ShareBackend`` for one SMB share and one identity.

    ``mode`` of ``mkdir`` is ignored: SMB has no POSIX modes in general; the
    server's share configuration decides ownership and permissions.
    """

    def __init__(  # noqa: PLR0917 - the connection facts of a share, in their usual order
        self,
        server: str,
        port: int,
        share: str,
        username: str,
        password: str,
        domain: str | None = None,
        *,
        settings: SmbSettings | None = None,
    ) -> None:
        settings = settings or SmbSettings()
        key = _credential_key(server, port, Credentials(username, password, domain or ""))
        self._init(key, share, _Channel(key, password, settings), owns_channel=True)

    @classmethod
    def _on_channel(cls, channel: _Channel, share: str) -> SmbBackend:
        backend = cls.__new__(cls)
        backend._init(channel.key, share, channel, owns_channel=False)
        return backend

    def _init(
        self, key: CredentialKey, share: str, channel: _Channel, *, owns_channel: bool
    ) -> None:
        self._key = key
        self._share = _check_name("share", share)
        self._share_unc = f"\\\\{key.server}\\{share}"
        self._channel = channel
        self._owns_channel = owns_channel

    def __repr__(self) -> str:
        key = self._key
        return f"SmbBackend(//{key.server}:{key.port}/{self._share} as {key.username})"

    @property
    def key(self) -> CredentialKey:
        return self._key

    @property
    def share(self) -> str:
        return self._share

    async def _run(
        self, op: str, path: str, fn: Callable[..., T], *args: Any, retry: bool = True
    ) -> T:
        return await self._channel.run(op, path, self._share_unc, fn, *args, retry=retry)

    async def mkdir(self, path: str, *, mode: int | None = None) -> bool:
        parts = check_path(path)
        result, where = await self._run("mkdir", path, _mkdir_step, self._share_unc, parts)
        if result is _MkdirResult.NOT_A_DIRECTORY:
            msg = f"SMB mkdir {path!r}: {where!r} exists and is not a directory"
            raise AlreadyExists(msg)
        return result is _MkdirResult.CREATED

    async def rename(self, src: str, dst: str, *, replace: bool = False) -> None:
        src_unc = _unc(self._share_unc, check_path(src))
        dst_unc = _unc(self._share_unc, check_path(dst))
        if replace:
            # A missing source must not cost the target.
            if await self._run("stat", src, _attributes_step, src_unc) is None:
                msg = f"SMB rename {src!r} -> {dst!r}: the source does not exist"
                raise NotFound(msg)
            await self.remove_tree(dst)
        try:
            await self._run(
                "rename", f"{src} -> {dst}", _rename_step, src_unc, dst_unc, retry=False
            )
        except NotFound as exc:
            msg = f"SMB rename {src!r} -> {dst!r}: the source or the target's parent does not exist"
            raise NotFound(msg) from exc.__cause__

    async def remove_tree(self, path: str) -> bool:
        parts = check_path(path)
        unc = _unc(self._share_unc, parts)
        attributes = await self._run("stat", path, _attributes_step, unc)
        if attributes is None:
            return False
        entry = _Entry(parts[-1], attributes)
        if entry.is_dir and not entry.is_link:
            # Up to max_in_flight subdirectories are walked side by side; the
            # rest inline, so the number of live coroutines stays bounded.
            walkers = asyncio.Semaphore(self._channel.settings.max_in_flight)
            await self._remove_dir(path, unc, attributes, walkers)
            return True
        return await self._run("remove", path, _remove_step, unc, entry.is_dir)

    async def _remove_dir(
        self, rel: str, unc: str, attributes: int, walkers: asyncio.Semaphore
    ) -> None:
        for attempt in range(2):
            if attributes & _ATTR_READONLY:
                # Clearing it makes the directory writable (Samba: owner w bit).
                await self._run("clear read-only", rel, _set_attributes_step, unc, _ATTR_DIRECTORY)
                attributes &= ~_ATTR_READONLY
            entries = await self._run("list", rel, _list_step, unc)
            if entries is None:
                return  # removed by someone else meanwhile
            await self._remove_entries(rel, unc, entries, walkers)
            try:
                await self._run("rmdir", rel, _remove_step, unc, True)
            except FailedPrecondition:
                if attempt:  # still not empty: something keeps writing into it
                    raise
            else:
                return

    async def _remove_entries(
        self, rel: str, unc: str, entries: list[_Entry], walkers: asyncio.Semaphore
    ) -> None:
        walking: list[asyncio.Task[None]] = []
        try:
            for entry in entries:
                if not entry.is_dir or entry.is_link:
                    continue
                child = (f"{rel}/{entry.name}", f"{unc}\\{entry.name}", entry.attributes)
                if walkers.locked():
                    await self._remove_dir(*child, walkers)
                else:
                    await walkers.acquire()
                    walking.append(asyncio.create_task(self._walk(*child, walkers)))
            files = [e for e in entries if not e.is_dir or e.is_link]
            batch = 4 * self._channel.settings.max_in_flight
            for start in range(0, len(files), batch):
                results = await asyncio.gather(
                    *(
                        self._run(
                            "remove", f"{rel}/{e.name}", _remove_step, f"{unc}\\{e.name}", e.is_dir
                        )
                        for e in files[start : start + batch]
                    ),
                    return_exceptions=True,
                )
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
            for task in walking:
                await task
        finally:
            for task in walking:
                task.cancel()
            await asyncio.gather(*walking, return_exceptions=True)

    async def _walk(self, rel: str, unc: str, attributes: int, walkers: asyncio.Semaphore) -> None:
        try:
            await self._remove_dir(rel, unc, attributes, walkers)
        finally:
            walkers.release()

    async def exists(self, path: str) -> bool:
        unc = _unc(self._share_unc, check_path(path))
        return await self._run("stat", path, _attributes_step, unc) is not None

    async def capacity(self) -> Capacity:
        total, available = await self._run("statvfs", "", _capacity_step, self._share_unc)
        return Capacity(total_bytes=total, available_bytes=available)

    # -- ShareFiles --------------------------------------------------------

    @property
    def features(self) -> Features:
        return SMB_FEATURES

    async def stat(self, path: str) -> FileInfo | None:
        unc = _unc(self._share_unc, check_path(path))
        return await self._run("stat", path, _lstat_step, unc)

    async def list_dir(self, path: str) -> list[tuple[str, FileInfo]]:
        unc = _unc(self._share_unc, check_path(path))
        return await self._run("list", path, _list_info_step, unc)

    async def open_read(self, path: str, *, size_hint: int | None = None) -> SmbReader:
        unc = _unc(self._share_unc, check_path(path))
        handle = await self._run("open", path, _open_step, unc, "rb")
        return SmbReader(self, path, handle)

    async def open_write(self, path: str) -> SmbWriter:
        unc = _unc(self._share_unc, check_path(path))
        handle = await self._run("create", path, _open_step, unc, "wb")
        return SmbWriter(self, path, handle)

    async def symlink(self, target: str, path: str) -> None:
        msg = (
            f"SMB symlink {path!r}: symlinks cannot be created over SMB here (Samba does "
            "not take reparse points from clients; see README, Snapshots)"
        )
        raise FailedPrecondition(msg)

    async def readlink(self, path: str) -> str:
        msg = f"SMB readlink {path!r}: reparse points are not read over SMB"
        raise FailedPrecondition(msg)

    async def set_attributes(self, path: str, info: FileInfo) -> None:
        unc = _unc(self._share_unc, check_path(path))
        attributes = 0  # 0: leave the attributes as they are
        if info.kind == "file":
            read_only = info.read_only or (info.mode is not None and not info.mode & 0o200)
            if read_only:
                attributes = _ATTR_READONLY
        if info.mtime_ns is None and not attributes:
            return
        atime = info.atime_ns if info.atime_ns is not None else info.mtime_ns
        await self._run(
            "set times",
            path,
            _times_step,
            unc,
            _filetime(atime),
            _filetime(info.mtime_ns),
            attributes,
        )

    async def copy_file(self, src: str, dst: str) -> None:
        src_unc = _unc(self._share_unc, check_path(src))
        dst_unc = _unc(self._share_unc, check_path(dst))
        await self._run("copy", f"{src} -> {dst}", _copy_step, src_unc, dst_unc)

    async def aclose(self) -> None:
        """Close the connection and threads (reopened on next use).

        A backend handed out by :class:`SmbBackendPool` shares its connection
        with the pool's other backends of the same credentials: the pool
        closes it, this is a no-op.
        """
        if self._owns_channel:
            await self._channel.aclose()


class SmbReader:
    """A file open for reading; each read is one SMB READ in the channel's threads."""

    def __init__(self, backend: SmbBackend, path: str, handle: Any) -> None:
        self._backend = backend
        self._path = path
        self._handle: Any = handle

    async def read(self, size: int) -> bytes:
        if self._handle is None:
            msg = f"SMB read {self._path!r}: the file is closed"
            raise InvalidArgument(msg)
        return await self._backend._run(
            "read", self._path, _read_step, self._handle, min(size, _IO_CHUNK), retry=False
        )

    async def aclose(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                await self._backend._run("close", self._path, _close_step, handle, retry=False)
            except DriverError:
                _log.debug("closing %r failed", self._path, exc_info=True)


class SmbWriter:
    """A file open for writing; each write runs in the channel's threads."""

    def __init__(self, backend: SmbBackend, path: str, handle: Any) -> None:
        self._backend = backend
        self._path = path
        self._handle: Any = handle

    async def write(self, data: bytes) -> None:
        if self._handle is None:
            msg = f"SMB write {self._path!r}: the file is closed"
            raise InvalidArgument(msg)
        view = memoryview(data)
        for start in range(0, len(view), _IO_CHUNK):
            await self._backend._run(
                "write",
                self._path,
                _write_step,
                self._handle,
                bytes(view[start : start + _IO_CHUNK]),
                retry=False,
            )

    async def aclose(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            await self._backend._run("close", self._path, _close_step, handle, retry=False)

    async def abort(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                await self._backend._run("close", self._path, _close_step, handle, retry=False)
            except DriverError:
                _log.debug("closing %r failed", self._path, exc_info=True)


def _credential_key(server: str, port: int, creds: Credentials) -> CredentialKey:
    _check_name("server", server)
    _check_name("user name", creds.username)
    if not 0 < port < 65536:
        msg = f"invalid SMB port {port}"
        raise InvalidArgument(msg)
    if not creds.password:
        msg = "an SMB password is required"
        raise InvalidArgument(msg)
    return CredentialKey(
        server=server.lower(),
        port=port,
        domain=creds.domain or None,
        username=creds.username,
        password_digest=password_digest(creds.password),
    )


class SmbBackendPool:
    """Hands out one backend per (server, port, credentials, share).

    Backends of the same credential key share one channel: one TCP connection,
    one session, one set of slots and threads.  ``get`` is cheap when cached.
    A changed password is a new key; the old key's connection lives until
    :meth:`aclose`.
    """

    def __init__(
        self, settings: SmbSettings | None = None, *, worker: SmbWorker | None = None
    ) -> None:
        self._settings = settings or SmbSettings()
        # With a worker, the steps run in its process (controller.smb_worker).
        self._worker = worker
        self._channels: dict[CredentialKey, _Channel] = {}
        self._backends: dict[tuple[CredentialKey, str], SmbBackend] = {}

    def __repr__(self) -> str:
        return f"SmbBackendPool({len(self._channels)} connections, {len(self._backends)} shares)"

    def __len__(self) -> int:
        return len(self._backends)

    @property
    def keys(self) -> list[CredentialKey]:
        return list(self._channels)

    def get(self, server: str, port: int, share: str, creds: Credentials) -> SmbBackend:
        """The backend for ``share`` as ``creds`` (``driver.credentials.Credentials``)."""
        key = _credential_key(server, port, creds)
        share = _check_name("share", share)
        backend = self._backends.get((key, share.lower()))
        if backend is not None:
            return backend
        channel = self._channels.get(key)
        if channel is None:
            if self._worker is not None:
                channel = self._worker.channel(key, creds.password, self._settings)
            else:
                channel = _Channel(key, creds.password, self._settings)
            self._channels[key] = channel
        backend = SmbBackend._on_channel(channel, share)
        self._backends[(key, share.lower())] = backend
        return backend

    def cached(self, server: str, port: int, share: str) -> SmbBackend | None:
        """A backend already handed out for this share (any identity), if any."""
        server, share = server.lower(), share.lower()
        for (key, name), backend in reversed(self._backends.items()):
            if key.server == server and key.port == port and name == share:
                return backend
        return None

    async def aclose(self) -> None:
        """Close every connection; the pool can be used again afterwards."""
        channels = list(self._channels.values())
        self._channels.clear()
        self._backends.clear()
        await asyncio.gather(*(channel.aclose() for channel in channels))
        if self._worker is not None:
            await self._worker.aclose()
