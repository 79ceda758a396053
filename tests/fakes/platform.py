"""A stateful NodePlatform for the Node service's unit tests and the fuzzer."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from driver.errors import InvalidArgument, NotFound


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

    async def published_elsewhere(self, staging_path: str, target_path: str) -> list[str]:
        return sorted(
            target
            for target, request in self.published.items()
            if target != target_path and getattr(request, "staging_path", None) == staging_path
        )

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
