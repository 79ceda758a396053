"""The NFS share backend: ``ShareBackend`` over libnfs, on the asyncio loop.

The package's pieces: ``errors`` (errno and nfsstat4 to domain errors),
``xdr`` (NFSv4 values, pure), ``structs`` and ``libnfs`` (the ctypes binding),
``context`` (one libnfs context pumped by the loop), ``ops`` (the calls on
it), ``calls`` (deadlines, busy backoff, reconnects), ``files`` (open files),
``treeops`` (the tree primitives), this module (the ``ShareBackend``) and
``pool`` (one backend per export).

Failure handling (deadlines, busy backoff, hung connections and the one
retry on a new connection) lives in ``calls``.  Auto-reconnect inside libnfs is
switched off (with it, a dead server makes calls hang until the deadline
instead of failing fast, and an NFSv4 context never recovers: libnfs 4.0
reconnects the socket but not the v4 client state).  When the socket dies
(``nfs_service`` < 0, or an RPC fails with libnfs' EFAULT/EINTR) the context
is destroyed and a new one is built and mounted (~2-5 ms), for v3 and v4
alike, so a server restart between two calls costs no error; a server that
is down gives Unavailable at once (connection refused), well within the
deadline.  Errors come back from libnfs as negative errno values and are
mapped once, in ``controller.nfs.errors``.

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

import dataclasses
import os
import stat
from typing import Final, Literal, TypeVar

from controller import tree
from controller.nfs import libnfs
from controller.nfs.calls import NfsCalls
from controller.nfs.context import NfsContext
from controller.nfs.errors import WALK_INSTEAD
from controller.nfs.files import NfsReader, NfsWriter, info_from_dirstat, info_from_stat
from controller.nfs.ops import NfsOps
from controller.nfs.treeops import NfsTreeOps
from controller.share import Capacity, Features, FileInfo, RemoveResult
from driver import paths
from driver.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from driver.log import get_logger

log = get_logger(__name__)

Version = Literal["3", "4", "4.0", "4.1", "4.2"]
_T = TypeVar("_T")

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
        self._calls = NfsCalls(self._nfs, server=server, timeout=timeout, v4=version != "3")
        # Cleared when the server refuses a chown (root squash): not asked again.
        self._chown_allowed = True

    @property
    def connects(self) -> int:
        """How many connections (libnfs contexts) this backend has opened."""
        return self._nfs.generation

    def __repr__(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"NfsBackend(nfs{self.version}://{self.server}{port}{self.export})"

    # -- ShareBackend -------------------------------------------------------

    async def mkdir(self, path: str, *, mode: int | None = None) -> bool:
        check_share_path(path)
        if mode is not None and not 0 <= mode <= 0o7777:
            raise InvalidArgument(f"nfs mkdir {path!r}: mode {mode:#o} out of range")
        return await self._calls.run("mkdir", lambda nfs: self._mkdir(nfs, path, mode))

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
        return await self._calls.run(
            "rename", lambda nfs: self._rename(nfs, src, dst, replace=replace)
        )

    async def _rename(self, nfs: NfsOps, src: str, dst: str, *, replace: bool) -> bool:
        ops = NfsTreeOps(nfs, self._calls.remove_slots)
        if replace:
            return await tree.replace(ops, src, dst)
        if not await ops.exists(src):
            return False
        if await ops.exists(dst):
            raise AlreadyExists(f"nfs rename {src!r} -> {dst!r}: destination exists")
        return await ops.rename(src, dst)

    async def remove_tree(self, path: str) -> bool:
        check_share_path(path)
        return await self._calls.run(
            "remove_tree",
            lambda nfs: tree.remove_tree(NfsTreeOps(nfs, self._calls.remove_slots), path),
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

        return await self._calls.run("rmdir", body)

    async def exists(self, path: str) -> bool:
        check_share_path(path)
        return await self._calls.run(
            "exists", lambda nfs: NfsTreeOps(nfs, self._calls.remove_slots).exists(path)
        )

    async def capacity(self) -> Capacity:
        async def body(nfs: NfsOps) -> Capacity:
            sv = await nfs.statvfs()
            return Capacity(
                total_bytes=int(sv.f_blocks * sv.f_frsize),
                available_bytes=int(sv.f_bavail * sv.f_frsize),
            )

        return await self._calls.run("capacity", body)

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

        return await self._calls.run("stat", body)

    async def list_dir(self, path: str) -> list[tuple[str, FileInfo]]:
        check_share_path(path)
        entries = await self._calls.run("list", lambda nfs: nfs.listdir_stats(path))
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
            async with self._calls.seqid():
                fh = await nfs.open(path, os.O_RDONLY)
            readmax = nfs.io_sizes[0]
            chunk = min(IO_CHUNK, readmax) if readmax > 0 else IO_CHUNK
            if size_hint is not None:
                # A small file (or a header) is not worth a 1 MiB READ.
                chunk = max(4096, min(chunk, size_hint))
            return NfsReader(self._calls, path, fh, nfs.generation, chunk, size_hint)

        return await self._calls.run("open", body)

    async def open_write(self, path: str) -> NfsWriter:
        check_share_path(path)

        async def body(nfs: NfsOps) -> NfsWriter:
            flags = os.O_WRONLY | os.O_TRUNC | _O_NOFOLLOW
            async with self._calls.seqid():
                try:
                    fh = await nfs.create(path, flags, NEW_FILE_MODE)
                except AlreadyExists:
                    # libnfs 4.0's v4 create is exclusive (NFS4ERR_EXIST): replace.
                    await nfs.unlink(path)
                    fh = await nfs.create(path, flags, NEW_FILE_MODE)
            if self.version != "3":
                return NfsWriter(
                    self._calls, path, fh, nfs.generation, V4_WRITE_CHUNK, V4_WRITE_BEHIND
                )
            writemax = nfs.io_sizes[1]
            chunk = min(IO_CHUNK, writemax) if writemax > 0 else IO_CHUNK
            return NfsWriter(self._calls, path, fh, nfs.generation, chunk, WRITE_BEHIND)

        return await self._calls.run("create", body)

    async def symlink(self, target: str, path: str) -> None:
        check_share_path(path)
        if not target or "\x00" in target:
            raise InvalidArgument(f"nfs symlink {path!r}: empty target or NUL in it")
        await self._calls.run("symlink", lambda nfs: nfs.symlink(target, path))

    async def readlink(self, path: str) -> str:
        check_share_path(path)
        return await self._calls.run("readlink", lambda nfs: nfs.readlink(path))

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

        await self._calls.run("setattr", body)

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
