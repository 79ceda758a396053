"""Stateful fakes for unit tests: they keep a tree and record every action.

``FakeShare`` is an in-memory share.  Every path it receives is checked to
stay inside the share; a violation is recorded (and raised) so tests and the
fuzzer can assert that no operation ever aimed outside the share root.
"""

from __future__ import annotations

import asyncio
import posixpath
from dataclasses import dataclass, field
from typing import Any

from controller.backend import Capacity
from driver.credentials import Credentials
from driver.errors import AlreadyExists, DriverError, InvalidArgument, NotFound
from driver.source import Source


class EscapeAttemptError(AssertionError):
    pass


@dataclass
class FakeShare:
    name: str = "share"
    dirs: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)
    modes: dict[str, int] = field(default_factory=dict)
    actions: list[tuple[str, ...]] = field(default_factory=list)
    escapes: list[str] = field(default_factory=list)
    fail_next: list[DriverError] = field(default_factory=list)
    total_bytes: int = 100 << 30
    available_bytes: int = 40 << 30
    closed: int = 0
    # When set, mkdir waits for it: a slow server, for lock and shutdown tests.
    hold: asyncio.Event | None = None
    in_flight: int = 0

    def _check(self, path: str) -> str:
        norm = posixpath.normpath("/" + path)
        if not path or path.startswith("/") or norm != "/" + path or "\\" in path or "\x00" in path:
            self.escapes.append(path)
            raise EscapeAttemptError(f"path {path!r} is not a clean path inside the share")
        return path

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    def _under(self, path: str) -> list[str]:
        return [p for p in self.dirs | self.files if p == path or p.startswith(path + "/")]

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
        if path in self.files:
            raise AlreadyExists(f"{path} exists and is not a directory")
        if path in self.dirs:
            return False
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            self.dirs.add("/".join(parts[:i]))
        if mode is not None:
            self.modes[path] = mode
        return True

    async def rename(self, src: str, dst: str, *, replace: bool = False) -> None:
        self._check(src)
        self._check(dst)
        self.actions.append(("rename", src, dst, str(replace)))
        self._maybe_fail()
        if src not in self.dirs and src not in self.files:
            raise NotFound(f"{src} does not exist")
        if self._under(dst):
            if not replace:
                raise AlreadyExists(f"{dst} exists")
            await self.remove_tree(dst)
        for collection in (self.dirs, self.files):
            moved = {p for p in collection if p == src or p.startswith(src + "/")}
            collection.difference_update(moved)
            collection.update(dst + p[len(src) :] for p in moved)

    async def remove_tree(self, path: str) -> bool:
        self._check(path)
        self.actions.append(("remove_tree", path))
        self._maybe_fail()
        doomed = self._under(path)
        self.dirs.difference_update(doomed)
        self.files.difference_update(doomed)
        return bool(doomed)

    async def exists(self, path: str) -> bool:
        self._check(path)
        self.actions.append(("exists", path))
        self._maybe_fail()
        return path in self.dirs or path in self.files

    async def capacity(self) -> Capacity:
        self.actions.append(("capacity",))
        self._maybe_fail()
        return Capacity(self.total_bytes, self.available_bytes)

    async def aclose(self) -> None:
        self.closed += 1


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


@dataclass
class FakePlatform:
    """A NodePlatform keeping a table of staged and published paths.

    It validates paths like a real platform (absolute, normalised) and
    records every call, so tests can assert what the service asked for.
    """

    name: str = "fake"
    capabilities: frozenset[str] = frozenset(
        {"STAGE_UNSTAGE_VOLUME", "GET_VOLUME_STATS", "VOLUME_CONDITION", "SINGLE_NODE_MULTI_WRITER"}
    )
    staged: dict[str, object] = field(default_factory=dict)  # staging path → StageRequest
    published: dict[str, object] = field(default_factory=dict)  # target → PublishRequest
    actions: list[tuple[str, str]] = field(default_factory=list)
    closed: bool = False

    def check_path(self, path: str, *, what: str) -> str:
        if not path.startswith("/") or "\x00" in path:
            raise InvalidArgument(f"{what}: must be an absolute path")
        if posixpath.normpath(path) != path.rstrip("/") or ".." in path.split("/"):
            raise InvalidArgument(f"{what}: must be a normalised path without '..'")
        return path

    async def stage(self, request: Any) -> None:
        self.actions.append(("stage", request.staging_path))
        self.staged[request.staging_path] = request

    async def unstage(self, volume_id: str, staging_path: str) -> None:
        self.actions.append(("unstage", staging_path))
        self.staged.pop(staging_path, None)

    async def publish(self, request: Any) -> None:
        from driver.errors import FailedPrecondition

        self.actions.append(("publish", request.target_path))
        if request.staging_path not in self.staged:
            raise FailedPrecondition(f"{request.staging_path} is not staged")
        self.published[request.target_path] = request

    async def unpublish(self, volume_id: str, target_path: str) -> None:
        self.actions.append(("unpublish", target_path))
        self.published.pop(target_path, None)

    async def usage(self, volume_id: str, path: str) -> Any:
        from node.platform import VolumeHealth, VolumeUsage

        self.actions.append(("usage", path))
        if path not in self.staged and path not in self.published:
            raise NotFound(f"{path} is not a staged or published path")
        return VolumeUsage(100, 40, 60, 1000, 900, 100, VolumeHealth(False, "ok"))

    async def aclose(self) -> None:
        self.closed = True
