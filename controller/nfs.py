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
import collections
import contextlib
import ctypes
import dataclasses
import errno
import itertools
import logging
import os
import re
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from controller import libnfs
from controller.backend import Capacity, Features, FileInfo, FileKind, RemoveResult
from driver import failures, rpc
from driver.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DriverError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    first_error,
)
from driver.failures import Failure

log = logging.getLogger(__name__)

Version = Literal["3", "4", "4.0", "4.1", "4.2"]
_T = TypeVar("_T")

#: Backoff between retries of a BUSY answer (NFSv4 GRACE/DELAY, NFSv3 JUKEBOX):
#: doubling from the first to the last, within the call's time budget.
BUSY_FIRST_DELAY: Final = 0.1
BUSY_MAX_DELAY: Final = 2.0
#: Time kept back from the caller's deadline for the answer to reach it.
RPC_REPLY_MARGIN: Final = 0.5
#: Mode of directories created without an explicit mode (parents included).
DEFAULT_DIR_MODE: Final = 0o755
#: At most this many RPCs of one remove_tree in flight at once.
REMOVE_CONCURRENCY: Final = 64
#: Bytes per READ/WRITE (capped by the server's maximum).
IO_CHUNK: Final = 1 << 20
#: READs of one open file in flight at once.
READ_AHEAD: Final = 4
#: WRITEs of one open file in flight at once.
WRITE_BEHIND: Final = 4
#: NFSv4 WRITE size: libnfs 4.0 encodes every v4 COMPOUND into a fixed
#: 4 KiB buffer (no size hint; measured: 3800 data bytes pass, 4000 fail with
#: "Failed to encode COMPOUND4args").  3 KiB leaves room for the RPC and
#: AUTH_SYS headers and a 128-byte file handle.  READ replies are not limited.
V4_WRITE_CHUNK: Final = 3 << 10
#: ... so more of them are kept in flight.
V4_WRITE_BEHIND: Final = 64
#: Mode of a file while it is written (set_attributes gives the final one).
NEW_FILE_MODE: Final = 0o600
#: What libnfs 4.0 reports for an NFSv4 owner name it cannot parse.
NFS4_UNKNOWN_ID: Final = 65534
#: libnfs takes the C library's open flags; Linux-only constant (the
#: controller runs on Linux; mypy also checks this module for Windows).
_O_NOFOLLOW: Final[int] = getattr(os, "O_NOFOLLOW", 0)
NFS_FEATURES: Final = Features(symlinks=True, modes=True, owners=True, server_copy=False)

# What libnfs reports beyond the shared errno table: an RPC that failed
# with its socket (EFAULT) or was cancelled (EINTR, context torn down).
_NFS_ERRNO: Final[Mapping[int, Failure]] = {
    **failures.ERRNO,
    errno.EFAULT: Failure.UNREACHABLE,
    errno.EINTR: Failure.UNREACHABLE,
}
# At mount (connect, then look up the export) fewer answers make sense: a
# missing export is a configuration problem (never "volume gone"), and
# anything unexpected means this server is not usable as configured.
# NFSv3 servers (ganesha, knfsd's mountd) answer MNT3ERR_ACCES for a path
# they do not export at all, so a refusal at mount is not told apart from a
# missing export: both are the StorageClass's problem, not the volume's.
_MOUNT_ERRNO: Final[Mapping[int, Failure]] = {
    errno.ENOENT: Failure.SHARE_MISSING,
    errno.EACCES: Failure.SHARE_REFUSED,
    errno.EPERM: Failure.SHARE_REFUSED,
    errno.ETIMEDOUT: Failure.TIMED_OUT,
}
# Answers of a one-step RMDIR that mean "walk the tree instead".
_WALK_INSTEAD: Final = frozenset(
    {Failure.NOT_EMPTY, Failure.NOT_A_DIRECTORY, Failure.IS_A_DIRECTORY}
)
# libnfs 4.0 reports an NFS status it has no errno for as ERANGE and names
# the status in its error text ("... failed with NFS4ERR_GRACE(-5)"): that
# name is the only carrier of the status, so it is read from there.
_NFS_STATUS_NAME: Final = re.compile(r"\b(NFS[34]?ERR_[A-Z_]+)\b")
NFS_STATUS: Final[Mapping[str, Failure]] = {
    "NFS4ERR_GRACE": Failure.BUSY,
    "NFS4ERR_DELAY": Failure.BUSY,
    "NFS3ERR_JUKEBOX": Failure.BUSY,
    "NFS4ERR_STALE": Failure.STALE,
    "NFS4ERR_EXPIRED": Failure.STALE,
    "NFS4ERR_STALE_CLIENTID": Failure.STALE,
    "NFS4ERR_STALE_STATEID": Failure.STALE,
    "NFS4ERR_BADHANDLE": Failure.STALE,
    "NFS4ERR_WRONGSEC": Failure.DENIED,
    "NFS4ERR_NAMETOOLONG": Failure.BAD_NAME,
    "NFS3ERR_NAMETOOLONG": Failure.BAD_NAME,
    "NFS4ERR_BADNAME": Failure.BAD_NAME,
    "NFS4ERR_NOTEMPTY": Failure.NOT_EMPTY,
    "NFS3ERR_NOTEMPTY": Failure.NOT_EMPTY,
}

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
    10008: errno.EAGAIN,  # NFS4ERR_DELAY (BUSY: retried)
    10011: errno.ESTALE,  # NFS4ERR_EXPIRED
    10013: errno.EAGAIN,  # NFS4ERR_GRACE (BUSY: retried)
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
    is libnfs' message.  The tables above decide (``driver.failures``).
    """
    code = abs(err)
    name = errno.errorcode.get(code, f"errno {code}")
    where = f"nfs {op} {path!r}"
    text = f"{detail or os.strerror(code)}; {name}"
    if op == "mount":
        return failures.error(_MOUNT_ERRNO.get(code, Failure.UNREACHABLE), where, text)
    found = _NFS_STATUS_NAME.search(detail)
    failure = NFS_STATUS.get(found.group(1)) if found else None
    if failure is None:
        failure = _NFS_ERRNO.get(code, Failure.UNKNOWN)
    return failures.error(failure, where, text)


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


_Kind = Literal[
    "none",
    "stat",
    "statvfs",
    "dir",
    "dirstats",
    "rpc",
    "rpc_readlink",
    "fh",
    "bytes",
    "count",
    "text",
]


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[object]
    kind: _Kind
    op: str
    path: str
    keep: object = None  # a buffer libnfs reads from until the reply
    fh: int = 0  # the open file this RPC works on (0: none)


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
        # RPCs in flight per open file: a handle is closed (freed by libnfs)
        # only when none is left, or a late reply would touch freed memory.
        self._fh_busy: dict[int, int] = {}
        self._fh_idle: dict[int, asyncio.Event] = {}

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
        self._fh_busy.clear()
        for waiter in self._fh_idle.values():
            waiter.set()
        self._fh_idle.clear()
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

    async def listdir_stats(self, path: str) -> list[libnfs.DirStat]:
        """Entries with their attributes (``.`` and ``..`` left out)."""
        lib = self._lib
        p = _nfs_path(path)
        result = await self._submit(
            "opendir", path, "dirstats", lambda c, cb, t: lib.opendir_async(c, p, cb, t)
        )
        assert isinstance(result, list)  # noqa: S101 -- set by _on_reply
        return result

    # -- files by handle: ``fh`` is only valid on this context generation --

    async def open(self, path: str, flags: int) -> int:
        lib = self._lib
        p = _nfs_path(path)
        result = await self._submit(
            "open", path, "fh", lambda c, cb, t: lib.open_async(c, p, flags, cb, t)
        )
        assert isinstance(result, int)  # noqa: S101 -- set by _on_reply
        return result

    async def create(self, path: str, flags: int, mode: int) -> int:
        lib = self._lib
        p = _nfs_path(path)
        result = await self._submit(
            "create", path, "fh", lambda c, cb, t: lib.create_async(c, p, flags, mode, cb, t)
        )
        assert isinstance(result, int)  # noqa: S101 -- set by _on_reply
        return result

    def _release_fh(self, fh: int) -> None:
        if not fh or fh not in self._fh_busy:
            return
        self._fh_busy[fh] -= 1
        if self._fh_busy[fh] <= 0:
            del self._fh_busy[fh]
            waiter = self._fh_idle.pop(fh, None)
            if waiter is not None:
                waiter.set()

    async def close_file(self, fh: int, path: str) -> None:
        """Close (and free) ``fh`` once no RPC on it is in flight: a caller
        that stopped waiting (cancelled, timed out) does not stop libnfs."""
        while fh in self._fh_busy:
            await self._fh_idle.setdefault(fh, asyncio.Event()).wait()
        lib = self._lib
        await self._submit("close", path, "none", lambda c, cb, t: lib.close_async(c, fh, cb, t))

    async def fsync(self, fh: int, path: str) -> None:
        lib = self._lib
        await self._submit(
            "fsync", path, "none", lambda c, cb, t: lib.fsync_async(c, fh, cb, t), fh=fh
        )

    async def pread(self, fh: int, path: str, offset: int, count: int) -> bytes:
        lib = self._lib
        result = await self._submit(
            "read",
            path,
            "bytes",
            lambda c, cb, t: lib.pread_async(c, fh, offset, count, cb, t),
            fh=fh,
        )
        assert isinstance(result, bytes)  # noqa: S101 -- set by _on_reply
        return result

    async def pwrite(self, fh: int, path: str, offset: int, data: bytes) -> int:
        lib = self._lib
        buf = ctypes.create_string_buffer(data, len(data))
        result = await self._submit(
            "write",
            path,
            "count",
            lambda c, cb, t: lib.pwrite_async(c, fh, offset, buf, cb, t),
            keep=buf,
            fh=fh,
        )
        assert isinstance(result, int)  # noqa: S101 -- set by _on_reply
        return result

    @property
    def io_sizes(self) -> tuple[int, int]:
        """(largest read, largest write) the server takes; 0 if unknown."""
        ctx = self._ctx
        if ctx is None:
            return 0, 0
        return self._lib.readmax(ctx), self._lib.writemax(ctx)

    # -- symlinks and attributes -------------------------------------------

    async def symlink(self, target: str, path: str) -> None:
        lib = self._lib
        raw_target = target.encode(errors="surrogateescape")
        raw_path = _nfs_path(path).encode()
        await self._submit(
            "symlink",
            path,
            "none",
            lambda c, cb, t: lib.symlink_async(c, raw_target, raw_path, cb, t),
            keep=(raw_target, raw_path),
        )

    async def readlink(self, path: str) -> str:
        lib = self._lib
        if self._version == libnfs.NFS_V4:
            parts = [p for p in self._export.split("/") if p] + path.split("/")
            result = await self._submit(
                "readlink",
                path,
                "rpc_readlink",
                lambda c, _cb, t: lib.nfs4_readlink_async(c, parts, self._rpc_callback, t),
            )
        else:
            p = _nfs_path(path)
            result = await self._submit(
                "readlink", path, "text", lambda c, cb, t: lib.readlink_async(c, p, cb, t)
            )
        assert isinstance(result, str)  # noqa: S101 -- set by the reply handlers
        return result

    async def setattr(
        self,
        path: str,
        *,
        mode: int | None = None,
        owner: tuple[int | None, int | None] | None = None,
        times: tuple[int, int] | None = None,
    ) -> None:
        """Set what is given (never following a final symlink): ``mode``,
        ``owner`` (uid, gid), ``times`` (atime, mtime in ns).  NFSv4: one
        SETATTR with nanoseconds; NFSv3: one call per attribute,
        microseconds."""
        lib = self._lib
        if self._version == libnfs.NFS_V4:
            parts = [p for p in self._export.split("/") if p] + path.split("/")
            mask, values = libnfs.encode_fattr4(
                mode=mode,
                owner=None if owner is None or owner[0] is None else str(owner[0]),
                group=None if owner is None or owner[1] is None else str(owner[1]),
                atime_ns=None if times is None else times[0],
                mtime_ns=None if times is None else times[1],
            )
            await self._submit(
                "setattr",
                path,
                "rpc",
                lambda c, _cb, t: lib.nfs4_setattr_async(
                    c, parts, mask, values, self._rpc_callback, t
                ),
            )
            return
        p = _nfs_path(path)
        if owner is not None and owner[0] is not None and owner[1] is not None:
            uid, gid = owner[0], owner[1]
            await self._submit(
                "chown", path, "none", lambda c, cb, t: lib.lchown_async(c, p, uid, gid, cb, t)
            )
        if mode is not None:
            await self.chmod(path, mode)
        if times is not None:
            atime, mtime = times
            await self._submit(
                "utimes",
                path,
                "none",
                lambda c, cb, t: lib.lutimes_async(c, p, atime, mtime, cb, t),
            )

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
        *,
        keep: object = None,
        fh: int = 0,
    ) -> object:
        ctx = self._ctx
        if ctx is None:
            raise Unavailable(f"nfs {op} {path!r}: not connected")
        loop = asyncio.get_running_loop()
        token = next(self._tokens)
        future: asyncio.Future[object] = loop.create_future()
        self._pending[token] = _Pending(future, kind, op, path, keep, fh)
        if fh:
            self._fh_busy[fh] = self._fh_busy.get(fh, 0) + 1
        rc = start(ctx, self._callback, token)
        if rc < 0:
            del self._pending[token]
            self._release_fh(fh)
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
            self._release_fh(pending.fh)
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
            elif pending.kind == "dirstats" and data:
                stats = self._lib.readdir_stats(ctx or 0, data)
                self._lib.closedir(ctx or 0, data)
                value = [e for e in stats if e.name not in (".", "..")]
            elif pending.kind == "fh" and data:
                if pending.future.done() and ctx:
                    # Opened after the caller gave up: close it again.
                    self._lib.close_async(ctx, data, self._callback, 0)
                    return
                value = int(data)
            elif pending.kind == "bytes":
                value = libnfs.bytes_from(data, err)
            elif pending.kind == "count":
                value = err
            elif pending.kind == "text":
                value = libnfs.text_from(data)
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
                    if pending.kind != "rpc_readlink":
                        pending.future.set_result(None)
                        return
                    text = libnfs.readlink_result(data)
                    if text is not None:
                        pending.future.set_result(text.decode(errors="surrogateescape"))
                        return
                    nfsstat = 10044  # NFS4ERR_OP_ILLEGAL: no READLINK result
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
        self._open_lock = asyncio.Lock()
        # Cleared when the server refuses a chown (root squash): not asked again.
        self._chown_allowed = True

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

    async def _call(
        self,
        op: str,
        body: Callable[[NfsContext], Awaitable[_T]],
        *,
        generation: int | None = None,
    ) -> _T:
        """Run ``body`` on a connected context within the deadline.

        With ``generation`` (a call on an open file handle) the call must
        run on that very connection: a handle does not survive a reconnect
        (it would be a dangling pointer), so a changed or lost connection is
        Unavailable and nothing is retried.
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._connect_lock = asyncio.Lock()
            self._remove_slots = asyncio.Semaphore(REMOVE_CONCURRENCY)
            self._open_lock = asyncio.Lock()
        started = time.monotonic()
        # "Try again later" answers (grace after a server restart, DELAY,
        # JUKEBOX) are retried with backoff while the caller's deadline and
        # our own bound leave time; what is still busy then is UNAVAILABLE.
        left = rpc.time_left()
        # Answer before the caller gives up, so it sees UNAVAILABLE and not
        # its own DEADLINE_EXCEEDED.
        budget = self.timeout if left is None else min(self.timeout, left - RPC_REPLY_MARGIN)
        delay = BUSY_FIRST_DELAY
        tries = 0
        try:
            async with asyncio.timeout(self.timeout):
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
                        log.info("nfs: %s; retrying %s in %.2f s", exc.message, op, wait)
                        await asyncio.sleep(wait)
                        delay = min(delay * 2, BUSY_MAX_DELAY)
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

    async def _attempt(
        self, op: str, body: Callable[[NfsContext], Awaitable[_T]], generation: int | None
    ) -> _T:
        if generation is not None:
            nfs = self._nfs
            if not nfs.connected or nfs.generation != generation:
                raise Unavailable(
                    f"nfs {op}: the connection to {self.server} was reset; the open file is gone"
                )
            return await body(nfs)
        try:
            return await body(await self._connected())
        except ConnectionLost as exc:
            # E.g. the server restarted and this call met the dead
            # socket first.  Idempotent: once more, on a new one.
            log.info("nfs: %s; retrying %s on a new connection", exc.message, op)
            self._nfs.close(ConnectionLost(exc.message))
            return await body(await self._connected())

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

    async def rename(self, src: str, dst: str, *, replace: bool = False) -> bool:
        check_share_path(src, what="source")
        check_share_path(dst, what="destination")
        if src == dst:
            return await self.exists(src)
        if f"{dst}/".startswith(f"{src}/") or f"{src}/".startswith(f"{dst}/"):
            raise InvalidArgument(f"nfs rename {src!r} -> {dst!r}: one path contains the other")
        return await self._call("rename", lambda nfs: self._rename(nfs, src, dst, replace=replace))

    async def _rename(self, nfs: NfsContext, src: str, dst: str, *, replace: bool) -> bool:
        if not await self._exists(nfs, src):
            return False
        if replace:
            await self._remove_tree(nfs, dst)
        elif await self._exists(nfs, dst):
            raise AlreadyExists(f"nfs rename {src!r} -> {dst!r}: destination exists")
        try:
            await nfs.rename(src, dst)
        except NotFound:
            if not await self._exists(nfs, src):
                return False  # renamed or removed by someone else meanwhile
            raise NotFound(f"nfs rename {src!r} -> {dst!r}: destination parent missing") from None
        return True

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

    async def remove_empty_dir(self, path: str) -> RemoveResult:
        check_share_path(path)

        async def body(nfs: NfsContext) -> RemoveResult:
            try:
                await nfs.rmdir(path)  # one RMDIR: no LOOKUP/READDIR before it
            except NotFound:
                return "missing"
            except FailedPrecondition as exc:
                if exc.failure in _WALK_INSTEAD:  # not empty, or a file: the caller walks
                    return "not_empty"
                raise
            return "removed"

        return await self._call("rmdir", body)

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
                raise first_error(group) from None
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

    def _seqid(self) -> contextlib.AbstractAsyncContextManager[object]:
        """NFSv4.0 numbers OPEN and CLOSE per open-owner (``seqid``), and
        libnfs uses one open-owner per connection: two in flight at once
        reach the server out of order (measured: NFS4ERR_BAD_SEQID, then
        BAD_STATEID).  So they go one at a time; READ/WRITE do not count."""
        if self.version == "3":
            return contextlib.nullcontext()
        return self._open_lock

    async def _close_handle(
        self, fh: int, path: str, generation: int, *, strict: bool = False
    ) -> None:
        """Close an open file.  On a connection that is gone the handle went
        with it: nothing to do.  Errors count only with ``strict`` (the
        close after writing: NFSv4 CLOSE may report a late write error)."""
        nfs = self._nfs
        if not nfs.connected or nfs.generation != generation:
            return
        try:
            async with self._seqid():
                await self._call("close", lambda c: c.close_file(fh, path), generation=generation)
        except DriverError:
            if strict:
                raise
            log.debug("nfs: closing %r failed", path, exc_info=True)

    # -- ShareFiles ---------------------------------------------------------

    @property
    def features(self) -> Features:
        return NFS_FEATURES

    @property
    def connection_generation(self) -> int:
        return self._nfs.generation

    async def stat(self, path: str) -> FileInfo | None:
        check_share_path(path)

        async def body(nfs: NfsContext) -> FileInfo | None:
            try:
                st = await nfs.lstat(path)
            except (NotFound, FailedPrecondition):  # ENOENT, ENOTDIR
                return None
            return self._owners(_info_from_stat(st))

        return await self._call("stat", body)

    async def list_dir(self, path: str) -> list[tuple[str, FileInfo]]:
        check_share_path(path)
        entries = await self._call("list", lambda nfs: nfs.listdir_stats(path))
        return [(e.name, self._owners(_info_from_dirstat(e))) for e in entries]

    def _owners(self, info: FileInfo) -> FileInfo:
        """NFSv4 owners are strings.  libnfs 4.0 reads a numeric one ("1000";
        Linux nfsd sends those for sec=sys) and turns any name it cannot
        parse ("root@domain", as nfs-ganesha sends by default) into 65534.
        That value is "unknown" here: such an owner is not copied."""
        if self.version == "3":
            return info
        uid = None if info.uid == NFS4_UNKNOWN_ID else info.uid
        gid = None if info.gid == NFS4_UNKNOWN_ID else info.gid
        if (uid, gid) == (info.uid, info.gid):
            return info
        return dataclasses.replace(info, uid=uid, gid=gid)

    async def open_read(self, path: str, *, size_hint: int | None = None) -> NfsReader:
        check_share_path(path)

        async def body(nfs: NfsContext) -> NfsReader:
            async with self._seqid():
                fh = await nfs.open(path, os.O_RDONLY)
            readmax = nfs.io_sizes[0]
            chunk = min(IO_CHUNK, readmax) if readmax > 0 else IO_CHUNK
            if size_hint is not None:
                # A small file (or a header) is not worth a 1 MiB READ.
                chunk = max(4096, min(chunk, size_hint))
            return NfsReader(self, path, fh, nfs.generation, chunk, size_hint)

        return await self._call("open", body)

    async def open_write(self, path: str) -> NfsWriter:
        check_share_path(path)

        async def body(nfs: NfsContext) -> NfsWriter:
            flags = os.O_WRONLY | os.O_TRUNC | _O_NOFOLLOW
            async with self._seqid():
                try:
                    fh = await nfs.create(path, flags, NEW_FILE_MODE)
                except AlreadyExists:
                    # libnfs 4.0's v4 create is exclusive (NFS4ERR_EXIST): replace.
                    await nfs.unlink(path)
                    fh = await nfs.create(path, flags, NEW_FILE_MODE)
            if self.version != "3":
                return NfsWriter(self, path, fh, nfs.generation, V4_WRITE_CHUNK, V4_WRITE_BEHIND)
            writemax = nfs.io_sizes[1]
            chunk = min(IO_CHUNK, writemax) if writemax > 0 else IO_CHUNK
            return NfsWriter(self, path, fh, nfs.generation, chunk, WRITE_BEHIND)

        return await self._call("create", body)

    async def symlink(self, target: str, path: str) -> None:
        check_share_path(path)
        if not target or "\x00" in target:
            raise InvalidArgument(f"nfs symlink {path!r}: empty target or NUL in it")
        await self._call("symlink", lambda nfs: nfs.symlink(target, path))

    async def readlink(self, path: str) -> str:
        check_share_path(path)
        return await self._call("readlink", lambda nfs: nfs.readlink(path))

    async def set_attributes(self, path: str, info: FileInfo) -> None:
        check_share_path(path)
        mode = info.mode if info.kind != "symlink" else None
        owner = None
        if (info.uid is not None or info.gid is not None) and self._chown_allowed:
            owner = (info.uid, info.gid)
        times = None
        if info.mtime_ns is not None:
            times = (info.atime_ns if info.atime_ns is not None else info.mtime_ns, info.mtime_ns)
        if mode is None and owner is None and times is None:
            return

        async def body(nfs: NfsContext) -> None:
            if owner is not None:
                try:
                    await nfs.setattr(path, owner=owner)
                except (PermissionDenied, InvalidArgument, Internal) as exc:
                    # Root squash, or an NFSv4 server that maps no numeric
                    # owners: keep the server's choice from now on.
                    log.info("nfs: %s keeps file owners as they are (%s)", self.server, exc)
                    self._chown_allowed = False
            try:
                await nfs.setattr(path, mode=mode, times=times)
            except (PermissionDenied, InvalidArgument, Internal) as exc:
                if info.kind != "symlink" or mode is not None:
                    raise
                # Some servers refuse times on a symlink itself: not worth failing for.
                log.debug("nfs: times of symlink %r not kept: %s", path, exc)

        await self._call("setattr", body)

    async def copy_file(self, src: str, dst: str) -> None:
        """Streams the content through this client: libnfs 4.0 speaks NFSv3
        and v4.0, and neither has a server-side copy (that is v4.2 COPY)."""
        reader = await self.open_read(src)
        try:
            writer = await self.open_write(dst)
            try:
                while data := await reader.read(IO_CHUNK):
                    await writer.write(data)
            except BaseException:
                await writer.abort()
                raise
            await writer.aclose()
        finally:
            await reader.aclose()

    async def aclose(self) -> None:
        self._nfs.close(Unavailable("nfs: backend closed"))


def _kind_of(mode: int) -> FileKind:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


_NF3_KINDS: Final[dict[int, FileKind]] = {
    libnfs.NF3REG: "file",
    libnfs.NF3DIR: "dir",
    libnfs.NF3LNK: "symlink",
}


def _info_from_stat(st: libnfs.NfsStat64) -> FileInfo:
    return FileInfo(
        kind=_kind_of(int(st.nfs_mode)),
        size=int(st.nfs_size),
        mtime_ns=int(st.nfs_mtime) * 1_000_000_000 + int(st.nfs_mtime_nsec),
        atime_ns=int(st.nfs_atime) * 1_000_000_000 + int(st.nfs_atime_nsec),
        mode=int(st.nfs_mode) & 0o7777,
        uid=int(st.nfs_uid),
        gid=int(st.nfs_gid),
        file_id=int(st.nfs_ino),
    )


def _info_from_dirstat(e: libnfs.DirStat) -> FileInfo:
    return FileInfo(
        kind=_NF3_KINDS.get(e.type, "other"),
        size=e.size,
        mtime_ns=e.mtime_ns,
        atime_ns=e.atime_ns,
        mode=e.mode,
        uid=e.uid,
        gid=e.gid,
        file_id=e.inode,
    )


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Done callback: a result nobody waits for any more is not an error."""
    if not task.cancelled():
        task.exception()


class NfsReader:
    """A file open for reading, with up to ``READ_AHEAD`` preads in flight."""

    def __init__(  # noqa: PLR0917 - the facts of one open file
        self,
        backend: NfsBackend,
        path: str,
        fh: int,
        generation: int,
        chunk: int,
        size_hint: int | None,
    ) -> None:
        self._backend = backend
        self._path = path
        self._fh: int | None = fh
        self._generation = generation
        self._chunk = chunk
        self._hint = size_hint
        self._next = 0
        self._eof = False
        self._buf = b""
        self._pending: collections.deque[tuple[int, int, asyncio.Task[bytes]]] = collections.deque()

    def _request(self, offset: int, count: int) -> asyncio.Task[bytes]:
        fh, path = self._fh, self._path
        assert fh is not None  # noqa: S101 -- only called while open
        task = asyncio.ensure_future(
            self._backend._call(
                "read",
                lambda nfs: nfs.pread(fh, path, offset, count),
                generation=self._generation,
            )
        )
        task.add_done_callback(_retrieve)
        return task

    def _fill(self) -> None:
        while len(self._pending) < READ_AHEAD and (
            self._hint is None or self._next <= self._hint or not self._pending
        ):
            self._pending.append((self._next, self._chunk, self._request(self._next, self._chunk)))
            self._next += self._chunk

    async def read(self, size: int) -> bytes:
        if self._fh is None:
            raise InvalidArgument(f"nfs read {self._path!r}: the file is closed")
        while not self._buf and not self._eof:
            self._fill()
            offset, count, task = self._pending.popleft()
            data = await task
            if not data:
                self._eof = True
                self._drop_pending()
            elif len(data) < count:
                # A short read is not the end: fetch the rest of that range first.
                rest = (offset + len(data), count - len(data))
                self._pending.appendleft((*rest, self._request(*rest)))
            self._buf = data
        out, self._buf = self._buf[:size], self._buf[size:]
        return out

    def _drop_pending(self) -> None:
        for _, _, task in self._pending:
            task.cancel()
        self._pending.clear()

    async def aclose(self) -> None:
        fh, self._fh = self._fh, None
        tasks = [t for _, _, t in self._pending]
        self._drop_pending()
        await asyncio.gather(*tasks, return_exceptions=True)
        if fh is not None:
            await self._backend._close_handle(fh, self._path, self._generation)


class NfsWriter:
    """A file open for writing, with up to ``window`` pwrites in flight."""

    def __init__(  # noqa: PLR0917 - the facts of one open file
        self,
        backend: NfsBackend,
        path: str,
        fh: int,
        generation: int,
        chunk: int,
        window: int,
    ) -> None:
        self._backend = backend
        self._path = path
        self._fh: int | None = fh
        self._generation = generation
        self._chunk = chunk
        self._window = window
        self._offset = 0
        self._inflight: collections.deque[tuple[int, bytes, asyncio.Task[int]]] = (
            collections.deque()
        )

    def _pwrite(self, offset: int, data: bytes) -> asyncio.Task[int]:
        fh, path = self._fh, self._path
        assert fh is not None  # noqa: S101 -- only called while open
        task = asyncio.ensure_future(
            self._backend._call(
                "write",
                lambda nfs: nfs.pwrite(fh, path, offset, data),
                generation=self._generation,
            )
        )
        task.add_done_callback(_retrieve)
        return task

    async def write(self, data: bytes) -> None:
        if self._fh is None:
            raise InvalidArgument(f"nfs write {self._path!r}: the file is closed")
        view = memoryview(data)
        for start in range(0, len(view), self._chunk):
            part = bytes(view[start : start + self._chunk])
            while len(self._inflight) >= self._window:
                await self._reap()
            self._inflight.append((self._offset, part, self._pwrite(self._offset, part)))
            self._offset += len(part)

    async def _reap(self) -> None:
        offset, part, task = self._inflight.popleft()
        written = await task
        while written < len(part):
            if written <= 0:
                raise Internal(f"nfs write {self._path!r}: the server wrote nothing")
            offset, part = offset + written, part[written:]
            written = await self._pwrite(offset, part)

    async def aclose(self) -> None:
        try:
            while self._inflight:
                await self._reap()
            open_fh = self._fh
            if open_fh is not None:
                await self._backend._call(
                    "fsync",
                    lambda nfs: nfs.fsync(open_fh, self._path),
                    generation=self._generation,
                )
        except BaseException:
            await self.abort()
            raise
        fh, self._fh = self._fh, None
        if fh is not None:
            await self._backend._close_handle(fh, self._path, self._generation, strict=True)

    async def abort(self) -> None:
        tasks = [t for _, _, t in self._inflight]
        for task in tasks:
            task.cancel()
        self._inflight.clear()
        await asyncio.gather(*tasks, return_exceptions=True)
        fh, self._fh = self._fh, None
        if fh is not None:
            await self._backend._close_handle(fh, self._path, self._generation)


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
