"""How an archive's worker thread reaches the share through the event loop.

``tarfile`` and ``zlib`` are blocking, so archives are written and read in a
worker thread of the caller's executor.  That thread calls the backend's
coroutines on the event loop through a :class:`ThreadBridge` and waits for
them; :class:`ByteSink`, :class:`ByteSource` and :class:`ExactSource` are
the file objects ``gzip``/``tarfile`` read and write, over a backend's
writer and readers.  :func:`run_in_thread` runs the thread's work and, when
the caller is cancelled, stops it and waits until it has really ended.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, Final, TypeVar

from controller.share import FileReader, FileWriter
from driver.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")

#: Bytes handed to the backend per write, and read per read.
CHUNK: Final = 1 << 20
#: Files up to this size are read (snapshot) or written (restore) whole,
#: several at a time.
SMALL_FILE: Final = 1 << 20
#: Small files in flight at once.
PREFETCH: Final = 16


class Stopped(Exception):
    """The job was cancelled: the worker thread stops at its next call."""


class ThreadBridge:
    """Lets a worker thread run coroutines on the event loop and wait for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.stop = threading.Event()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self.stop.is_set():
            coro.close()
            raise Stopped
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
                    raise Stopped from None
            except concurrent.futures.CancelledError:
                raise Stopped from None

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.wait(self.submit(coro))


async def run_in_thread(executor: Executor, bridge: ThreadBridge, work: Callable[[], T]) -> T:
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


class ByteSink:
    """The file object GzipFile writes to: buffers, then writes through the
    backend in ``CHUNK`` pieces."""

    def __init__(self, bridge: ThreadBridge, writer: FileWriter) -> None:
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


class ByteSource:
    """A readable file object over a backend reader (any read size)."""

    def __init__(self, bridge: ThreadBridge, reader: FileReader) -> None:
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


class ExactSource:
    """Exactly ``size`` bytes of a file that may change while it is read:
    padded with zeros if it shrank, cut if it grew (GNU tar does the same)."""

    def __init__(self, source: ByteSource, size: int, path: str) -> None:
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
