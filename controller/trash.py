"""Deleting volumes without ever running out of time.

DeleteVolume must answer within the caller's deadline (csi-provisioner's
``--timeout``, 10 s by default), whatever the volume holds.  So:

1. An empty volume is removed in one step, the fewest round trips the
   protocol allows (``ShareBackend.remove_empty_dir``: SMB one compound
   CREATE + SET_INFO(delete) + CLOSE, NFS one RMDIR).
2. Anything else is renamed, in one step, into the hidden ``.csi-trash``
   directory beside the volume (same share, same parent: a rename never
   crosses a file system).  The volume's name is free at once and the PV is
   released; the bytes are removed afterwards.
3. A background purge empties the trash, a few entries at a time
   (``concurrency``; each entry's walk is further bounded by the backend's
   own limits).  A failed purge is retried later with back-off.
4. The trash lives on the share, so a restart loses nothing: the first
   volume operation in a directory after start-up (:meth:`Trash.watch`)
   lists its trash and queues what an earlier process left.

If the rename itself is refused (a server or share that forbids it), the
volume is removed in place as before, within the call.

The backlog (entries queued or being purged) is :attr:`Trash.backlog`;
the controller publishes it as a metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import secrets
import time
from dataclasses import dataclass
from typing import Final, Protocol

from controller.params import TRASH_DIR
from controller.share import FileInfo, RemoveResult
from driver import paths
from driver.errors import DeadlineExceeded, DriverError, NotFound, first_error
from driver.log import get_logger

log = get_logger("controller.trash")

#: Trash entries purged at the same time (per controller process).
PURGE_CONCURRENCY: Final = 2
#: First and longest wait before a failed purge is tried again (seconds).
RETRY_START: Final = 5.0
#: Files removed at once when a large tree is purged piece by piece.
PIECES_IN_FLIGHT: Final = 16
RETRY_MAX: Final = 300.0


class TrashBackend(Protocol):
    """What the trash needs of a share backend (``controller.share``)."""

    async def remove_empty_dir(self, path: str) -> RemoveResult: ...

    async def rename(self, src: str, dst: str, *, replace: bool = False) -> bool: ...

    async def mkdir(self, path: str, *, mode: int | None = None) -> bool: ...

    async def remove_tree(self, path: str) -> bool: ...

    async def exists(self, path: str) -> bool: ...

    async def list_dir(self, path: str) -> list[tuple[str, FileInfo]]: ...


def trash_dir_for(volume_dir: str) -> str:
    """The trash directory beside ``volume_dir``."""
    parent, _leaf = paths.parent_and_leaf(volume_dir)
    return paths.join(parent, TRASH_DIR)


@dataclass(frozen=True, slots=True)
class _Entry:
    backend: TrashBackend
    path: str


class Trash:
    """Fast deletes and the background purge, for every share of one controller."""

    def __init__(
        self, *, concurrency: int = PURGE_CONCURRENCY, retry_start: float = RETRY_START
    ) -> None:
        if concurrency < 1:
            msg = "concurrency must be at least 1"
            raise ValueError(msg)
        self._concurrency = concurrency
        self._retry_start = retry_start
        self._slots: asyncio.Semaphore | None = None
        self._queued: dict[tuple[int, str], asyncio.Task[None]] = {}
        self._watched: set[tuple[int, str]] = set()
        self._watching: set[asyncio.Task[None]] = set()
        self._closed = False
        self.purged_entries = 0

    @property
    def backlog(self) -> int:
        """Trash entries waiting or being purged."""
        return len(self._queued)

    async def delete(self, backend: TrashBackend, volume_dir: str) -> bool:
        """Remove ``volume_dir`` now or move it to the trash; True if it existed."""
        self.watch(backend, volume_dir)
        result = await backend.remove_empty_dir(volume_dir)
        if result != "not_empty":
            return result == "removed"
        trash = trash_dir_for(volume_dir)
        _parent, leaf = paths.parent_and_leaf(volume_dir)
        # Unique, and still tells a reader which volume it was.
        target = paths.join(trash, f"{leaf}.{time.time_ns():x}.{secrets.token_hex(4)}")
        try:
            moved = await self._move(backend, volume_dir, trash, target)
        except DriverError as exc:
            log.warning(
                "cannot move the volume to the trash; removing it in place",
                dir=volume_dir,
                error=exc.message,
            )
            return await backend.remove_tree(volume_dir)
        if not moved:
            return False
        log.info("volume moved to the trash", dir=volume_dir, trash=target)
        self._queue(backend, target)
        return True

    async def _move(self, backend: TrashBackend, src: str, trash: str, target: str) -> bool:
        """Rename ``src`` to ``target``; False if ``src`` is gone."""
        try:
            return await backend.rename(src, target)
        except NotFound:
            # The trash directory does not exist yet.
            await backend.mkdir(trash)
            return await backend.rename(src, target)

    def watch(self, backend: TrashBackend, volume_dir: str) -> None:
        """Queue what an earlier process left in the trash beside ``volume_dir``
        (once per backend, i.e. share and identity, and directory in this process)."""
        trash = trash_dir_for(volume_dir)
        if (id(backend), trash) in self._watched or self._closed:
            return
        self._watched.add((id(backend), trash))
        task = asyncio.create_task(self._resume(backend, trash), context=contextvars.Context())
        self._watching.add(task)
        task.add_done_callback(self._watching.discard)

    async def _resume(self, backend: TrashBackend, trash: str) -> None:
        try:
            names = [name for name, _info in await backend.list_dir(trash)]
        except NotFound:
            return
        except DriverError as exc:
            log.warning(
                "cannot list the trash; trying at the next delete", trash=trash, error=exc.message
            )
            self._watched.discard((id(backend), trash))
            return
        if names:
            log.info("resuming the purge of earlier deletes", trash=trash, entries=len(names))
        for name in names:
            self._queue(backend, paths.join(trash, name))

    def _queue(self, backend: TrashBackend, path: str) -> None:
        key = (id(backend), path)
        if key in self._queued or self._closed:
            return
        # A fresh context: the purge is not part of the RPC that queued it
        # (its log lines must not carry that RPC's method and volume).
        self._queued[key] = asyncio.create_task(
            self._purge(_Entry(backend, path), key), context=contextvars.Context()
        )

    async def _purge(self, entry: _Entry, key: tuple[int, str]) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._concurrency)
        delay = self._retry_start
        try:
            while True:
                async with self._slots:
                    started = time.monotonic()
                    try:
                        await self._remove(entry.backend, entry.path)
                    except DriverError as exc:
                        log.warning(
                            "purge failed; trying again later",
                            trash=entry.path,
                            error=exc.message,
                            retry_seconds=delay,
                        )
                    else:
                        self.purged_entries += 1
                        log.info(
                            "trash entry purged",
                            trash=entry.path,
                            seconds=round(time.monotonic() - started, 3),
                        )
                        return
                await asyncio.sleep(delay)
                delay = min(max(delay * 2, self._retry_start), RETRY_MAX)
        finally:
            self._queued.pop(key, None)

    async def _remove(self, backend: TrashBackend, path: str) -> None:
        """``remove_tree``, split up if the tree is too large for one call.

        A backend may bound a whole ``remove_tree`` by one deadline (NFS
        does: one connection, one call).  A tree too large for it is then
        taken apart: subdirectories one by one, files one call each, a few
        at a time; what the first attempt removed stays removed.
        """
        try:
            await backend.remove_tree(path)
        except DeadlineExceeded:
            log.info("purging a large tree piece by piece", trash=path)
        else:
            return
        entries = await backend.list_dir(path)
        for name, info in entries:
            if info.kind == "dir":
                await self._remove(backend, paths.join(path, name))
        files = [name for name, info in entries if info.kind != "dir"]
        pieces = asyncio.Semaphore(PIECES_IN_FLIGHT)

        async def one(name: str) -> None:
            async with pieces:
                await backend.remove_tree(paths.join(path, name))

        try:
            for start in range(0, len(files), 4 * PIECES_IN_FLIGHT):
                async with asyncio.TaskGroup() as group:
                    for name in files[start : start + 4 * PIECES_IN_FLIGHT]:
                        group.create_task(one(name))
        except BaseExceptionGroup as failed:
            raise first_error(failed) from None
        await backend.remove_tree(path)

    async def drain(self) -> None:
        """Wait until the backlog is empty (tests, and a polite shutdown)."""
        while self._watching or self._queued:
            await asyncio.gather(*self._watching, *self._queued.values(), return_exceptions=True)

    async def aclose(self) -> None:
        """Stop purging; what is left stays in the trash for the next process."""
        self._closed = True
        tasks = [*self._watching, *self._queued.values()]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
