"""Writing a snapshot archive: a volume streamed into a tar.gz on the share.

The tree is walked through the backend and ``tarfile`` writes a PAX stream
(``mode="w|"``) into a ``GzipFile`` whose file object (a
:class:`~controller.archive.bridge.ByteSink`) hands every 1 MiB of
compressed output to the backend's writer.  Nothing of the volume is kept
locally: at most ``PREFETCH`` small files (read ahead, in parallel) and one
chunk of a large one are in memory.  The caller writes the archive under a
temporary name and renames it only once it is complete and durable.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import tarfile
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Executor
from typing import Any, Final

from controller.archive.bridge import (
    CHUNK,
    PREFETCH,
    SMALL_FILE,
    ByteSink,
    ByteSource,
    ExactSource,
    ThreadBridge,
    run_in_thread,
)
from controller.archive.meta import META_PREFIX, parse_ns, tarinfo_for
from controller.share import FileShareBackend
from controller.tree import Node, TreeGuard, TreeStats, walk
from driver import paths
from driver.aio import forget_late_result
from driver.errors import FailedPrecondition

#: gzip level: 6 is zlib's default balance of speed and size.
COMPRESS_LEVEL: Final = 6


async def _read_small(backend: FileShareBackend, path: str, size: int) -> bytes:
    reader = await backend.open_read(path, size_hint=size)
    try:
        parts: list[bytes] = []
        while data := await reader.read(CHUNK):
            parts.append(data)
        return b"".join(parts)
    finally:
        await reader.aclose()


_Item = tuple[Node, "asyncio.Task[bytes] | None"]


class _Prefetcher:
    """Walks the tree ahead of the archive thread and reads up to
    ``PREFETCH`` small files at once, handing them over in walk order."""

    def __init__(self, backend: FileShareBackend, root: str, nodes: AsyncIterator[Node]) -> None:
        self._backend = backend
        self._root = root
        self._nodes = nodes
        self._queue: asyncio.Queue[_Item | BaseException | None] = asyncio.Queue(PREFETCH)
        self._producer = asyncio.ensure_future(self._produce())

    async def _produce(self) -> None:
        content: asyncio.Task[bytes] | None = None
        try:
            async for node in self._nodes:
                content = None
                if node.info.kind == "file" and node.info.size <= SMALL_FILE:
                    path = paths.join(self._root, node.rel)
                    content = asyncio.ensure_future(
                        _read_small(self._backend, path, node.info.size)
                    )
                    content.add_done_callback(forget_late_result)
                await self._queue.put((node, content))
            await self._queue.put(None)
        except asyncio.CancelledError:
            if content is not None:
                content.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
            await self._queue.put(exc)

    async def next(self) -> tuple[Node, bytes | None] | None:
        item = await self._queue.get()
        if item is None:
            return None
        if isinstance(item, BaseException):
            raise item
        node, content = item
        return node, (await content if content is not None else None)

    async def aclose(self) -> None:
        self._producer.cancel()
        pending: list[asyncio.Future[Any]] = [self._producer]
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, tuple) and item[1] is not None:
                item[1].cancel()
                pending.append(item[1])
        await asyncio.gather(*pending, return_exceptions=True)


def _write_tar(
    *,
    bridge: ThreadBridge,
    backend: FileShareBackend,
    root: str,
    sink: ByteSink,
    prefetch: _Prefetcher,
    meta: Mapping[str, str],
    stats: TreeStats,
) -> None:
    """Runs in a worker thread."""
    created = parse_ns(meta.get(META_PREFIX + "created")) or 0
    gz = gzip.GzipFile(
        filename="",
        mode="wb",
        compresslevel=COMPRESS_LEVEL,
        fileobj=sink,
        mtime=created // 1_000_000_000,
    )
    tar = tarfile.open(  # noqa: SIM115 - closed explicitly: a failed archive is never finished
        fileobj=gz,
        mode="w|",
        format=tarfile.PAX_FORMAT,
        pax_headers=dict(meta),
        bufsize=CHUNK,
    )
    tar.copybufsize = CHUNK  # type: ignore[attr-defined]  # set by __init__; typeshed omits it
    try:
        while (item := bridge.call(prefetch.next())) is not None:
            node, content = item
            stats.count(node)
            if node.info.kind != "file":
                tar.addfile(tarinfo_for(node, 0))
            elif content is not None:
                # Read after the listing: its length is the truth.
                tar.addfile(tarinfo_for(node, len(content)), io.BytesIO(content))
            else:
                path = paths.join(root, node.rel)
                reader = bridge.call(backend.open_read(path, size_hint=node.info.size))
                try:
                    exact = ExactSource(ByteSource(bridge, reader), node.info.size, path)
                    tar.addfile(tarinfo_for(node, node.info.size), exact)
                finally:
                    bridge.call(reader.aclose())
        tar.close()
        gz.close()
        sink.finish()
    except BaseException:
        # Abandon the stream: nothing more reaches the share, and the
        # finalizers of tarfile/gzip must not try to finish it later.
        sink.dead = True
        tar.closed = True  # type: ignore[attr-defined]  # set by __init__; typeshed omits it
        stream = tar.fileobj
        if stream is not None and hasattr(stream, "closed"):
            stream.closed = True
        raise


async def create_archive(
    backend: FileShareBackend,
    source_dir: str,
    archive: str,
    meta: Mapping[str, str],
    executor: Executor,
) -> TreeStats:
    """Write the tree under ``source_dir`` as a tar.gz to ``archive``
    (created or truncated; the caller picks a temporary name and removes it
    on failure).  ``meta`` keys must start with :data:`META_PREFIX`.

    A symlink that would leave the volume is FailedPrecondition: restore
    would refuse it, so no snapshot is made that cannot be restored.
    """
    bridge = ThreadBridge(asyncio.get_running_loop())
    guard = TreeGuard(FailedPrecondition, "snapshot")
    stats = TreeStats()
    writer = await backend.open_write(archive)
    prefetch = _Prefetcher(backend, source_dir, walk(backend, source_dir, guard))
    sink = ByteSink(bridge, writer)
    done = False
    try:
        await run_in_thread(
            executor,
            bridge,
            lambda: _write_tar(
                bridge=bridge,
                backend=backend,
                root=source_dir,
                sink=sink,
                prefetch=prefetch,
                meta=meta,
                stats=stats,
            ),
        )
        guard.check_links()
        await writer.aclose()
        done = True
    finally:
        await prefetch.aclose()
        if not done:
            await writer.abort()
    return stats
