"""Fixtures of the image tests: the built image's root filesystem.

The image must have been built (``make image``; ``make test`` does it first):
a missing image fails, it is never skipped. Root is needed (mount, chroot).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image.rootfs import IMAGE, ImageConfig, ImageMissing, image_mount, inspect
from tests.servers.plugin import require_root


def _need_root() -> None:
    require_root("the image tests need root (mount, chroot)")


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
