"""Fixtures of the image tests: the built image's root filesystem.

The image must have been built (``make image``; ``make test`` does it first):
a missing image fails, it is never skipped. Root is needed (mount, chroot).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image.rootfs import IMAGE, ImageConfig, ImageMissing, image_mount, inspect

# The session's Samba of the integration tests (same fixture, same servers).
from tests.integration.conftest import samba  # noqa: F401


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the image tests need root (mount, chroot)")


@pytest.fixture(scope="session")
def image_config() -> ImageConfig:
    _need_root()
    try:
        return inspect(IMAGE)
    except ImageMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def image_lower(image_config: ImageConfig) -> Iterator[Path]:
    """The stored image's filesystem (read-only use)."""
    with image_mount(IMAGE) as path:
        yield path
