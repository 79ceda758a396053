"""Open NFS files: reads with read-ahead, writes with write-behind, and the
conversions of libnfs attributes into ``FileInfo``."""

from __future__ import annotations

import asyncio
import collections
import stat
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, TypeVar

from controller.nfs import structs
from controller.nfs.ops import NfsOps
from controller.share import FileInfo, FileKind
from driver.aio import forget_late_result
from driver.errors import Internal, InvalidArgument

T = TypeVar("T")

#: READs of one open file in flight at once.
READ_AHEAD: Final = 4


class HandleCalls(Protocol):
    """What an open file needs of its backend."""

    async def on_handle(
        self, op: str, body: Callable[[NfsOps], Awaitable[T]], generation: int
    ) -> T:
        """Run ``body`` within the deadline, on connection ``generation`` only."""
        ...

    async def close_handle(
        self, fh: int, path: str, generation: int, *, strict: bool = False
    ) -> None: ...


def kind_of(mode: int) -> FileKind:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


_NF3_KINDS: Final[dict[int, FileKind]] = {
    structs.NF3REG: "file",
    structs.NF3DIR: "dir",
    structs.NF3LNK: "symlink",
}


def info_from_stat(st: structs.NfsStat64) -> FileInfo:
    return FileInfo(
        kind=kind_of(int(st.nfs_mode)),
        size=int(st.nfs_size),
        mtime_ns=int(st.nfs_mtime) * 1_000_000_000 + int(st.nfs_mtime_nsec),
        atime_ns=int(st.nfs_atime) * 1_000_000_000 + int(st.nfs_atime_nsec),
        mode=int(st.nfs_mode) & 0o7777,
        uid=int(st.nfs_uid),
        gid=int(st.nfs_gid),
        file_id=int(st.nfs_ino),
    )


def info_from_dirstat(e: structs.DirStat) -> FileInfo:
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


class _OpenFile:
    """What reads and writes share: one open handle, valid on one connection."""

    def __init__(self, backend: HandleCalls, path: str, fh: int, generation: int) -> None:
        self._backend = backend
        self._path = path
        self._fh: int | None = fh
        self._generation = generation

    def _check_open(self, op: str) -> None:
        if self._fh is None:
            raise InvalidArgument(f"nfs {op} {self._path!r}: the file is closed")

    def _in_flight(self, op: str, call: Callable[[NfsOps, int], Awaitable[T]]) -> asyncio.Task[T]:
        """Start ``call(nfs, fh)`` on this file; nobody need wait for its end."""
        fh = self._fh
        assert fh is not None  # noqa: S101 -- only called while open
        task = asyncio.ensure_future(
            self._backend.on_handle(op, lambda nfs: call(nfs, fh), self._generation)
        )
        task.add_done_callback(forget_late_result)
        return task

    async def _release(self, tasks: list[asyncio.Task[T]], *, strict: bool = False) -> None:
        """Closed at once for new calls; ``tasks`` cancelled and waited for,
        then the handle closed (once)."""
        fh, self._fh = self._fh, None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if fh is not None:
            await self._backend.close_handle(fh, self._path, self._generation, strict=strict)


class NfsReader(_OpenFile):
    """A file open for reading, with up to ``READ_AHEAD`` preads in flight."""

    def __init__(  # noqa: PLR0917 - the facts of one open file
        self,
        backend: HandleCalls,
        path: str,
        fh: int,
        generation: int,
        chunk: int,
        size_hint: int | None,
    ) -> None:
        super().__init__(backend, path, fh, generation)
        self._chunk = chunk
        self._hint = size_hint
        self._next = 0
        self._eof = False
        self._buf = b""
        self._pending: collections.deque[tuple[int, int, asyncio.Task[bytes]]] = collections.deque()

    def _request(self, offset: int, count: int) -> asyncio.Task[bytes]:
        return self._in_flight("read", lambda nfs, fh: nfs.pread(fh, self._path, offset, count))

    def _fill(self) -> None:
        while len(self._pending) < READ_AHEAD and (
            self._hint is None or self._next <= self._hint or not self._pending
        ):
            self._pending.append((self._next, self._chunk, self._request(self._next, self._chunk)))
            self._next += self._chunk

    async def read(self, size: int) -> bytes:
        self._check_open("read")
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

    def _drop_pending(self) -> list[asyncio.Task[bytes]]:
        tasks = [task for _, _, task in self._pending]
        for task in tasks:
            task.cancel()
        self._pending.clear()
        return tasks

    async def aclose(self) -> None:
        await self._release(self._drop_pending())


class NfsWriter(_OpenFile):
    """A file open for writing, with up to ``window`` pwrites in flight."""

    def __init__(  # noqa: PLR0917 - the facts of one open file
        self,
        backend: HandleCalls,
        path: str,
        fh: int,
        generation: int,
        chunk: int,
        window: int,
    ) -> None:
        super().__init__(backend, path, fh, generation)
        self._chunk = chunk
        self._window = window
        self._offset = 0
        self._inflight: collections.deque[tuple[int, bytes, asyncio.Task[int]]] = (
            collections.deque()
        )

    def _pwrite(self, offset: int, data: bytes) -> asyncio.Task[int]:
        return self._in_flight("write", lambda nfs, fh: nfs.pwrite(fh, self._path, offset, data))

    async def write(self, data: bytes) -> None:
        self._check_open("write")
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
                await self._backend.on_handle(
                    "fsync", lambda nfs: nfs.fsync(open_fh, self._path), self._generation
                )
        except BaseException:
            await self.abort()
            raise
        await self._release([], strict=True)

    async def abort(self) -> None:
        tasks = [task for _, _, task in self._inflight]
        self._inflight.clear()
        await self._release(tasks)
