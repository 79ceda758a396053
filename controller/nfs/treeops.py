"""``controller.tree.TreeOps`` over one connected NFS context.

Removal runs inside one backend call (one deadline, one connection); every
RPC it sends holds one of the backend's removal slots, so a large tree keeps
at most that many RPCs in flight.
"""

from __future__ import annotations

import asyncio
import stat
from typing import Final

from controller.nfs.ops import NfsOps
from controller.tree import TreeEntry
from driver.errors import FailedPrecondition, NotFound

#: At most this many RPCs of one removal in flight at once.
REMOVE_CONCURRENCY: Final = 64


def _owner_rwx(mode: int) -> bool:
    # Removing entries needs write+search permission on the directory.  As
    # root on a no_root_squash export the server would not check, but a
    # squashed owner would: a read-only (0555) directory is opened up first.
    return mode & 0o700 == 0o700


class NfsTreeOps:
    """Removal primitives on ``nfs``; ``slots`` bound the RPCs in flight."""

    walkers: Final = REMOVE_CONCURRENCY
    batch: Final = 4 * REMOVE_CONCURRENCY

    def __init__(self, nfs: NfsOps, slots: asyncio.Semaphore) -> None:
        self._nfs = nfs
        self._slots = slots

    async def exists(self, path: str) -> bool:
        return await self.entry(path) is not None

    async def entry(self, path: str) -> TreeEntry | None:
        try:
            st = await self._nfs.lstat(path)
        except (NotFound, FailedPrecondition):  # ENOENT; ENOTDIR: a parent is a file
            return None
        mode = int(st.nfs_mode)
        name = path.rpartition("/")[2]
        return TreeEntry(name, stat.S_ISDIR(mode), _owner_rwx(mode), mode & 0o7777)

    async def list(self, path: str) -> list[TreeEntry] | None:
        async with self._slots:
            try:
                entries = await self._nfs.listdir(path)
            except NotFound:
                return None
        return [TreeEntry(e.name, e.is_dir, _owner_rwx(e.mode), e.mode) for e in entries]

    async def make_writable(self, path: str, entry: TreeEntry) -> None:
        await self._nfs.chmod(path, entry.raw | 0o700)

    async def unlink(self, path: str, entry: TreeEntry) -> bool:
        async with self._slots:
            try:
                await self._nfs.unlink(path)
            except NotFound:
                return False
        return True

    async def rmdir(self, path: str) -> bool:
        async with self._slots:
            try:
                await self._nfs.rmdir(path)
            except NotFound:
                return False
        return True

    async def rename(self, src: str, dst: str) -> bool:
        try:
            await self._nfs.rename(src, dst)
        except NotFound:
            if not await self.exists(src):
                return False  # renamed or removed by someone else meanwhile
            raise NotFound(f"nfs rename {src!r} -> {dst!r}: destination parent missing") from None
        return True
