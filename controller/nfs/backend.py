"""The NFS share backend: ``ShareBackend`` over libnfs, on the asyncio loop.

The package's pieces: ``errors`` (errno and nfsstat4 to domain errors),
``xdr`` (NFSv4 values, pure), ``structs`` and ``libnfs`` (the ctypes binding),
``context`` (one libnfs context pumped by the loop), ``files`` (open files)
and this module (deadlines, reconnects, directory trees, the pool).

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
import dataclasses
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Final, Literal, TypeVar

from controller import tree
from controller.nfs import libnfs
from controller.nfs.context import NfsContext
from controller.nfs.errors import WALK_INSTEAD, ConnectionLost
from controller.nfs.files import NfsReader, NfsWriter, info_from_dirstat, info_from_stat
from controller.nfs.ops import NfsOps
from controller.nfs.treeops import REMOVE_CONCURRENCY, NfsTreeOps
from controller.share import Capacity, Features, FileInfo, RemoveResult
from driver import paths, rpc
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
)
from driver.failures import Failure
from driver.log import get_logger

log = get_logger(__name__)

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
#: Bytes per READ/WRITE (capped by the server's maximum).
IO_CHUNK: Final = 1 << 20
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


def check_share_path(path: str, *, what: str = "path") -> str:
    """Last line of defence (``driver.paths.share_parts``); returns ``path``."""
    paths.share_parts(path, what=what)
    return path


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
            log.warning("nfs: libnfs 4.0 speaks NFSv4.0 only; using 4.0", server=server)
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
        self._ops = NfsOps(self._nfs)
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

    async def _connected(self) -> NfsOps:
        if not self._nfs.connected:
            async with self._connect_lock:
                if not self._nfs.connected:
                    await self._nfs.connect()
        return self._ops

    async def _call(
        self,
        op: str,
        body: Callable[[NfsOps], Awaitable[_T]],
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
                        log.info("nfs: busy; retrying", op=op, error=exc.message, wait=wait)
                        await asyncio.sleep(wait)
                        delay = min(delay * 2, BUSY_MAX_DELAY)
        except TimeoutError:
            nfs = self._nfs
            if nfs.last_reply_at < started and nfs.connected:
                # Not one reply since this call began: the connection is hung
                # (server stopped or gone without a reset).  Start over.
                log.warning(
                    "nfs: server not answering; dropping the connection", server=self.server
                )
                nfs.close(Unavailable(f"nfs: {self.server} stopped answering"))
            raise DeadlineExceeded(
                f"nfs {op}: no answer from {self.server} within {self.timeout:g} s"
            ) from None

    async def _attempt(
        self, op: str, body: Callable[[NfsOps], Awaitable[_T]], generation: int | None
    ) -> _T:
        if generation is not None:
            nfs = self._nfs
            if not nfs.connected or nfs.generation != generation:
                raise Unavailable(
                    f"nfs {op}: the connection to {self.server} was reset; the open file is gone"
                )
            return await body(self._ops)
        try:
            return await body(await self._connected())
        except ConnectionLost as exc:
            # E.g. the server restarted and this call met the dead
            # socket first.  Idempotent: once more, on a new one.
            log.info("nfs: retrying on a new connection", op=op, error=exc.message)
            self._nfs.close(ConnectionLost(exc.message))
            return await body(await self._connected())

    # -- ShareBackend -------------------------------------------------------

    async def mkdir(self, path: str, *, mode: int | None = None) -> bool:
        check_share_path(path)
        if mode is not None and not 0 <= mode <= 0o7777:
            raise InvalidArgument(f"nfs mkdir {path!r}: mode {mode:#o} out of range")
        return await self._call("mkdir", lambda nfs: self._mkdir(nfs, path, mode))

    async def _mkdir(self, nfs: NfsOps, path: str, mode: int | None) -> bool:
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

    async def _mkdir_p(self, nfs: NfsOps, path: str, mode: int) -> bool:
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

    async def _rename(self, nfs: NfsOps, src: str, dst: str, *, replace: bool) -> bool:
        ops = NfsTreeOps(nfs, self._remove_slots)
        if replace:
            return await tree.replace(ops, src, dst)
        if not await ops.exists(src):
            return False
        if await ops.exists(dst):
            raise AlreadyExists(f"nfs rename {src!r} -> {dst!r}: destination exists")
        return await ops.rename(src, dst)

    async def remove_tree(self, path: str) -> bool:
        check_share_path(path)
        return await self._call(
            "remove_tree",
            lambda nfs: tree.remove_tree(NfsTreeOps(nfs, self._remove_slots), path),
        )

    async def remove_empty_dir(self, path: str) -> RemoveResult:
        check_share_path(path)

        async def body(nfs: NfsOps) -> RemoveResult:
            try:
                await nfs.rmdir(path)  # one RMDIR: no LOOKUP/READDIR before it
            except NotFound:
                return "missing"
            except FailedPrecondition as exc:
                if exc.failure in WALK_INSTEAD:  # not empty, or a file: the caller walks
                    return "not_empty"
                raise
            return "removed"

        return await self._call("rmdir", body)

    async def exists(self, path: str) -> bool:
        check_share_path(path)
        return await self._call(
            "exists", lambda nfs: NfsTreeOps(nfs, self._remove_slots).exists(path)
        )

    async def capacity(self) -> Capacity:
        async def body(nfs: NfsOps) -> Capacity:
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

    async def on_handle(
        self, op: str, body: Callable[[NfsOps], Awaitable[_T]], generation: int
    ) -> _T:
        """Run ``body`` within the deadline on connection ``generation`` only."""
        return await self._call(op, body, generation=generation)

    async def close_handle(
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
            log.debug("nfs: closing a file failed", path=path, exc_info=True)

    # -- ShareFiles ---------------------------------------------------------

    @property
    def features(self) -> Features:
        return NFS_FEATURES

    @property
    def connection_generation(self) -> int:
        return self._nfs.generation

    async def stat(self, path: str) -> FileInfo | None:
        check_share_path(path)

        async def body(nfs: NfsOps) -> FileInfo | None:
            try:
                st = await nfs.lstat(path)
            except (NotFound, FailedPrecondition):  # ENOENT, ENOTDIR
                return None
            return self._owners(info_from_stat(st))

        return await self._call("stat", body)

    async def list_dir(self, path: str) -> list[tuple[str, FileInfo]]:
        check_share_path(path)
        entries = await self._call("list", lambda nfs: nfs.listdir_stats(path))
        return [(e.name, self._owners(info_from_dirstat(e))) for e in entries]

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

        async def body(nfs: NfsOps) -> NfsReader:
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

        async def body(nfs: NfsOps) -> NfsWriter:
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

        async def body(nfs: NfsOps) -> None:
            if owner is not None:
                try:
                    await nfs.setattr(path, owner=owner)
                except (PermissionDenied, InvalidArgument, Internal) as exc:
                    # Root squash, or an NFSv4 server that maps no numeric
                    # owners: keep the server's choice from now on.
                    log.info(
                        "nfs: the server keeps file owners as they are",
                        server=self.server,
                        error=exc.message,
                    )
                    self._chown_allowed = False
            try:
                await nfs.setattr(path, mode=mode, times=times)
            except (PermissionDenied, InvalidArgument, Internal) as exc:
                if info.kind != "symlink" or mode is not None:
                    raise
                # Some servers refuse times on a symlink itself: not worth failing for.
                log.debug("nfs: times of a symlink not kept", path=path, error=exc.message)

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
