"""A ControllerService over fake shares; after each test, nothing escaped a share
and no file is left open."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from controller.service import ControllerService
from tests.fakes.share import FakeBackends


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
