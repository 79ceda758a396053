"""Fixtures of the Windows node tests: a fake node with two shares, and the platform on it."""

from __future__ import annotations

import pytest

from node.windows import WindowsPlatform
from tests.unit.windows.fake import PASSWORD, ROOT, FakeWindows, make_platform


@pytest.fixture
def node() -> FakeWindows:
    fake = FakeWindows()
    fake.add_share(ROOT, "base/pvc-1", "base/pvc-2", "base/pvc-3")
    fake.add_share(r"\\fileserver\other", "x")
    fake.accounts["corp\\alice"] = PASSWORD
    fake.accounts["corp\\bob"] = "bobs-password"
    return fake


@pytest.fixture
def platform(node: FakeWindows) -> WindowsPlatform:
    return make_platform(node)
