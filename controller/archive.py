"""Snapshot archives: a volume streamed into a tar.gz on the share and back.

Writing (:func:`create_archive`): the tree is walked through the backend
and ``tarfile`` writes a PAX stream (``mode="w|"``) into a ``GzipFile``
whose file object hands every 1 MiB of compressed output to the backend's
writer.  Nothing of the volume is kept locally: at most ``PREFETCH`` small
files (read ahead, in parallel) and one chunk of a large one are in memory.
``tarfile`` and ``zlib`` are blocking, so they run in a worker thread of
the caller's executor; that thread calls the backend's coroutines on the
event loop through :class:`_Bridge` and waits for them.  The archive is
written under a temporary name: the caller renames it only once it is
complete and durable.

The archive starts with a PAX global header carrying the snapshot's facts
(``CSISMBNFS.*``: format version, source volume ID, name, creation time).
Each member keeps its mode, owner and nanosecond ``mtime``/``atime`` (PAX
records), so what the target protocol can keep is restored exactly.

Reading (:func:`extract_archive`): the archive is read as a ``tarfile``
stream (``mode="r|gz"``) in a worker thread, every member passes the
:class:`~controller.tree.TreeGuard` before anything is written for it, and
files are written through the backend (small ones several at a time).  The
caller extracts into a temporary directory and renames it into place only
on success, so a refused or damaged archive leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import gzip
import io
import tarfile
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from concurrent.futures import Executor
from typing import Any, Final, TypeVar

from controller.share import FileInfo, FileKind, FileReader, FileShareBackend, FileWriter
from controller.tree import Node, TreeGuard, TreeStats, walk
from driver import paths
from driver.aio import forget_late_result
from driver.errors import FailedPrecondition, InvalidArgument
from driver.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")

FORMAT_VERSION: Final = "1"
META_PREFIX: Final = "CSISMBNFS."
#: gzip level: 6 is zlib's default balance of speed and size.
COMPRESS_LEVEL: Final = 6
#: Bytes handed to the backend per write, and read per read.
CHUNK: Final = 1 << 20
#: Files up to this size are read (snapshot) or written (restore) whole,
#: several at a time.
SMALL_FILE: Final = 1 << 20
#: Small files in flight at once.
PREFETCH: Final = 16
#: Compressed bytes read to find the archive's global header.
META_READ: Final = 64 << 10

_KINDS: Final[dict[bytes, FileKind]] = {
    tarfile.DIRTYPE: "dir",
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.SYMTYPE: "symlink",
}


class _Stopped(Exception):
    """The job was cancelled: the worker thread stops at its next call."""


class _Bridge:
    """Lets a worker thread run coroutines on the event loop and wait for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.stop = threading.Event()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self.stop.is_set():
            coro.close()
            raise _Stopped
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def wait(self, future: concurrent.futures.Future[T]) -> T:
        while True:
            try:
                return future.result(timeout=0.2)
            except TimeoutError:
                if future.done():
                    raise  # the coroutine's own TimeoutError
                if self.stop.is_set():
                    future.cancel()
                    raise _Stopped from None
            except concurrent.futures.CancelledError:
                raise _Stopped from None

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.wait(self.submit(coro))


async def _in_thread(executor: Executor, bridge: _Bridge, work: Callable[[], T]) -> T:
    """Run ``work`` in ``executor``; if we are cancelled, stop it and wait
    until the thread has really finished (it may be writing to the share)."""
    future = asyncio.get_running_loop().run_in_executor(executor, work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        bridge.stop.set()
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({future})
        with contextlib.suppress(BaseException):
            future.result()
        raise


# -- file-like adapters used by the worker thread ----------------------------


class _Sink:
    """The file object GzipFile writes to: buffers, then writes through the
    backend in ``CHUNK`` pieces."""

    def __init__(self, bridge: _Bridge, writer: FileWriter) -> None:
        self._bridge = bridge
        self._writer = writer
        self._buf = bytearray()
        self.size = 0
        self.dead = False

    def write(self, data: bytes) -> int:
        if self.dead:  # an abandoned archive: whatever still arrives goes nowhere
            return len(data)
        self._buf += data
        self.size += len(data)
        if len(self._buf) >= CHUNK:
            self._send()
        return len(data)

    def _send(self) -> None:
        if self._buf:
            chunk, self._buf = bytes(self._buf), bytearray()
            self._bridge.call(self._writer.write(chunk))

    def flush(self) -> None:
        """GzipFile flushes after every member: nothing to do before the end."""

    def finish(self) -> None:
        self._send()


class _Source:
    """A readable file object over a backend reader (any read size)."""

    def __init__(self, bridge: _Bridge, reader: FileReader) -> None:
        self._bridge = bridge
        self._reader = reader
        self._buf = b""
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = 1 << 62
        out = bytearray()
        while len(out) < size:
            if not self._buf:
                if self._eof:
                    break
                self._buf = self._bridge.call(self._reader.read(CHUNK))
                if not self._buf:
                    self._eof = True
                    break
            take = size - len(out)
            out += self._buf[:take]
            self._buf = self._buf[take:]
        return bytes(out)


class _ExactSource:
    """Exactly ``size`` bytes of a file that may change while it is read:
    padded with zeros if it shrank, cut if it grew (GNU tar does the same)."""

    def __init__(self, source: _Source, size: int, path: str) -> None:
        self._source = source
        self._left = size
        self._path = path
        self.padded = 0

    def read(self, size: int = -1) -> bytes:
        want = self._left if size is None or size < 0 else min(size, self._left)
        data = self._source.read(want)
        if len(data) < want:
            if not self.padded:
                log.warning(
                    "a file shrank while it was archived; padding with zeros", path=self._path
                )
            self.padded += want - len(data)
            data += b"\0" * (want - len(data))
        self._left -= len(data)
        return data


# -- snapshot ------------------------------------------------------------------


def _ns_text(ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return f"{seconds}.{nanos:09d}"


def _parse_ns(text: str | None) -> int | None:
    if not text:
        return None
    whole, _, frac = text.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        return None
    return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])


def _tarinfo(node: Node, size: int) -> tarfile.TarInfo:
    info = node.info
    ti = tarfile.TarInfo(node.rel or ".")
    if info.kind == "dir":
        ti.type = tarfile.DIRTYPE
        default = 0o755
    elif info.kind == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = node.target or ""
        default = 0o777
    else:
        ti.type = tarfile.REGTYPE
        ti.size = size
        default = 0o444 if info.read_only else 0o644
    ti.mode = info.mode if info.mode is not None else default
    if info.uid is not None and info.gid is not None:
        ti.uid, ti.gid = info.uid, info.gid
    ti.uname = ti.gname = ""
    pax: dict[str, str] = {}
    if info.mtime_ns is not None and info.mtime_ns >= 0:
        ti.mtime = info.mtime_ns // 1_000_000_000
        pax["mtime"] = _ns_text(info.mtime_ns)
    if info.atime_ns is not None and info.atime_ns >= 0:
        pax["atime"] = _ns_text(info.atime_ns)
    ti.pax_headers = pax
    return ti


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
    bridge: _Bridge,
    backend: FileShareBackend,
    root: str,
    sink: _Sink,
    prefetch: _Prefetcher,
    meta: Mapping[str, str],
    stats: TreeStats,
) -> None:
    """Runs in a worker thread."""
    created = _parse_ns(meta.get(META_PREFIX + "created")) or 0
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
                tar.addfile(_tarinfo(node, 0))
            elif content is not None:
                # Read after the listing: its length is the truth.
                tar.addfile(_tarinfo(node, len(content)), io.BytesIO(content))
            else:
                path = paths.join(root, node.rel)
                reader = bridge.call(backend.open_read(path, size_hint=node.info.size))
                try:
                    exact = _ExactSource(_Source(bridge, reader), node.info.size, path)
                    tar.addfile(_tarinfo(node, node.info.size), exact)
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
    bridge = _Bridge(asyncio.get_running_loop())
    guard = TreeGuard(FailedPrecondition, "snapshot")
    stats = TreeStats()
    writer = await backend.open_write(archive)
    prefetch = _Prefetcher(backend, source_dir, walk(backend, source_dir, guard))
    sink = _Sink(bridge, writer)
    done = False
    try:
        await _in_thread(
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


# -- restore ---------------------------------------------------------------------


def _member_info(member: tarfile.TarInfo, kind: FileKind) -> FileInfo:
    mtime = _parse_ns(member.pax_headers.get("mtime"))
    if mtime is None and member.mtime >= 0:
        mtime = int(member.mtime) * 1_000_000_000
    mode = member.mode & 0o7777
    return FileInfo(
        kind=kind,
        size=member.size if kind == "file" else 0,
        mtime_ns=mtime,
        atime_ns=_parse_ns(member.pax_headers.get("atime")),
        mode=mode,
        uid=member.uid,
        gid=member.gid,
        read_only=kind == "file" and not mode & 0o200,
    )


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
        bridge: _Bridge,
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

    def run(self, source: _Source) -> None:
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
            info = _member_info(member, "file")
            bridge.call(backend.copy_file(self._target(source), target))
            bridge.call(backend.set_attributes(target, info))
            self.stats.files += 1
            return
        kind = _KINDS.get(member.type)
        if kind is None:
            raise guard.refuse(f"{member.name!r} is a special file (device, FIFO, ...)")
        info = _member_info(member, kind)
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
    bridge = _Bridge(asyncio.get_running_loop())
    guard = TreeGuard(InvalidArgument, "snapshot archive refused")
    stats = TreeStats()
    reader = await backend.open_read(archive)
    extractor = _Extractor(bridge, backend, dst, guard, stats)
    try:
        await _in_thread(executor, bridge, lambda: extractor.run(_Source(bridge, reader)))
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


async def read_meta(backend: FileShareBackend, archive: str) -> dict[str, str]:
    """The ``CSISMBNFS.*`` facts of an archive (keys without the prefix);
    reads only its first compressed bytes.  FailedPrecondition if it is not
    a gzip stream; ``{}`` for a tar.gz without them."""
    reader = await backend.open_read(archive, size_hint=META_READ)
    try:
        raw = b""
        while len(raw) < META_READ and (data := await reader.read(META_READ - len(raw))):
            raw += data
    finally:
        await reader.aclose()
    try:
        plain = zlib.decompressobj(wbits=31).decompress(raw, META_READ)
    except zlib.error as exc:
        raise FailedPrecondition(f"snapshot archive {archive!r} is damaged: {exc}") from None
    return {
        key[len(META_PREFIX) :]: value
        for key, value in global_header(plain).items()
        if key.startswith(META_PREFIX)
    }


def global_header(plain: bytes) -> dict[str, str]:
    """The records of a PAX global header at the start of ``plain`` (an
    uncompressed tar prefix); ``{}`` if there is none."""
    block = tarfile.BLOCKSIZE
    if len(plain) < block:
        return {}
    try:
        head = tarfile.TarInfo.frombuf(plain[:block], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return {}
    if head.type != tarfile.XGLTYPE:
        return {}
    body = plain[block : block + head.size]
    records: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        length_text, sep, _ = body[pos : pos + 20].partition(b" ")
        if not sep or not length_text.isdigit():
            break
        length = int(length_text)
        record = body[pos : pos + length]
        if length <= len(length_text) + 1 or len(record) != length or not record.endswith(b"\n"):
            break
        key, eq, value = record[len(length_text) + 1 : -1].partition(b"=")
        if not eq:
            break
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def meta_for(*, source_volume_id: str, name: str, created_ns: int) -> dict[str, str]:
    return {
        META_PREFIX + "format": FORMAT_VERSION,
        META_PREFIX + "source": source_volume_id,
        META_PREFIX + "name": name,
        META_PREFIX + "created": _ns_text(created_ns),
    }


def created_ns(meta: Mapping[str, str]) -> int | None:
    return _parse_ns(meta.get("created"))
