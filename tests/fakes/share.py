"""Stateful fakes for unit tests: they keep a tree and record every action.

``FakeShare`` is an in-memory share.  Every path it receives is checked to
stay inside the share; a violation is recorded (and raised) so tests and the
fuzzer can assert that no operation ever aimed outside the share root.  A
path that goes *through* a symlink counts as a violation too: the real
clients follow a symlink in the middle of a path, so writing there could
land anywhere.

Files keep their bytes (``contents``), symlinks their target (``links``) and
every ``set_attributes`` call is kept per path (``attrs``), so snapshot,
restore and clone logic can be checked byte for byte.
"""

from __future__ import annotations

import asyncio
import posixpath
from dataclasses import dataclass, field

from controller.share import Capacity, Features, FileInfo, RemoveResult
from driver import failures
from driver.credentials import Credentials
from driver.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DriverError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from driver.failures import Failure
from driver.source import Source

NAME_MAX = 255  # bytes of one name, as on the real servers
ALL_FEATURES = Features(symlinks=True, modes=True, owners=True, server_copy=True)


class EscapeAttemptError(AssertionError):
    pass


class FakeReader:
    def __init__(self, share: FakeShare, path: str, data: bytes) -> None:
        self._share = share
        self._path = path
        self._data = data
        self._pos = 0
        self.closed = False

    async def read(self, size: int) -> bytes:
        if self.closed:
            raise InvalidArgument(f"{self._path} is closed")
        self._share._maybe_fail()
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk

    async def aclose(self) -> None:
        self.closed = True
        self._share.open_handles.discard(self)


class FakeWriter:
    def __init__(self, share: FakeShare, path: str) -> None:
        self._share = share
        self._path = path
        self.closed = False

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise InvalidArgument(f"{self._path} is closed")
        self._share._maybe_fail()
        if self._path not in self._share.files:
            raise NotFound(f"{self._path} vanished while it was written")
        self._share.contents[self._path] = self._share.contents.get(self._path, b"") + data
        self._share.bytes_written += len(data)

    async def aclose(self) -> None:
        self.closed = True
        self._share.open_handles.discard(self)
        self._share.actions.append(("close", self._path))

    async def abort(self) -> None:
        self.closed = True
        self._share.open_handles.discard(self)


@dataclass
class FakeShare:
    name: str = "share"
    dirs: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)
    modes: dict[str, int] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, FileInfo] = field(default_factory=dict)
    features: Features = ALL_FEATURES
    actions: list[tuple[str, ...]] = field(default_factory=list)
    escapes: list[str] = field(default_factory=list)
    fail_next: list[DriverError] = field(default_factory=list)
    total_bytes: int = 100 << 30
    available_bytes: int = 40 << 30
    closed: int = 0
    bytes_written: int = 0
    # When set, mkdir waits for it: a slow server, for lock and shutdown tests.
    hold: asyncio.Event | None = None
    # When set, every file write waits for it (a long snapshot or restore).
    hold_io: asyncio.Event | None = None
    in_flight: int = 0
    # When set, remove_tree of more entries than this runs out of time.
    remove_tree_limit: int | None = None
    open_handles: set[object] = field(default_factory=set)
    # The state of the server behind the share, as the real adapters report
    # it in the shared vocabulary: e.g. SHARE_MISSING (no such share/export),
    # UNREACHABLE (server down), BUSY (NFS grace), AUTH_FAILED.  Every call fails so.
    condition: Failure | None = None
    # The identity may read but not change anything (a read-only user or export).
    read_only: bool = False

    def _check(self, path: str) -> str:
        if self.condition is not None:
            raise failures.error(self.condition, f"fake share {self.name} {path!r}")
        if any(len(part.encode()) > NAME_MAX for part in path.split("/")):
            raise failures.error(Failure.BAD_NAME, f"fake share {path[:40]!r}...", "NAME_MAX")
        norm = posixpath.normpath("/" + path)
        if not path or path.startswith("/") or norm != "/" + path or "\\" in path or "\x00" in path:
            self.escapes.append(path)
            raise EscapeAttemptError(f"path {path!r} is not a clean path inside the share")
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in self.links:
                self.escapes.append(path)
                raise EscapeAttemptError(f"path {path!r} goes through a symlink")
        return path

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    def _writable(self, path: str) -> None:
        if self.read_only:
            raise failures.error(Failure.DENIED, f"fake share {self.name} {path!r}")

    def _under(self, path: str) -> list[str]:
        return [
            p
            for p in self.dirs | self.files | set(self.links)
            if p == path or p.startswith(path + "/")
        ]

    def _exists(self, path: str) -> bool:
        return path in self.dirs or path in self.files or path in self.links

    def _parent_must_be_dir(self, path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent and parent not in self.dirs:
            raise NotFound(f"{parent} does not exist")

    async def mkdir(self, path: str, *, mode: int | None = None) -> bool:
        self._check(path)
        self.actions.append(("mkdir", path, "" if mode is None else oct(mode)))
        self._maybe_fail()
        if self.hold is not None:
            self.in_flight += 1
            try:
                await self.hold.wait()
            finally:
                self.in_flight -= 1
        if path in self.files or path in self.links:
            raise AlreadyExists(f"{path} exists and is not a directory")
        if path in self.dirs:
            return False
        self._writable(path)
        parts = path.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in self.files or prefix in self.links:
                raise failures.error(Failure.NOT_A_DIRECTORY, f"fake mkdir {path!r}", prefix)
        for i in range(1, len(parts) + 1):
            self.dirs.add("/".join(parts[:i]))
        if mode is not None:
            self.modes[path] = mode
        return True

    async def rename(self, src: str, dst: str, *, replace: bool = False) -> bool:
        self._check(src)
        self._check(dst)
        self.actions.append(("rename", src, dst, str(replace)))
        self._maybe_fail()
        if not self._exists(src):
            return False
        self._parent_must_be_dir(dst)
        self._writable(src)
        if self._under(dst):
            if not replace:
                raise AlreadyExists(f"{dst} exists")
            await self.remove_tree(dst)

        def moved(p: str) -> str:
            return dst + p[len(src) :]

        for collection in (self.dirs, self.files):
            old = {p for p in collection if p == src or p.startswith(src + "/")}
            collection.difference_update(old)
            collection.update(moved(p) for p in old)
        for mapping in (self.contents, self.links, self.attrs, self.modes):
            for key in [k for k in mapping if k == src or k.startswith(src + "/")]:
                mapping[moved(key)] = mapping.pop(key)
        return True

    async def remove_tree(self, path: str) -> bool:
        self._check(path)
        self.actions.append(("remove_tree", path))
        self._maybe_fail()
        doomed = self._under(path)
        if doomed:
            self._writable(path)
        if self.remove_tree_limit is not None and len(doomed) > self.remove_tree_limit:
            # A deadline for the whole call (NFS): some entries go, deepest first.
            for p in sorted(doomed, key=lambda p: -p.count("/"))[: self.remove_tree_limit]:
                self.dirs.discard(p)
                self.files.discard(p)
            raise DeadlineExceeded(f"remove_tree {path}: no answer within the deadline")
        self.dirs.difference_update(doomed)
        self.files.difference_update(doomed)
        for key in doomed:
            self.contents.pop(key, None)
            self.links.pop(key, None)
            self.attrs.pop(key, None)
        return bool(doomed)

    async def remove_empty_dir(self, path: str) -> RemoveResult:
        self._check(path)
        self.actions.append(("remove_empty_dir", path))
        self._maybe_fail()
        if not self._exists(path):
            return "missing"
        if path not in self.dirs or len(self._under(path)) > 1:
            return "not_empty"
        self._writable(path)
        self.dirs.discard(path)
        self.modes.pop(path, None)
        self.attrs.pop(path, None)
        return "removed"

    async def exists(self, path: str) -> bool:
        self._check(path)
        self.actions.append(("exists", path))
        self._maybe_fail()
        return self._exists(path)

    async def capacity(self) -> Capacity:
        self.actions.append(("capacity",))
        self._maybe_fail()
        return Capacity(self.total_bytes, self.available_bytes)

    async def aclose(self) -> None:
        self.closed += 1

    # -- ShareFiles ----------------------------------------------------------

    def info(self, path: str) -> FileInfo | None:
        """What stat would say, without recording an action."""
        kept = self.attrs.get(path)
        if path in self.links:
            return FileInfo("symlink", size=len(self.links[path]))
        if path in self.dirs:
            base = FileInfo("dir", mode=self.modes.get(path))
        elif path in self.files:
            base = FileInfo(
                "file", size=len(self.contents.get(path, b"")), mode=self.modes.get(path)
            )
        else:
            return None
        if kept is None:
            return base
        return FileInfo(
            base.kind,
            size=base.size,
            mtime_ns=kept.mtime_ns,
            atime_ns=kept.atime_ns,
            mode=kept.mode if kept.mode is not None else base.mode,
            uid=kept.uid,
            gid=kept.gid,
            read_only=kept.read_only,
        )

    async def stat(self, path: str) -> FileInfo | None:
        self._check(path)
        self.actions.append(("stat", path))
        self._maybe_fail()
        return self.info(path)

    async def list_dir(self, path: str) -> list[tuple[str, FileInfo]]:
        self._check(path)
        self.actions.append(("list", path))
        self._maybe_fail()
        if path not in self.dirs:
            raise NotFound(f"{path} is not a directory")
        out: list[tuple[str, FileInfo]] = []
        for child in sorted(self.dirs | self.files | set(self.links)):
            parent, _, leaf = child.rpartition("/")
            if parent == path:
                info = self.info(child)
                assert info is not None
                out.append((leaf, info))
        return out

    async def open_read(self, path: str, *, size_hint: int | None = None) -> FakeReader:
        self._check(path)
        self.actions.append(("open_read", path))
        self._maybe_fail()
        if path not in self.files:
            raise NotFound(f"{path} is not a file")
        reader = FakeReader(self, path, self.contents.get(path, b""))
        self.open_handles.add(reader)
        return reader

    async def open_write(self, path: str) -> FakeWriter:
        self._check(path)
        self.actions.append(("open_write", path))
        self._maybe_fail()
        if self.hold_io is not None:
            self.in_flight += 1
            try:
                await self.hold_io.wait()
            finally:
                self.in_flight -= 1
        self._parent_must_be_dir(path)
        self._writable(path)
        if path in self.dirs or path in self.links:
            raise AlreadyExists(f"{path} exists and is not a file")
        self.files.add(path)
        self.contents[path] = b""
        writer = FakeWriter(self, path)
        self.open_handles.add(writer)
        return writer

    async def symlink(self, target: str, path: str) -> None:
        self._check(path)
        self.actions.append(("symlink", target, path))
        self._maybe_fail()
        if not self.features.symlinks:
            raise FailedPrecondition("this share has no symlinks")
        self._parent_must_be_dir(path)
        if self._exists(path):
            raise AlreadyExists(f"{path} exists")
        self.links[path] = target

    async def readlink(self, path: str) -> str:
        self._check(path)
        self.actions.append(("readlink", path))
        self._maybe_fail()
        if path not in self.links:
            raise InvalidArgument(f"{path} is not a symlink")
        return self.links[path]

    async def set_attributes(self, path: str, info: FileInfo) -> None:
        self._check(path)
        self.actions.append(("set_attributes", path))
        self._maybe_fail()
        if not self._exists(path):
            raise NotFound(f"{path} does not exist")
        self.attrs[path] = info
        if info.mode is not None and self.features.modes and path not in self.links:
            self.modes[path] = info.mode

    async def copy_file(self, src: str, dst: str) -> None:
        self._check(src)
        self._check(dst)
        self.actions.append(("copy", src, dst))
        self._maybe_fail()
        if src not in self.files:
            raise NotFound(f"{src} is not a file")
        self._parent_must_be_dir(dst)
        self.files.add(dst)
        self.contents[dst] = self.contents.get(src, b"")


@dataclass
class FakeBackends:
    """A BackendFactory handing out one FakeShare per share root."""

    shares: dict[str, FakeShare] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    closed: bool = False

    @staticmethod
    def key(source: Source) -> str:
        return f"{source.protocol}://{source.host_port}/{source.share}"

    def share(self, source: Source | str) -> FakeShare:
        key = source if isinstance(source, str) else self.key(source)
        return self.shares.setdefault(key, FakeShare(name=key))

    def get(
        self, source: Source, *, credentials: Credentials | None, nfs_version: str | None
    ) -> FakeShare:
        if source.base:
            raise InvalidArgument("backend asked for a non-root source")
        self.requests.append(
            (self.key(source), str(credentials) if credentials else "", nfs_version)
        )
        return self.share(source)

    def cached(self, source: Source) -> FakeShare | None:
        return self.shares.get(self.key(source))

    async def aclose(self) -> None:
        self.closed = True

    @property
    def all_escapes(self) -> list[str]:
        return [e for s in self.shares.values() for e in s.escapes]
