"""Fixtures shared by the unit tests: a node on the fakes (``world``), and a
ControllerService over fake shares (``svc``, ``backends``) after which nothing
escaped a share and no file is left open."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.service import ControllerService
from tests.fakes.linux import World
from tests.fakes.share import FakeBackends


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """A node on the fakes; its platforms are closed after the test."""
    w = World(tmp_path)
    try:
        yield w
    finally:
        await w.aclose()


@pytest.fixture
def backends() -> FakeBackends:
    return FakeBackends()


@pytest.fixture
async def svc(backends: FakeBackends) -> AsyncIterator[ControllerService]:
    service = ControllerService(backends)
    yield service
    await service.aclose()
    assert backends.all_escapes == []
    for share in backends.shares.values():
        assert not share.open_handles, "a file was left open"
