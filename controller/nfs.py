"""The NFS share backend: libnfs driven natively by the asyncio loop.

One :class:`NfsContext` owns one libnfs context (one TCP connection, one
mounted export).  Its socket is registered with the running loop
(``add_reader``/``add_writer`` as ``nfs_which_events`` asks); libnfs runs only
inside ``nfs_service`` on the loop thread, and its C callbacks complete asyncio
futures.  Nothing blocks the loop and no thread is used.

Failure handling:

* Every backend call has a deadline (``timeout`` seconds for the whole call):
  past it the call raises DeadlineExceeded.  A call that timed out without a
  single reply arriving on its connection meanwhile marks the connection as
  hung: it is torn down and the next call connects afresh.
* Auto-reconnect inside libnfs is switched off (with it, a dead server makes
  calls hang until the deadline instead of failing fast, and an NFSv4 context
  never recovers: libnfs 4.0 reconnects the socket but not the v4 client
  state).  When the socket dies (``nfs_service`` < 0, or an RPC fails with
  libnfs' EFAULT/EINTR) the context is destroyed and a new one is built and
  mounted (~2-5 ms), for v3 and v4 alike.  A call that met the broken
  connection is retried once on the new one (every call is idempotent), so a
  server restart between two calls costs no error; a server that is down
  gives Unavailable at once (connection refused), well within the deadline.
* NFSv4 chmod goes through a raw COMPOUND (see ``libnfs.nfs4_setattr_mode_async``):
  libnfs 4.0's own v4 chmod fails on directories.
* Errors come back from libnfs as negative errno values and are mapped once,
  in :func:`errno_to_error`.

NFS versions: libnfs 4.0 (Debian ``libnfs13``) speaks NFSv3 and NFSv4.0 only;
it always sends ``minorversion = 0`` and has no sessions (measured: a server
that only allows v4.1 answers NFS4ERR_MINOR_VERS_MISMATCH, surfaced as
Unavailable).  ``version="4.1"``/``"4.2"`` are accepted so the driver's
parameters stay one set, but the backend talks NFSv4.0 (with a warning).

Source port: run as root, libnfs binds a privileged source port (< 1024,
measured 796/801 against loopback), so kernel nfsd exports with the default
``secure`` option accept it; as non-root the export needs ``insecure``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

from controller import libnfs
from controller.backend import Capacity
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

log = logging.getLogger(__name__)

Version = Literal["3", "4", "4.0", "4.1", "4.2"]
_T = TypeVar("_T")

#: Mode of directories created without an explicit mode (parents included).
DEFAULT_DIR_MODE: Final = 0o755
#: At most this many RPCs of one remove_tree in flight at once.
REMOVE_CONCURRENCY: Final = 64

_CONNECTION_ERRNOS: Final = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ENOTCONN,
        errno.EPIPE,
        errno.ESHUTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.ESTALE,
        errno.EAGAIN,
        # libnfs reports an RPC that failed (socket error) as EFAULT and one
        # cancelled (context torn down, its own timeout) as EINTR.
        errno.EFAULT,
        errno.EINTR,
    }
)

# nfsstat4 (RFC 7530) → errno.  Up to 31 they equal Linux errno values; 63
# and up follow other systems' numbering and must be translated.
_NFS4ERR_ERRNO: Final = {
    1: errno.EPERM,
    2: errno.ENOENT,
    5: errno.EIO,
    6: errno.ENXIO,
    13: errno.EACCES,
    17: errno.EEXIST,
    18: errno.EXDEV,
    20: errno.ENOTDIR,
    21: errno.EISDIR,
    22: errno.EINVAL,
    27: errno.EFBIG,
    28: errno.ENOSPC,
    30: errno.EROFS,
    31: errno.EMLINK,
    63: errno.ENAMETOOLONG,
    66: errno.ENOTEMPTY,
    69: errno.EDQUOT,
    70: errno.ESTALE,
    10001: errno.ESTALE,  # NFS4ERR_BADHANDLE
    10008: errno.EAGAIN,  # NFS4ERR_DELAY
    10011: errno.ESTALE,  # NFS4ERR_EXPIRED
    10013: errno.EAGAIN,  # NFS4ERR_GRACE
    10022: errno.ESTALE,  # NFS4ERR_STALE_CLIENTID
    10023: errno.ESTALE,  # NFS4ERR_STALE_STATEID
}


def nfs4_errno(nfsstat: int) -> int:
    """errno for an nfsstat4 of a raw COMPOUND reply (EIO if unknown)."""
    return _NFS4ERR_ERRNO.get(nfsstat, errno.EIO)


# -- paths ------------------------------------------------------------------


def check_share_path(path: str, *, what: str = "path") -> str:
    """Last line of defence for a path relative to the export root.

    Rejects the empty path, absolute paths, empty/``.``/``..`` components, NUL
    and backslash (InvalidArgument).  Returns ``path`` unchanged.  The driver
    validates more strictly first (``driver.paths``).
    """
    if not isinstance(path, str) or not path:
        raise InvalidArgument(f"{what}: must be a non-empty relative path")
    if path.startswith("/"):
        raise InvalidArgument(f"{what}: must be relative, not start with '/'")
    if "\x00" in path:
        raise InvalidArgument(f"{what}: NUL is not allowed")
    if "\\" in path:
        raise InvalidArgument(f"{what}: backslash is not allowed")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise InvalidArgument(f"{what}: empty, '.' or '..' components are not allowed")
    return path


def _nfs_path(rel: str) -> str:
    """The path libnfs gets: absolute from the export root."""
    return "/" + rel


# -- errors -----------------------------------------------------------------


def errno_to_error(err: int, op: str, path: str, detail: str = "") -> DriverError:
    """Map a libnfs result (``-errno`` or ``errno``) to a domain error.

    ``op`` and ``path`` (relative to the export) name what failed; ``detail``
    is libnfs' message.  EEXIST/ENOENT are usually handled by the caller for
    idempotency before they get here.
    """
    code = abs(err)
    name = errno.errorcode.get(code, f"errno {code}")
    text = f"nfs {op} {path!r}: {detail or os.strerror(code)} ({name})"
    if op == "mount":
        if code == errno.ENOENT:
            return NotFound(text)
        if code in (errno.EACCES, errno.EPERM):
            return PermissionDenied(text)
        if code == errno.ETIMEDOUT:
            return DeadlineExceeded(text)
        # Refused, reset, EIO, a server that does not speak the version...
        return Unavailable(text)
    if code == errno.ENOENT:
        return NotFound(text)
    if code == errno.EEXIST:
        return AlreadyExists(text)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(text)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(text)
    if code == errno.ETIMEDOUT:
        return DeadlineExceeded(text)
    if code in _CONNECTION_ERRNOS:
        return Unavailable(text)
    if code in (errno.EINVAL, errno.ENAMETOOLONG):
        return InvalidArgument(text)
    if code in (errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY):
        return FailedPrecondition(text)
    return Internal(text)


class ConnectionLost(Unavailable):
    """The connection broke under a call (not: the server refused a new
    one).  Every backend call is idempotent, so it is retried once on a new
    connection before this reaches the caller."""


def _rpc_failure(err: int, op: str, path: str, detail: str) -> DriverError:
    """A callback error: EFAULT/EINTR on an established connection mean the
    RPC died with its socket (libnfs' RPC_STATUS_ERROR / _CANCEL)."""
    if op != "mount" and -abs(err) in (-errno.EFAULT, -errno.EINTR):
        return ConnectionLost(errno_to_error(err, op, path, detail).message)
    return errno_to_error(err, op, path, detail)


# -- one connection ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry (``.`` and ``..`` are never listed)."""

    name: str
    is_dir: bool
    mode: int


_Kind = Literal["none", "stat", "statvfs", "dir", "rpc"]


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[object]
    kind: _Kind
    op: str
    path: str


class NfsContext:
    """One libnfs context: a connection with the export mounted.

    ``connect`` must be awaited (under the owner's lock) before the RPC
    methods.  The RPC methods raise domain errors; they do not time out by
    themselves (the backend puts a deadline around each call).
    """

    _lib_singleton: libnfs.LibNfs | None = None

    def __init__(
        self,
        server: str,
        port: int | None,
        export: str,
        version: int,
        *,
        mount_port: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
    ) -> None:
        self._server = server
        self._port = port
        self._mount_port = mount_port
        self._export = export
        self._version = version
        self._uid = uid
        self._gid = gid
        self._lib = self._library()
        self._ctx: int | None = None
        self._mounted = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, _Pending] = {}
        self._tokens = itertools.count(1)
        # (fd, socket inode, events) registered with the loop; libnfs reopens
        # sockets and the fd number can be reused, hence the inode.
        self._registered: tuple[int, int, int] | None = None
        # Kept alive for the life of this object: libnfs holds the pointer.
        self._callback = libnfs.NfsCallback(self._on_reply)
        self._rpc_callback = libnfs.RpcCallback(self._on_rpc_reply)
        self.last_reply_at = 0.0
        self.generation = 0

    @classmethod
    def _library(cls) -> libnfs.LibNfs:
        if cls._lib_singleton is None:
            cls._lib_singleton = libnfs.LibNfs()
        return cls._lib_singleton

    @property
    def connected(self) -> bool:
        """Mounted, on the running loop (not merely connecting)."""
        return self._mounted and self._loop is asyncio.get_running_loop()

    def _url(self) -> str:
        host = f"[{self._server}]" if ":" in self._server else self._server
        args = [f"version={self._version}"]
        if self._port is not None:
            args.append(f"nfsport={self._port}")
        if self._mount_port is not None:
            args.append(f"mountport={self._mount_port}")
        if self._uid is not None:
            args.append(f"uid={self._uid}")
        if self._gid is not None:
            args.append(f"gid={self._gid}")
        return f"nfs://{host}/{self._export.lstrip('/')}?{'&'.join(args)}"

    async def connect(self) -> None:
        """Create the context, connect and mount (raises Unavailable & co)."""
        self.close(Unavailable("nfs: reconnecting"))
        loop = asyncio.get_running_loop()
        lib = self._lib
        ctx = lib.init_context()
        try:
            server, export = lib.parse_url_dir(ctx, self._url())
        except ValueError as exc:
            lib.destroy_context(ctx)
            raise InvalidArgument(f"nfs: bad server or export: {exc}") from None
        lib.set_autoreconnect(ctx, 0)
        lib.set_timeout(ctx, -1)  # asyncio owns every timeout
        self._ctx, self._loop = ctx, loop
        self.generation += 1
        try:
            await self._submit(
                "mount",
                self._export,
                "none",
                lambda c, cb, t: lib.mount_async(c, server, export, cb, t),
            )
        except BaseException:
            self.close()
            raise
        self._mounted = True

    def close(self, reason: DriverError | None = None) -> None:
        """Destroy the context; calls still waiting get ``reason``."""
        ctx, self._ctx = self._ctx, None
        self._mounted = False
        self._unregister()
        pending, self._pending = self._pending, {}
        exc = reason or Unavailable("nfs: connection closed")
        for p in pending.values():
            if not p.future.done():
                # A future of a loop that is gone cannot be completed.
                with contextlib.suppress(RuntimeError):
                    p.future.set_exception(_copy_error(exc))
        if ctx is not None:
            # libnfs calls the pending callbacks from here; they find nothing.
            self._lib.destroy_context(ctx)
        self._loop = None

    # -- RPCs ---------------------------------------------------------------

    async def mkdir(self, path: str, mode: int) -> None:
        lib = self._lib
        p = _nfs_path(path)
        await self._submit(
            "mkdir", path, "none", lambda c, cb, t: lib.mkdir2_async(c, p, mode, cb, t)
        )

    async def chmod(self, path: str, mode: int) -> None:
        lib = self._lib
        if self._version == libnfs.NFS_V4:
            # libnfs 4.0's v4 chmod OPENs the target, which fails on a
            # directory (NFS4ERR_ISDIR): send PUTROOTFH/LOOKUP/SETATTR instead.
            parts = [p for p in self._export.split("/") if p] + path.split("/")
            await self._submit(
                "chmod",
                path,
                "rpc",
                lambda c, _cb, t: lib.nfs4_setattr_mode_async(
                    c, parts, mode, self._rpc_callback, t
                ),
            )
            return
        p = _nfs_path(path)
        await self._submit(
            "chmod", path, "none", lambda c, cb, t: lib.chmod_async(c, p, mode, cb, t)
        )

    async def rmdir(self, path: str) -> None:
        lib = self._lib
        p = _nfs_path(path)
        await self._submit("rmdir", path, "none", lambda c, cb, t: lib.rmdir_async(c, p, cb, t))

    async def unlink(self, path: str) -> None:
        lib = self._lib
        p = _nfs_path(path)
        await self._submit("unlink", path, "none", lambda c, cb, t: lib.unlink_async(c, p, cb, t))

    async def rename(self, src: str, dst: str) -> None:
        lib = self._lib
        s, d = _nfs_path(src), _nfs_path(dst)
        await self._submit(
            "rename", f"{src} -> {dst}", "none", lambda c, cb, t: lib.rename_async(c, s, d, cb, t)
        )

    async def lstat(self, path: str) -> libnfs.NfsStat64:
        lib = self._lib
        p = _nfs_path(path)
        result = await self._submit(
            "lstat", path, "stat", lambda c, cb, t: lib.lstat64_async(c, p, cb, t)
        )
        assert isinstance(result, libnfs.NfsStat64)  # noqa: S101 -- set by _on_reply
        return result

    async def listdir(self, path: str) -> list[Entry]:
        lib = self._lib
        p = _nfs_path(path)
        result = await self._submit(
            "opendir", path, "dir", lambda c, cb, t: lib.opendir_async(c, p, cb, t)
        )
        assert isinstance(result, list)  # noqa: S101 -- set by _on_reply
        return result

    async def statvfs(self) -> libnfs.NfsStatvfs64:
        lib = self._lib
        result = await self._submit(
            "statvfs", "", "statvfs", lambda c, cb, t: lib.statvfs64_async(c, "/", cb, t)
        )
        assert isinstance(result, libnfs.NfsStatvfs64)  # noqa: S101 -- set by _on_reply
        return result

    # -- machinery ----------------------------------------------------------

    async def _submit(
        self,
        op: str,
        path: str,
        kind: _Kind,
        start: Callable[[int, object, int], int],
    ) -> object:
        ctx = self._ctx
        if ctx is None:
            raise Unavailable(f"nfs {op} {path!r}: not connected")
        loop = asyncio.get_running_loop()
        token = next(self._tokens)
        future: asyncio.Future[object] = loop.create_future()
        self._pending[token] = _Pending(future, kind, op, path)
        rc = start(ctx, self._callback, token)
        if rc < 0:
            del self._pending[token]
            raise errno_to_error(rc, op, path, self._lib.get_error(ctx))
        self._sync_events()
        return await future

    def _on_reply(self, err: int, ctx: int | None, data: int | None, token: int | None) -> None:
        # Called by libnfs from inside nfs_service / nfs_destroy_context, on
        # the loop thread.  Must never raise (ctypes would only print it).
        try:
            pending = self._pending.pop(token or 0, None)
            if pending is None:
                return  # the context was closed; its waiters were failed then
            self.last_reply_at = time.monotonic()
            value: object = None
            if err < 0:
                detail = libnfs.error_from(data) or (self._lib.get_error(ctx) if ctx else "")
                value = _rpc_failure(err, pending.op, pending.path, detail)
            elif pending.kind == "dir" and data:
                # Read and free the handle even if nobody waits any more.
                raw = self._lib.readdir_all(ctx or 0, data)
                self._lib.closedir(ctx or 0, data)
                value = [
                    Entry(name, kind == libnfs.NF3DIR, mode & 0o7777)
                    for name, kind, mode in raw
                    if name not in (".", "..")
                ]
            elif pending.kind == "stat" and data:
                value = libnfs.stat_from(data)
            elif pending.kind == "statvfs" and data:
                value = libnfs.statvfs_from(data)
            if pending.future.done():
                return  # timed out / cancelled meanwhile
            if isinstance(value, DriverError):
                pending.future.set_exception(value)
            else:
                pending.future.set_result(value)
        except Exception:  # pragma: no cover - defensive, see above
            log.exception("nfs: error in libnfs callback")

    def _on_rpc_reply(
        self, _rpc: int | None, status: int, data: int | None, token: int | None
    ) -> None:
        # Raw NFSv4 COMPOUND replies (see chmod); same contract as _on_reply.
        try:
            pending = self._pending.pop(token or 0, None)
            if pending is None:
                return
            self.last_reply_at = time.monotonic()
            if pending.future.done():
                return
            if status == libnfs.RPC_STATUS_SUCCESS and data:
                nfsstat = libnfs.compound_status(data)
                if nfsstat == libnfs.NFS4_OK:
                    pending.future.set_result(None)
                    return
                err = nfs4_errno(nfsstat)
                detail = f"NFS4 COMPOUND failed with nfsstat4 {nfsstat}"
            elif status == libnfs.RPC_STATUS_CANCEL:
                err, detail = errno.EINTR, "RPC cancelled"
            elif status == libnfs.RPC_STATUS_TIMEOUT:
                err, detail = errno.ETIMEDOUT, "RPC timed out"
            else:
                err, detail = errno.EFAULT, libnfs.error_from(data) or "RPC failed"
            pending.future.set_exception(_rpc_failure(err, pending.op, pending.path, detail))
        except Exception:  # pragma: no cover - defensive, see _on_reply
            log.exception("nfs: error in libnfs RPC callback")

    def _on_event(self, revents: int) -> None:
        ctx = self._ctx
        if ctx is None:
            self._unregister()
            return
        if self._lib.service(ctx, revents) < 0:
            detail = self._lib.get_error(ctx) or "-"
            log.warning("nfs: connection to %s lost (last error: %s)", self._server, detail)
            self.close(ConnectionLost(f"nfs: connection to {self._server} lost"))
            return
        self._sync_events()

    def _sync_events(self) -> None:
        ctx, loop = self._ctx, self._loop
        if ctx is None or loop is None:
            self._unregister()
            return
        fd = self._lib.get_fd(ctx)
        if fd < 0:
            self._unregister()
            return
        try:
            ino = os.fstat(fd).st_ino
        except OSError:
            self._unregister()
            return
        events = self._lib.which_events(ctx) & (libnfs.POLLIN | libnfs.POLLOUT)
        wanted = (fd, ino, events)
        old = self._registered
        if old == wanted:
            return
        if old is not None and old[:2] != wanted[:2]:
            self._unregister()
            old = None
        old_events = old[2] if old is not None else 0
        if events & libnfs.POLLIN and not old_events & libnfs.POLLIN:
            loop.add_reader(fd, self._on_event, libnfs.POLLIN)
        elif old_events & libnfs.POLLIN and not events & libnfs.POLLIN:
            loop.remove_reader(fd)
        if events & libnfs.POLLOUT and not old_events & libnfs.POLLOUT:
            loop.add_writer(fd, self._on_event, libnfs.POLLOUT)
        elif old_events & libnfs.POLLOUT and not events & libnfs.POLLOUT:
            loop.remove_writer(fd)
        self._registered = wanted

    def _unregister(self) -> None:
        reg, self._registered = self._registered, None
        loop = self._loop
        if reg is None or loop is None or loop.is_closed():
            return
        # If the fd was closed meanwhile, the selector ignores the EBADF.
        loop.remove_reader(reg[0])
        loop.remove_writer(reg[0])


def _copy_error(exc: DriverError) -> DriverError:
    return type(exc)(exc.message)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to raise for a failed task group: its first domain error,
    else its first exception (nested groups flattened)."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    for exc in leaves:
        if isinstance(exc, DriverError):
            return exc
    return leaves[0] if leaves else Internal("nfs: empty error group")


# -- the backend ------------------------------------------------------------


class NfsBackend:
    """ShareBackend for one NFS export, over one connection.

    ``server`` is a host name or address, ``port`` the NFS port (None: 2049
    for v4, the portmapper for v3), ``export`` the export path (v3) or the
    pseudo path (v4), ``timeout`` the deadline of every call in seconds.
    """

    def __init__(
        self,
        server: str,
        port: int | None,
        export: str,
        version: Version = "4",
        timeout: float = 10.0,
        *,
        mount_port: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
    ) -> None:
        if version not in ("3", "4", "4.0", "4.1", "4.2"):
            raise InvalidArgument(f"nfs: unsupported version {version!r} (3, 4, 4.0, 4.1, 4.2)")
        if version in ("4.1", "4.2"):
            # libnfs 4.0 always sends minorversion 0 and has no sessions: it
            # cannot speak 4.1+.  Talk NFSv4.0 (every 4.1 server we know also
            # offers 4.0; one that does not fails the mount with Unavailable).
            log.warning("nfs: libnfs 4.0 speaks NFSv4.0 only; using 4.0 for %s", server)
        if not export.startswith("/"):
            raise InvalidArgument("nfs: export must be an absolute path")
        if timeout <= 0:
            raise InvalidArgument("nfs: timeout must be positive")
        self.server = server
        self.port = port
        self.export = export
        self.version: Version = version
        self.timeout = timeout
        self._nfs = NfsContext(
            server,
            port,
            export,
            libnfs.NFS_V3 if version == "3" else libnfs.NFS_V4,
            mount_port=mount_port,
            uid=uid,
            gid=gid,
        )
        # asyncio primitives belong to one loop: made anew for each loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connect_lock = asyncio.Lock()
        self._remove_slots = asyncio.Semaphore(REMOVE_CONCURRENCY)

    @property
    def connects(self) -> int:
        """How many connections (libnfs contexts) this backend has opened."""
        return self._nfs.generation

    def __repr__(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"NfsBackend(nfs{self.version}://{self.server}{port}{self.export})"

    # -- call plumbing ------------------------------------------------------

    async def _connected(self) -> NfsContext:
        if not self._nfs.connected:
            async with self._connect_lock:
                if not self._nfs.connected:
                    await self._nfs.connect()
        return self._nfs

    async def _call(self, op: str, body: Callable[[NfsContext], Awaitable[_T]]) -> _T:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._connect_lock = asyncio.Lock()
            self._remove_slots = asyncio.Semaphore(REMOVE_CONCURRENCY)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    return await body(await self._connected())
                except ConnectionLost as exc:
                    # E.g. the server restarted and this call met the dead
                    # socket first.  Idempotent: once more, on a new one.
                    log.info("nfs: %s; retrying %s on a new connection", exc.message, op)
                    self._nfs.close(ConnectionLost(exc.message))
                    return await body(await self._connected())
        except TimeoutError:
            nfs = self._nfs
            if nfs.last_reply_at < started and nfs.connected:
                # Not one reply since this call began: the connection is hung
                # (server stopped or gone without a reset).  Start over.
                log.warning("nfs: %s not answering; dropping the connection", self.server)
                nfs.close(Unavailable(f"nfs: {self.server} stopped answering"))
            raise DeadlineExceeded(
                f"nfs {op}: no answer from {self.server} within {self.timeout:g} s"
            ) from None

    # -- ShareBackend -------------------------------------------------------

    async def mkdir(self, path: str, *, mode: int | None = None) -> bool:
        check_share_path(path)
        if mode is not None and not 0 <= mode <= 0o7777:
            raise InvalidArgument(f"nfs mkdir {path!r}: mode {mode:#o} out of range")
        return await self._call("mkdir", lambda nfs: self._mkdir(nfs, path, mode))

    async def _mkdir(self, nfs: NfsContext, path: str, mode: int | None) -> bool:
        created = await self._mkdir_p(nfs, path, DEFAULT_DIR_MODE if mode is None else mode)
        if not created:
            st = await nfs.lstat(path)
            if not stat.S_ISDIR(st.nfs_mode):
                raise AlreadyExists(f"nfs mkdir {path!r}: exists and is not a directory")
        if mode is not None:
            # mkdir's mode is subject to umask and some servers drop setgid;
            # also repairs a directory a timed-out earlier call left behind.
            await nfs.chmod(path, mode)
        return created

    async def _mkdir_p(self, nfs: NfsContext, path: str, mode: int) -> bool:
        """mkdir with parents; True if ``path`` itself was created."""
        try:
            await nfs.mkdir(path, mode)
        except AlreadyExists:
            return False
        except NotFound:
            parent = path.rpartition("/")[0]
            if not parent:
                raise
            await self._mkdir_p(nfs, parent, DEFAULT_DIR_MODE)
            try:
                await nfs.mkdir(path, mode)
            except AlreadyExists:
                return False
        return True

    async def rename(self, src: str, dst: str, *, replace: bool = False) -> None:
        check_share_path(src, what="source")
        check_share_path(dst, what="destination")
        if src == dst:
            if not await self.exists(src):
                raise NotFound(f"nfs rename {src!r}: source does not exist")
            return
        if f"{dst}/".startswith(f"{src}/") or f"{src}/".startswith(f"{dst}/"):
            raise InvalidArgument(f"nfs rename {src!r} -> {dst!r}: one path contains the other")
        await self._call("rename", lambda nfs: self._rename(nfs, src, dst, replace=replace))

    async def _rename(self, nfs: NfsContext, src: str, dst: str, *, replace: bool) -> None:
        if not await self._exists(nfs, src):
            raise NotFound(f"nfs rename {src!r}: source does not exist")
        if replace:
            await self._remove_tree(nfs, dst)
        elif await self._exists(nfs, dst):
            raise AlreadyExists(f"nfs rename {src!r} -> {dst!r}: destination exists")
        try:
            await nfs.rename(src, dst)
        except NotFound:
            if not await self._exists(nfs, src):
                raise NotFound(f"nfs rename {src!r}: source does not exist") from None
            raise NotFound(f"nfs rename {src!r} -> {dst!r}: destination parent missing") from None

    async def remove_tree(self, path: str) -> bool:
        check_share_path(path)
        return await self._call("remove_tree", lambda nfs: self._remove_tree(nfs, path))

    async def _remove_tree(self, nfs: NfsContext, path: str) -> bool:
        try:
            st = await nfs.lstat(path)
        except NotFound:
            return False
        except FailedPrecondition:  # ENOTDIR: a parent is a file
            return False
        if not stat.S_ISDIR(st.nfs_mode):
            return await self._unlink(nfs, path)
        await self._empty_dir(nfs, path, int(st.nfs_mode) & 0o7777)
        try:
            await nfs.rmdir(path)
        except NotFound:
            return False
        return True

    async def _unlink(self, nfs: NfsContext, path: str) -> bool:
        async with self._remove_slots:
            try:
                await nfs.unlink(path)
            except NotFound:
                return False
        return True

    async def _empty_dir(self, nfs: NfsContext, path: str, mode: int) -> None:
        # Removing entries needs write+search permission on the directory:
        # a read-only (0555) directory is opened up first.  As root on a
        # no_root_squash export the server would not check, but a squashed
        # owner would.
        if mode & 0o700 != 0o700:
            await nfs.chmod(path, mode | 0o700)
        for _attempt in range(3):
            async with self._remove_slots:
                entries = await nfs.listdir(path)
            if not entries:
                return
            try:
                async with asyncio.TaskGroup() as tg:
                    for e in entries:
                        child = f"{path}/{e.name}"
                        if e.is_dir:
                            tg.create_task(self._remove_subdir(nfs, child, e.mode))
                        else:
                            tg.create_task(self._unlink(nfs, child))
            except BaseExceptionGroup as group:
                raise _first_error(group) from None
        # Something keeps adding entries; let rmdir report ENOTEMPTY.

    async def _remove_subdir(self, nfs: NfsContext, path: str, mode: int) -> None:
        try:
            await self._empty_dir(nfs, path, mode)
            async with self._remove_slots:
                await nfs.rmdir(path)
        except NotFound:
            return

    async def exists(self, path: str) -> bool:
        check_share_path(path)
        return await self._call("exists", lambda nfs: self._exists(nfs, path))

    @staticmethod
    async def _exists(nfs: NfsContext, path: str) -> bool:
        try:
            await nfs.lstat(path)
        except (NotFound, FailedPrecondition):  # ENOENT, ENOTDIR
            return False
        return True

    async def capacity(self) -> Capacity:
        async def body(nfs: NfsContext) -> Capacity:
            sv = await nfs.statvfs()
            return Capacity(
                total_bytes=int(sv.f_blocks * sv.f_frsize),
                available_bytes=int(sv.f_bavail * sv.f_frsize),
            )

        return await self._call("capacity", body)

    async def aclose(self) -> None:
        self._nfs.close(Unavailable("nfs: backend closed"))


# -- pool -------------------------------------------------------------------

PoolKey = tuple[str, int | None, str, Version]


class NfsBackendPool:
    """One :class:`NfsBackend` per (server, port, export, version)."""

    def __init__(self, *, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._backends: dict[PoolKey, NfsBackend] = {}

    def get(self, server: str, port: int | None, export: str, version: Version) -> NfsBackend:
        key: PoolKey = (server, port, export, version)
        backend = self._backends.get(key)
        if backend is None:
            backend = NfsBackend(server, port, export, version, self._timeout)
            self._backends[key] = backend
        return backend

    def __len__(self) -> int:
        return len(self._backends)

    async def aclose(self) -> None:
        backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            await backend.aclose()
