"""The NFS calls of one context, each one RPC (or one raw COMPOUND) awaited.

The methods raise domain errors; they do not time out by themselves (the
backend puts a deadline around each call).  Paths are relative to the
export root.
"""

from __future__ import annotations

import ctypes
from typing import Any, Literal

from controller.nfs import libnfs, structs, xdr
from controller.nfs.context import Entry, NfsContext, nfs_path


class NfsOps:
    """Typed calls over one :class:`NfsContext` (which must be connected)."""

    def __init__(self, context: NfsContext) -> None:
        self._ctx = context

    @property
    def generation(self) -> int:
        """The connection these calls run on (file handles live on one only)."""
        return self._ctx.generation

    @property
    def io_sizes(self) -> tuple[int, int]:
        """(largest read, largest write) the server takes; 0 if unknown."""
        return self._ctx.io_sizes

    async def mkdir(self, path: str, mode: int) -> None:
        lib = self._ctx.lib
        p = nfs_path(path)
        await self._ctx.submit(
            "mkdir", path, "none", lambda c, cb, t: lib.mkdir2_async(c, p, mode, cb, t)
        )

    async def chmod(self, path: str, mode: int) -> None:
        lib = self._ctx.lib
        if self._ctx.version == libnfs.NFS_V4:
            # libnfs 4.0's v4 chmod OPENs the target, which fails on a
            # directory (NFS4ERR_ISDIR): send PUTROOTFH/LOOKUP/SETATTR instead.
            parts = [p for p in self._ctx.export.split("/") if p] + path.split("/")
            await self._ctx.submit(
                "chmod",
                path,
                "rpc",
                lambda c, _cb, t: lib.nfs4_setattr_mode_async(
                    c, parts, mode, self._ctx.rpc_callback, t
                ),
            )
            return
        p = nfs_path(path)
        await self._ctx.submit(
            "chmod", path, "none", lambda c, cb, t: lib.chmod_async(c, p, mode, cb, t)
        )

    async def rmdir(self, path: str) -> None:
        lib = self._ctx.lib
        p = nfs_path(path)
        await self._ctx.submit("rmdir", path, "none", lambda c, cb, t: lib.rmdir_async(c, p, cb, t))

    async def unlink(self, path: str) -> None:
        lib = self._ctx.lib
        p = nfs_path(path)
        await self._ctx.submit(
            "unlink", path, "none", lambda c, cb, t: lib.unlink_async(c, p, cb, t)
        )

    async def rename(self, src: str, dst: str) -> None:
        lib = self._ctx.lib
        s, d = nfs_path(src), nfs_path(dst)
        await self._ctx.submit(
            "rename", f"{src} -> {dst}", "none", lambda c, cb, t: lib.rename_async(c, s, d, cb, t)
        )

    async def lstat(self, path: str) -> structs.NfsStat64:
        lib = self._ctx.lib
        p = nfs_path(path)
        result = await self._ctx.submit(
            "lstat", path, "stat", lambda c, cb, t: lib.lstat64_async(c, p, cb, t)
        )
        assert isinstance(result, structs.NfsStat64)  # noqa: S101 -- set by _on_reply
        return result

    async def listdir(self, path: str) -> list[Entry]:
        return await self._opendir(path, "dir")

    async def listdir_stats(self, path: str) -> list[structs.DirStat]:
        """Entries with their attributes (``.`` and ``..`` left out)."""
        return await self._opendir(path, "dirstats")

    async def _opendir(self, path: str, kind: Literal["dir", "dirstats"]) -> list[Any]:
        """One OPENDIR (with READDIRPLUS); ``kind`` says what each entry becomes."""
        lib = self._ctx.lib
        p = nfs_path(path)
        result = await self._ctx.submit(
            "opendir", path, kind, lambda c, cb, t: lib.opendir_async(c, p, cb, t)
        )
        assert isinstance(result, list)  # noqa: S101 -- set by _on_reply
        return result

    # -- files by handle: ``fh`` is only valid on this context generation --

    async def open(self, path: str, flags: int) -> int:
        lib = self._ctx.lib
        p = nfs_path(path)
        result = await self._ctx.submit(
            "open", path, "fh", lambda c, cb, t: lib.open_async(c, p, flags, cb, t)
        )
        assert isinstance(result, int)  # noqa: S101 -- set by _on_reply
        return result

    async def create(self, path: str, flags: int, mode: int) -> int:
        lib = self._ctx.lib
        p = nfs_path(path)
        result = await self._ctx.submit(
            "create", path, "fh", lambda c, cb, t: lib.create_async(c, p, flags, mode, cb, t)
        )
        assert isinstance(result, int)  # noqa: S101 -- set by _on_reply
        return result

    async def close_file(self, fh: int, path: str) -> None:
        """Close (and free) ``fh`` once no RPC on it is in flight: a caller
        that stopped waiting (cancelled, timed out) does not stop libnfs."""
        await self._ctx.idle(fh)
        lib = self._ctx.lib
        await self._ctx.submit(
            "close", path, "none", lambda c, cb, t: lib.close_async(c, fh, cb, t)
        )

    async def fsync(self, fh: int, path: str) -> None:
        lib = self._ctx.lib
        await self._ctx.submit(
            "fsync", path, "none", lambda c, cb, t: lib.fsync_async(c, fh, cb, t), fh=fh
        )

    async def pread(self, fh: int, path: str, offset: int, count: int) -> bytes:
        lib = self._ctx.lib
        result = await self._ctx.submit(
            "read",
            path,
            "bytes",
            lambda c, cb, t: lib.pread_async(c, fh, offset, count, cb, t),
            fh=fh,
        )
        assert isinstance(result, bytes)  # noqa: S101 -- set by _on_reply
        return result

    async def pwrite(self, fh: int, path: str, offset: int, data: bytes) -> int:
        lib = self._ctx.lib
        buf = ctypes.create_string_buffer(data, len(data))
        result = await self._ctx.submit(
            "write",
            path,
            "count",
            lambda c, cb, t: lib.pwrite_async(c, fh, offset, buf, cb, t),
            keep=buf,
            fh=fh,
        )
        assert isinstance(result, int)  # noqa: S101 -- set by _on_reply
        return result

    # -- symlinks and attributes -------------------------------------------

    async def symlink(self, target: str, path: str) -> None:
        lib = self._ctx.lib
        raw_target = target.encode(errors="surrogateescape")
        raw_path = nfs_path(path).encode()
        await self._ctx.submit(
            "symlink",
            path,
            "none",
            lambda c, cb, t: lib.symlink_async(c, raw_target, raw_path, cb, t),
            keep=(raw_target, raw_path),
        )

    async def readlink(self, path: str) -> str:
        lib = self._ctx.lib
        if self._ctx.version == libnfs.NFS_V4:
            parts = [p for p in self._ctx.export.split("/") if p] + path.split("/")
            result = await self._ctx.submit(
                "readlink",
                path,
                "rpc_readlink",
                lambda c, _cb, t: lib.nfs4_readlink_async(c, parts, self._ctx.rpc_callback, t),
            )
        else:
            p = nfs_path(path)
            result = await self._ctx.submit(
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
        lib = self._ctx.lib
        if self._ctx.version == libnfs.NFS_V4:
            parts = [p for p in self._ctx.export.split("/") if p] + path.split("/")
            mask, values = xdr.encode_fattr4(
                mode=mode,
                owner=None if owner is None or owner[0] is None else str(owner[0]),
                group=None if owner is None or owner[1] is None else str(owner[1]),
                atime_ns=None if times is None else times[0],
                mtime_ns=None if times is None else times[1],
            )
            await self._ctx.submit(
                "setattr",
                path,
                "rpc",
                lambda c, _cb, t: lib.nfs4_setattr_async(
                    c, parts, mask, values, self._ctx.rpc_callback, t
                ),
            )
            return
        p = nfs_path(path)
        if owner is not None and owner[0] is not None and owner[1] is not None:
            uid, gid = owner[0], owner[1]
            await self._ctx.submit(
                "chown", path, "none", lambda c, cb, t: lib.lchown_async(c, p, uid, gid, cb, t)
            )
        if mode is not None:
            await self.chmod(path, mode)
        if times is not None:
            atime, mtime = times
            await self._ctx.submit(
                "utimes",
                path,
                "none",
                lambda c, cb, t: lib.lutimes_async(c, p, atime, mtime, cb, t),
            )

    async def statvfs(self) -> structs.NfsStatvfs64:
        lib = self._ctx.lib
        result = await self._ctx.submit(
            "statvfs", "", "statvfs", lambda c, cb, t: lib.statvfs64_async(c, "/", cb, t)
        )
        assert isinstance(result, structs.NfsStatvfs64)  # noqa: S101 -- set by _on_reply
        return result
