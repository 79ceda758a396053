"""Reading a snapshot archive back into a directory on the share.

The archive is read as a ``tarfile`` stream (``mode="r|gz"``) in a worker
thread; every member passes the :class:`~controller.tree.TreeGuard` before
anything is written for it, and files are written through the backend
(small ones several at a time).  The caller extracts into a temporary
directory and renames it into place only on success, so a refused or
damaged archive leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import tarfile
import zlib
from concurrent.futures import Executor

from controller.archive.bridge import (
    CHUNK,
    PREFETCH,
    SMALL_FILE,
    ByteSource,
    ThreadBridge,
    run_in_thread,
)
from controller.archive.meta import KINDS, member_info
from controller.share import FileInfo, FileKind, FileShareBackend
from controller.tree import TreeGuard, TreeStats
from driver import paths
from driver.errors import FailedPrecondition, InvalidArgument


async def _write_small(backend: FileShareBackend, path: str, data: bytes, info: FileInfo) -> None:
    writer = await backend.open_write(path)
    try:
        if data:
            await writer.write(data)
    except BaseException:
        await writer.abort()
        raise
    await writer.aclose()
    await backend.set_attributes(path, info)


async def _make_link(backend: FileShareBackend, target: str, path: str, info: FileInfo) -> None:
    await backend.symlink(target, path)
    await backend.set_attributes(path, info)


class _Extractor:
    """Runs in a worker thread: reads members and writes them under ``dst``."""

    def __init__(
        self,
        bridge: ThreadBridge,
        backend: FileShareBackend,
        dst: str,
        guard: TreeGuard,
        stats: TreeStats,
    ) -> None:
        self.bridge = bridge
        self.backend = backend
        self.dst = dst
        self.guard = guard
        self.stats = stats
        self.dirs: list[tuple[str, FileInfo]] = []
        self.pending: collections.deque[concurrent.futures.Future[None]] = collections.deque()

    def _target(self, rel: str) -> str:
        return paths.join(self.dst, rel) if rel else self.dst

    def _drain(self, keep: int) -> None:
        while len(self.pending) > keep:
            self.bridge.wait(self.pending.popleft())

    def _admit(self, rel: str, kind: FileKind) -> None:
        missing = self.guard.admit(rel, kind)
        if missing:  # the archive has no entry for these parents: make them
            self.bridge.call(self.backend.mkdir(self._target(missing[-1])))

    def run(self, source: ByteSource) -> None:
        try:
            tar = tarfile.open(fileobj=source, mode="r|gz")  # type: ignore[call-overload]  # noqa: SIM115 - stream, closed below
            for member in tar:
                self._member(tar, member)
            tar.close()
            self._drain(0)
        except BaseException:
            # Writes already sent finish first: the caller removes the
            # directory next, and nothing may land in it afterwards.
            if self.bridge.stop.is_set():
                for future in self.pending:
                    future.cancel()
            concurrent.futures.wait(list(self.pending))
            raise

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        guard, backend, bridge = self.guard, self.backend, self.bridge
        rel = guard.member_path(member.name)
        target = self._target(rel)
        if member.islnk():
            source = guard.member_path(member.linkname)
            if guard.kind(source) != "file":
                raise guard.refuse(f"hard link {rel!r} does not point at an earlier regular file")
            self._admit(rel, "file")
            self._drain(0)  # its target must be complete
            info = member_info(member, "file")
            bridge.call(backend.copy_file(self._target(source), target))
            bridge.call(backend.set_attributes(target, info))
            self.stats.files += 1
            return
        kind = KINDS.get(member.type)
        if kind is None:
            raise guard.refuse(f"{member.name!r} is a special file (device, FIFO, ...)")
        info = member_info(member, kind)
        if kind == "dir":
            self._admit(rel, "dir")
            if rel:
                bridge.call(backend.mkdir(target))
            self.dirs.append((target, info))
            self.stats.dirs += 1
        elif kind == "symlink":
            if not backend.features.symlinks:
                raise guard.refuse(
                    f"{member.name!r} is a symlink, and symlinks cannot be created on this share"
                )
            self._admit(rel, "symlink")
            guard.link(rel, member.linkname)
            self._drain(PREFETCH)
            self.pending.append(bridge.submit(_make_link(backend, member.linkname, target, info)))
            self.stats.links += 1
        else:
            self._admit(rel, "file")
            content = tar.extractfile(member)
            assert content is not None  # noqa: S101 -- a regular file always has one
            self.stats.files += 1
            self.stats.bytes += member.size
            if member.size <= SMALL_FILE:
                data = content.read()
                self._drain(PREFETCH)
                self.pending.append(bridge.submit(_write_small(backend, target, data, info)))
                return
            writer = bridge.call(backend.open_write(target))
            try:
                while data := content.read(CHUNK):
                    bridge.call(writer.write(data))
            except BaseException:
                bridge.call(writer.abort())
                raise
            bridge.call(writer.aclose())
            bridge.call(backend.set_attributes(target, info))


async def extract_archive(
    backend: FileShareBackend, archive: str, dst: str, executor: Executor
) -> tuple[TreeStats, FileInfo | None]:
    """Unpack ``archive`` into the existing, empty directory ``dst``.

    Returns the counts and the archive's root entry (its mode, owner and
    times; not applied to ``dst`` here: the caller decides).  A member that
    could leave ``dst`` is InvalidArgument; a damaged archive is
    FailedPrecondition.  On failure ``dst`` keeps what was written so far:
    the caller removes it.
    """
    bridge = ThreadBridge(asyncio.get_running_loop())
    guard = TreeGuard(InvalidArgument, "snapshot archive refused")
    stats = TreeStats()
    reader = await backend.open_read(archive)
    extractor = _Extractor(bridge, backend, dst, guard, stats)
    try:
        await run_in_thread(executor, bridge, lambda: extractor.run(ByteSource(bridge, reader)))
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise FailedPrecondition(f"snapshot archive {archive!r} is damaged: {exc}") from None
    finally:
        await reader.aclose()
    guard.check_links()
    root: FileInfo | None = None
    for path, info in reversed(extractor.dirs):
        if path == dst:
            root = info
            continue
        await backend.set_attributes(path, info)
    return stats, root
