"""Fixtures shared by the unit tests of the Node service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.linux import World


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """A node on the fakes; its platforms are closed after the test."""
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.host.release_all()
        for task in w.runner.finished:
            task.cancel()
        for platform in w.platforms:  # their ticket keepers' tasks
            await platform.aclose()
