"""The narrow interface the controller uses to change a share.

A backend is bound to one share (SMB share or NFS export) and one identity.
Every ``path`` is relative to the share root, ``/``-separated, already
validated by ``driver.paths`` (no ``..``, no empty or absolute parts, no NUL or
backslash); backends still refuse anything else as a last line of defence.

All operations are idempotent because a timed-out call's outcome is unknown:
creating an existing directory and removing a missing one are not errors.
Failures are raised as ``driver.errors`` domain errors, never library
exceptions.

``ShareBackend`` is what provisioning needs (directories).  ``ShareFiles``
adds what snapshots, restores and clones need (files by handle, symlinks,
attributes); :class:`FileShareBackend` is both, and is what the
:class:`BackendFactory` hands out (``controller.pools`` is the real one).
File operations never follow a symlink in the last component.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal, Protocol

from driver.credentials import SmbAuth
from driver.errors import DriverError, Internal
from driver.log import get_logger
from driver.source import Source

log = get_logger("controller")

FileKind = Literal["file", "dir", "symlink", "other"]
#: What one ``remove_empty_dir`` did: ``not_empty`` also covers "not a
#: directory" and "needs more than one step" (e.g. read-only): the caller walks.
RemoveResult = Literal["removed", "missing", "not_empty"]


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What a listing or an lstat tells about one entry.

    Fields a protocol does not have are None (SMB: ``mode``, ``uid``,
    ``gid``).  ``read_only`` is SMB's DOS attribute.  ``file_id`` (inode or
    SMB file id, 0 if unknown) lets a walker notice a directory loop that a
    server-side symlink makes.
    """

    kind: FileKind
    size: int = 0
    mtime_ns: int | None = None
    atime_ns: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    read_only: bool = False
    file_id: int = 0


@dataclass(frozen=True, slots=True)
class Features:
    """What a protocol can keep when files are written through it."""

    symlinks: bool
    """Symlinks can be read and created (NFS: yes; SMB: see controller/smb/backend.py)."""
    modes: bool
    """POSIX permission bits are kept."""
    owners: bool
    """uid/gid are kept (needs a server that lets this client chown)."""
    server_copy: bool
    """copy_file copies on the server without moving the data through us."""


class FileReader(Protocol):
    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer is not the end); ``b""`` at the end."""
        ...

    async def aclose(self) -> None: ...


class FileWriter(Protocol):
    async def write(self, data: bytes) -> None:
        """Append ``data`` (may return before it reached the server)."""
        ...

    async def aclose(self) -> None:
        """Wait for every write, make the file durable, close it.  Raises if
        any write failed."""
        ...

    async def abort(self) -> None:
        """Close without waiting for success (after an error)."""
        ...


@dataclass(frozen=True, slots=True)
class Capacity:
    total_bytes: int
    available_bytes: int


class ShareBackend(Protocol):
    async def mkdir(self, path: str, *, mode: int | None = None) -> bool:
        """Create ``path`` (parents too). True if created, False if it existed.

        ``mode`` (e.g. 0o2770) is applied to the leaf when given and the
        protocol supports it.  An existing non-directory is AlreadyExists.
        """
        ...

    async def rename(self, src: str, dst: str, *, replace: bool = False) -> bool:
        """Rename ``src`` to ``dst``; True if renamed, False if ``src`` was
        missing (an answer, not an error: a retried rename finds it gone).
        With ``replace`` an existing ``dst`` tree is removed first, and only
        when ``src`` exists.  A missing parent of ``dst`` is NotFound."""
        ...

    async def remove_tree(self, path: str) -> bool:
        """Remove ``path`` and everything below it, including read-only
        entries.  True if something was removed, False if it was missing."""
        ...

    async def remove_empty_dir(self, path: str) -> RemoveResult:
        """Remove ``path`` if it is an empty directory, in the fewest round
        trips the protocol allows (one).  Anything it cannot remove in that
        step is ``not_empty`` and left as it is.  A file may be removed too
        (NFSv4's REMOVE takes any type; SMB answers ``not_empty``)."""
        ...

    async def exists(self, path: str) -> bool:
        """True when ``path`` exists (file or directory)."""
        ...

    async def capacity(self) -> Capacity:
        """Total and available bytes of the share."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads; the backend may be reused after."""
        ...


class ShareFiles(Protocol):
    """File-level access for snapshots, restores and clones."""

    @property
    def features(self) -> Features: ...

    async def stat(self, path: str) -> FileInfo | None:
        """lstat of ``path``; None if it does not exist."""
        ...

    async def list_dir(self, path: str) -> list[tuple[str, FileInfo]]:
        """Entries of directory ``path`` (no ``.``/``..``) with their info."""
        ...

    async def open_read(self, path: str, *, size_hint: int | None = None) -> FileReader:
        """Open a regular file for reading (``size_hint`` helps read-ahead)."""
        ...

    async def open_write(self, path: str) -> FileWriter:
        """Create or truncate a regular file and open it for writing."""
        ...

    async def symlink(self, target: str, path: str) -> None:
        """Create symlink ``path`` pointing at ``target`` (kept verbatim)."""
        ...

    async def readlink(self, path: str) -> str: ...

    async def set_attributes(self, path: str, info: FileInfo) -> None:
        """Apply what the protocol can keep of ``info``: times (all), mode and
        owner (NFS), the read-only attribute (SMB files).  Ownership is best
        effort: a server that refuses it (root squash) leaves the owner."""
        ...

    async def copy_file(self, src: str, dst: str) -> None:
        """Copy the content of regular file ``src`` to ``dst`` (created or
        truncated), on the server when the protocol allows it."""
        ...


class FileShareBackend(ShareBackend, ShareFiles, Protocol):
    """A share backend with file-level access: what the factory hands out."""


class BackendFactory(Protocol):
    """Which backend serves a share: one place that knows SMB from NFS."""

    def get(
        self, source: Source, *, credentials: SmbAuth | None, nfs_version: str | None
    ) -> FileShareBackend:
        """A backend for the share root of ``source`` (cheap when cached)."""
        ...

    def cached(self, source: Source) -> FileShareBackend | None:
        """A live backend for this share, if one was used already (any identity)."""
        ...

    async def aclose(self) -> None: ...


def lock_key(source: Source, directory: str) -> str:
    """The per-volume lock of ``directory`` on the share of ``source``."""
    return f"{source.protocol}://{source.host_port}/{source.share.strip('/')}/{directory}"


def same_share(a: Source, b: Source) -> bool:
    return (a.protocol, a.host_port, a.share) == (b.protocol, b.host_port, b.share)


async def cleanup(backend: FileShareBackend, path: str) -> None:
    """Remove what a failed job left (best effort; also when cancelled)."""
    try:
        await asyncio.shield(backend.remove_tree(path))
    except DriverError as exc:
        log.warning("could not remove a partial result", path=path, error=exc.message)
    except asyncio.CancelledError:
        log.warning("partial result left behind (cancelled)", path=path)


async def move_into_place(backend: FileShareBackend, work: str, final: str) -> None:
    """Rename a finished temporary ``work`` to ``final``; it must exist."""
    if not await backend.rename(work, final):
        raise Internal(f"{work!r} vanished before it could become {final!r}")
