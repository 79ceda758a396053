"""One libnfs context driven natively by the asyncio loop.

One :class:`NfsContext` owns one libnfs context (one TCP connection, one
mounted export).  Its socket is registered with the running loop
(``add_reader``/``add_writer`` as ``nfs_which_events`` asks); libnfs runs only
inside ``nfs_service`` on the loop thread, and its C callbacks complete asyncio
futures.  Nothing blocks the loop and no thread is used.

Auto-reconnect inside libnfs is switched off and libnfs' own timeout too: the
backend (``controller.nfs.backend``) owns deadlines and reconnects.  NFSv4
chmod, setattr and readlink go through raw COMPOUNDs (see
``controller.nfs.xdr``): libnfs 4.0's own v4 calls fail on directories or
return unterminated link text.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from controller.nfs import libnfs, structs, xdr
from controller.nfs.errors import (
    ConnectionLost,
    copy_error,
    errno_to_error,
    nfs4_errno,
    rpc_failure,
)
from driver.errors import DriverError, InvalidArgument, Unavailable
from driver.log import get_logger

log = get_logger(__name__)


def nfs_path(rel: str) -> str:
    """The path libnfs gets: absolute from the export root."""
    return "/" + rel


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
    def lib(self) -> libnfs.LibNfs:
        return self._lib

    @property
    def version(self) -> int:
        """``libnfs.NFS_V3`` or ``libnfs.NFS_V4``."""
        return self._version

    @property
    def export(self) -> str:
        return self._export

    @property
    def rpc_callback(self) -> object:
        """The callback of raw COMPOUNDs (their token is the ``data`` argument)."""
        return self._rpc_callback

    async def idle(self, fh: int) -> None:
        """Wait until no RPC on open file ``fh`` is in flight."""
        while fh in self._fh_busy:
            await self._fh_idle.setdefault(fh, asyncio.Event()).wait()

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
            await self.submit(
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
                    p.future.set_exception(copy_error(exc))
        if ctx is not None:
            # libnfs calls the pending callbacks from here; they find nothing.
            self._lib.destroy_context(ctx)
        self._loop = None

    def _release_fh(self, fh: int) -> None:
        if not fh or fh not in self._fh_busy:
            return
        self._fh_busy[fh] -= 1
        if self._fh_busy[fh] <= 0:
            del self._fh_busy[fh]
            waiter = self._fh_idle.pop(fh, None)
            if waiter is not None:
                waiter.set()

    @property
    def io_sizes(self) -> tuple[int, int]:
        """(largest read, largest write) the server takes; 0 if unknown."""
        ctx = self._ctx
        if ctx is None:
            return 0, 0
        return self._lib.readmax(ctx), self._lib.writemax(ctx)

    # -- machinery ----------------------------------------------------------

    async def submit(
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
                detail = structs.error_from(data) or (self._lib.get_error(ctx) if ctx else "")
                value = rpc_failure(err, pending.op, pending.path, detail)
            elif pending.kind in ("dir", "dirstats") and data:
                # Read and free the handle even if nobody waits any more.
                value = self._entries(pending.kind, ctx or 0, data)
            elif pending.kind == "fh" and data:
                if pending.future.done() and ctx:
                    # Opened after the caller gave up: close it again.
                    self._lib.close_async(ctx, data, self._callback, 0)
                    return
                value = int(data)
            elif pending.kind == "bytes":
                value = structs.bytes_from(data, err)
            elif pending.kind == "count":
                value = err
            elif pending.kind == "text":
                value = structs.text_from(data)
            elif pending.kind == "stat" and data:
                value = structs.stat_from(data)
            elif pending.kind == "statvfs" and data:
                value = structs.statvfs_from(data)
            if pending.future.done():
                return  # timed out / cancelled meanwhile
            if isinstance(value, DriverError):
                pending.future.set_exception(value)
            else:
                pending.future.set_result(value)
        except Exception:  # pragma: no cover - defensive, see above
            log.exception("nfs: error in libnfs callback")

    def _entries(self, kind: _Kind, ctx: int, nfsdir: int) -> list[Entry] | list[structs.DirStat]:
        """An opened directory's entries (``.`` and ``..`` left out), then closed."""
        try:
            if kind == "dir":
                return [
                    Entry(name, type_ == structs.NF3DIR, mode & 0o7777)
                    for name, type_, mode in self._lib.readdir_all(ctx, nfsdir)
                    if name not in (".", "..")
                ]
            return [e for e in self._lib.readdir_stats(ctx, nfsdir) if e.name not in (".", "..")]
        finally:
            self._lib.closedir(ctx, nfsdir)

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
                nfsstat = structs.compound_status(data)
                if nfsstat == xdr.NFS4_OK:
                    if pending.kind != "rpc_readlink":
                        pending.future.set_result(None)
                        return
                    text = structs.readlink_result(data)
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
                err, detail = errno.EFAULT, structs.error_from(data) or "RPC failed"
            pending.future.set_exception(rpc_failure(err, pending.op, pending.path, detail))
        except Exception:  # pragma: no cover - defensive, see _on_reply
            log.exception("nfs: error in libnfs RPC callback")

    def _on_event(self, revents: int) -> None:
        ctx = self._ctx
        if ctx is None:
            self._unregister()
            return
        if self._lib.service(ctx, revents) < 0:
            detail = self._lib.get_error(ctx) or "-"
            log.warning("nfs: connection lost", server=self._server, last_error=detail)
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
