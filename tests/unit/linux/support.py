"""The node under test (LinuxPlatform over the fake host and runner) and request builders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from driver.credentials import Credentials
from driver.source import parse_source
from node.linux import LinuxPlatform
from node.platform import PublishRequest, StageRequest
from tests.fakes.linux import PASSWORD, FakeHost, FakeRunner, make_platform


@dataclass
class Node:
    host: FakeHost
    runner: FakeRunner
    platform: LinuxPlatform
    root: Path
    secrets_dir: Path

    def new_platform(self) -> LinuxPlatform:
        """A restarted driver: same kernel mount table, no memory."""
        return make_platform(self.host, self.runner, self.secrets_dir)

    def secrets_left(self) -> list[str]:
        return sorted(os.listdir(self.secrets_dir)) if self.secrets_dir.exists() else []


def smb_request(staging: Path, **kw: object) -> StageRequest:
    base: dict[str, object] = {
        "volume_id": "smb-vol",
        "source": parse_source("//srv/share"),
        "subdir": "base/pvc-1",
        "staging_path": str(staging),
        "credentials": Credentials("alice", PASSWORD, "CORP"),
    }
    base.update(kw)
    return StageRequest(**base)  # type: ignore[arg-type]


def nfs_request(staging: Path, **kw: object) -> StageRequest:
    base: dict[str, object] = {
        "volume_id": "nfs-vol",
        "source": parse_source("srv:/export"),
        "subdir": "pvc-2",
        "staging_path": str(staging),
    }
    base.update(kw)
    return StageRequest(**base)  # type: ignore[arg-type]


async def staged(node: Node, *, read_only: bool = False) -> Path:
    staging = node.root / "kubelet" / "staging"
    await node.platform.stage(smb_request(staging, read_only=read_only))
    return staging


def publish_request(
    node: Node, staging: Path, *, read_only: bool = False, name: str = "t"
) -> PublishRequest:
    return PublishRequest(
        volume_id="smb-vol",
        staging_path=str(staging),
        target_path=str(node.root / "kubelet" / "pods" / name / "mount"),
        read_only=read_only,
    )
