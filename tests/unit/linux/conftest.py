"""The ``node`` fixture: a LinuxPlatform on the fakes, closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.linux import FakeHost, FakeRunner, make_platform
from tests.unit.linux.support import Node


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    host = FakeHost()
    runner = FakeRunner(host)
    secrets_dir = tmp_path / "secrets"
    (tmp_path / "kubelet").mkdir()
    platform = make_platform(host, runner, secrets_dir)
    try:
        yield Node(host, runner, platform, tmp_path, secrets_dir)
    finally:
        host.release_all()
        for task in runner.finished:
            task.cancel()
        await platform.aclose()  # its ticket keeper's task
