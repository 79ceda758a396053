"""SMB share backend: ``ShareBackend`` over smbprotocol's ``smbclient`` API.

The package's pieces: ``errors`` (NTSTATUS tables, mapping, scrubbing),
``steps`` (the blocking calls, by name), ``connection`` (one credential
key's connection cache, warm-up and reconnect), ``channel`` (how steps reach
the server: slots, timeouts), ``worker`` (the same channels in a child
process), this module, which turns ``ShareBackend`` calls into steps, and
``pool`` (one backend per share and identity, one channel per identity).

* **A worker process, in the controller.** ``pool.SmbBackendPool(channels=SmbWorker())``
  runs the steps in one child process (``controller.smb.worker``):
  smbprotocol's Python CPU then does not share the gRPC process's
  interpreter lock.  Slots and timeouts stay on this side; a backend made
  directly (``SmbBackend(...)``) runs its steps in this process.
* **Modes.** SMB has no POSIX mode bits in general, so ``mkdir(mode=...)`` is
  accepted and ignored; ownership and permissions follow the server's share
  configuration (e.g. ``create mask``/``directory mask``, ``force user``).
* **Read-only entries.** ``remove_tree`` clears ``FILE_ATTRIBUTE_READONLY`` on
  directories before emptying them (Samba with ``map readonly = yes`` maps it to
  the owner's write bit; Windows refuses to delete read-only directories) and
  smbclient clears it on each file in the same compound request as the delete.
  Entries the user does not own and may not change stay ``PermissionDenied``.
  Reparse points (symlinks) are removed, not followed; a server that resolves
  symlinks itself (Samba's default ``follow symlinks = yes``) shows them as
  plain directories, which the client cannot tell apart.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

from controller import tree
from controller.share import Capacity, Features, FileInfo, RemoveResult
from controller.smb import steps
from controller.smb.channel import Channel, ThreadChannel
from controller.smb.connection import CredentialKey, SmbSettings, check_name, credential_key
from controller.smb.steps import ATTR_DIRECTORY, ATTR_READONLY, IO_CHUNK, Entry, MkdirResult
from driver import failures, paths
from driver.credentials import Credentials
from driver.errors import AlreadyExists, DriverError, FailedPrecondition, InvalidArgument, NotFound
from driver.failures import Failure
from driver.log import get_logger

__all__ = [
    "SMB_FEATURES",
    "SmbBackend",
    "SmbReader",
    "SmbWriter",
    "check_path",
]

log = get_logger(__name__)
T = TypeVar("T")

#: Samba (4.17, measured) resolves symlinks on the server: clients see the
#: target as a plain file or directory, links that leave the share are not
#: listed, and it refuses FSCTL_SET_REPARSE_POINT.  So nothing is a symlink
#: to us, and none can be made.  SMB has no POSIX modes or owners either.
SMB_FEATURES: Final = Features(symlinks=False, modes=False, owners=False, server_copy=True)


def check_path(path: str) -> tuple[str, ...]:
    """A share-relative path's parts (``driver.paths.share_parts``); SMB also
    refuses ``:``, the alternate data stream marker."""
    return paths.share_parts(path, forbid="\\\x00:")


class SmbBackend:
    """``ShareBackend`` for one SMB share and one identity.

    ``mode`` of ``mkdir`` is ignored: SMB has no POSIX modes in general; the
    server's share configuration decides ownership and permissions.
    """

    def __init__(  # noqa: PLR0917 - the connection facts of a share, in their usual order
        self,
        server: str,
        port: int,
        share: str,
        username: str,
        password: str,
        domain: str | None = None,
        *,
        settings: SmbSettings | None = None,
    ) -> None:
        settings = settings or SmbSettings()
        key = credential_key(server, port, Credentials(username, password, domain or ""))
        self._init(key, share, ThreadChannel(key, password, settings), owns_channel=True)

    @classmethod
    def on_channel(cls, channel: Channel, share: str) -> SmbBackend:
        """A backend on a channel that its pool owns (and closes)."""
        backend = cls.__new__(cls)
        backend._init(channel.key, share, channel, owns_channel=False)
        return backend

    def _init(
        self, key: CredentialKey, share: str, channel: Channel, *, owns_channel: bool
    ) -> None:
        self._key = key
        self._share = check_name("share", share)
        self._share_unc = f"\\\\{key.server}\\{share}"
        self._channel = channel
        self._owns_channel = owns_channel
        self._tree = _SmbTree(self)

    def __repr__(self) -> str:
        key = self._key
        return f"SmbBackend(//{key.server}:{key.port}/{self._share} as {key.username})"

    @property
    def key(self) -> CredentialKey:
        return self._key

    @property
    def share(self) -> str:
        return self._share

    @property
    def settings(self) -> SmbSettings:
        return self._channel.settings

    def unc(self, path: str) -> str:
        """The UNC name of a checked share-relative path."""
        return steps.unc(self._share_unc, tuple(path.split("/")))

    async def run(
        self, op: str, path: str, step: steps.Step[T], *args: Any, retry: bool = True
    ) -> T:
        """Run one step on this share's channel (``op`` and ``path`` name it in errors)."""
        return await self._channel.run(op, path, self._share_unc, step, *args, retry=retry)

    async def mkdir(self, path: str, *, mode: int | None = None) -> bool:
        parts = check_path(path)
        result, where = await self.run("mkdir", path, steps.MKDIR, self._share_unc, parts)
        if result is MkdirResult.NOT_A_DIRECTORY:
            if where == path:  # the volume's own name is taken by a file
                raise AlreadyExists(f"SMB mkdir {path!r}: exists and is not a directory")
            raise failures.error(Failure.NOT_A_DIRECTORY, f"SMB mkdir {path!r}", repr(where))
        return result is MkdirResult.CREATED

    async def rename(self, src: str, dst: str, *, replace: bool = False) -> bool:
        check_path(src)
        check_path(dst)
        if replace:
            return await tree.replace(self._tree, src, dst)
        return await self._tree.rename(src, dst)

    async def remove_tree(self, path: str) -> bool:
        check_path(path)
        return await tree.remove_tree(self._tree, path)

    async def remove_empty_dir(self, path: str) -> RemoveResult:
        target = steps.unc(self._share_unc, check_path(path))
        return await self.run("rmdir", path, steps.REMOVE_EMPTY, target)

    async def exists(self, path: str) -> bool:
        unc = steps.unc(self._share_unc, check_path(path))
        return await self.run("stat", path, steps.ATTRIBUTES, unc) is not None

    async def capacity(self) -> Capacity:
        total, available = await self.run("statvfs", "", steps.CAPACITY, self._share_unc)
        return Capacity(total_bytes=total, available_bytes=available)

    # -- ShareFiles --------------------------------------------------------

    @property
    def features(self) -> Features:
        return SMB_FEATURES

    async def stat(self, path: str) -> FileInfo | None:
        unc = steps.unc(self._share_unc, check_path(path))
        return await self.run("stat", path, steps.LSTAT, unc)

    async def list_dir(self, path: str) -> list[tuple[str, FileInfo]]:
        unc = steps.unc(self._share_unc, check_path(path))
        return await self.run("list", path, steps.LIST_INFO, unc)

    async def open_read(self, path: str, *, size_hint: int | None = None) -> SmbReader:
        unc = steps.unc(self._share_unc, check_path(path))
        handle = await self.run("open", path, steps.OPEN, unc, "rb")
        return SmbReader(self, path, handle)

    async def open_write(self, path: str) -> SmbWriter:
        unc = steps.unc(self._share_unc, check_path(path))
        handle = await self.run("create", path, steps.OPEN, unc, "wb")
        return SmbWriter(self, path, handle)

    async def symlink(self, target: str, path: str) -> None:
        msg = (
            f"SMB symlink {path!r}: symlinks cannot be created over SMB here (Samba does "
            "not take reparse points from clients; see README, Snapshots)"
        )
        raise FailedPrecondition(msg)

    async def readlink(self, path: str) -> str:
        msg = f"SMB readlink {path!r}: reparse points are not read over SMB"
        raise FailedPrecondition(msg)

    async def set_attributes(self, path: str, info: FileInfo) -> None:
        unc = steps.unc(self._share_unc, check_path(path))
        attributes = 0  # 0: leave the attributes as they are
        if info.kind == "file":
            read_only = info.read_only or (info.mode is not None and not info.mode & 0o200)
            if read_only:
                attributes = ATTR_READONLY
        if info.mtime_ns is None and not attributes:
            return
        atime = info.atime_ns if info.atime_ns is not None else info.mtime_ns
        await self.run(
            "set times",
            path,
            steps.TIMES,
            unc,
            steps.filetime(atime),
            steps.filetime(info.mtime_ns),
            attributes,
        )

    async def copy_file(self, src: str, dst: str) -> None:
        src_unc = steps.unc(self._share_unc, check_path(src))
        dst_unc = steps.unc(self._share_unc, check_path(dst))
        await self.run("copy", f"{src} -> {dst}", steps.COPY, src_unc, dst_unc)

    async def aclose(self) -> None:
        """Close the connection and threads (reopened on next use).

        A backend handed out by ``controller.smb.pool`` shares its connection
        with the pool's other backends of the same credentials: the pool
        closes it, this is a no-op.
        """
        if self._owns_channel:
            await self._channel.aclose()


class _SmbTree:
    """``controller.tree.TreeOps`` over SMB steps (paths are already checked)."""

    def __init__(self, backend: SmbBackend) -> None:
        self._backend = backend
        settings = backend.settings
        # Up to max_in_flight subdirectories side by side; files in batches
        # that keep every slot busy (the channel bounds what is in flight).
        self.walkers = settings.max_in_flight
        self.batch = 4 * settings.max_in_flight

    def _unc(self, path: str) -> str:
        return self._backend.unc(path)

    @staticmethod
    def _entry(name: str, attributes: int) -> tree.TreeEntry:
        entry = Entry(name, attributes)
        return tree.TreeEntry(
            name,
            is_dir=entry.is_dir and not entry.is_link,
            writable=not attributes & ATTR_READONLY,
            raw=attributes,
        )

    async def entry(self, path: str) -> tree.TreeEntry | None:
        attributes = await self._backend.run("stat", path, steps.ATTRIBUTES, self._unc(path))
        if attributes is None:
            return None
        return self._entry(path.rpartition("/")[2], attributes)

    async def list(self, path: str) -> list[tree.TreeEntry] | None:
        entries = await self._backend.run("list", path, steps.LIST, self._unc(path))
        if entries is None:
            return None
        return [self._entry(e.name, e.attributes) for e in entries]

    async def make_writable(self, path: str, entry: tree.TreeEntry) -> None:
        # Clearing read-only makes the directory writable (Samba: owner w bit).
        unc = self._unc(path)
        await self._backend.run("clear read-only", path, steps.SET_ATTRIBUTES, unc, ATTR_DIRECTORY)

    async def unlink(self, path: str, entry: tree.TreeEntry) -> bool:
        directory = bool(entry.raw & ATTR_DIRECTORY)  # a reparse point to a directory
        return await self._backend.run("remove", path, steps.REMOVE, self._unc(path), directory)

    async def rmdir(self, path: str) -> bool:
        return await self._backend.run("rmdir", path, steps.REMOVE, self._unc(path), True)

    async def rename(self, src: str, dst: str) -> bool:
        try:
            await self._backend.run(
                "rename",
                f"{src} -> {dst}",
                steps.RENAME,
                self._unc(src),
                self._unc(dst),
                retry=False,
            )
        except NotFound as exc:
            if await self.entry(src) is None:
                return False  # renamed or removed by someone else meanwhile
            msg = f"SMB rename {src!r} -> {dst!r}: the target's parent does not exist"
            raise NotFound(msg) from exc.__cause__
        return True


class _OpenSmbFile:
    """What reads and writes share: one open handle, used in the channel's threads.

    Calls on it are never retried: the handle does not survive a reconnect.
    """

    def __init__(self, backend: SmbBackend, path: str, handle: Any) -> None:
        self._backend = backend
        self._path = path
        self._handle: Any = handle

    def _open_handle(self, op: str) -> Any:
        if self._handle is None:
            msg = f"SMB {op} {self._path!r}: the file is closed"
            raise InvalidArgument(msg)
        return self._handle

    async def _on_handle(self, op: str, step: steps.Step[T], *args: Any) -> T:
        handle = self._open_handle(op)
        return await self._backend.run(op, self._path, step, handle, *args, retry=False)

    async def _close(self, *, strict: bool) -> None:
        """Close once; a failure counts only with ``strict`` (after writing)."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            await self._backend.run("close", self._path, steps.CLOSE, handle, retry=False)
        except DriverError:
            if strict:
                raise
            log.debug("closing a file failed", path=self._path, exc_info=True)


class SmbReader(_OpenSmbFile):
    """A file open for reading; each read is one SMB READ in the channel's threads."""

    async def read(self, size: int) -> bytes:
        return await self._on_handle("read", steps.READ, min(size, IO_CHUNK))

    async def aclose(self) -> None:
        await self._close(strict=False)


class SmbWriter(_OpenSmbFile):
    """A file open for writing; each write runs in the channel's threads."""

    async def write(self, data: bytes) -> None:
        self._open_handle("write")
        view = memoryview(data)
        for start in range(0, len(view), IO_CHUNK):
            await self._on_handle("write", steps.WRITE, bytes(view[start : start + IO_CHUNK]))

    async def aclose(self) -> None:
        await self._close(strict=True)

    async def abort(self) -> None:
        await self._close(strict=False)
