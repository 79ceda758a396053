"""Fixtures of the in-guest test files.

Loaded on the host too when pytest walks tests/e2e, so nothing here reads
the guest's environment at import time.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    """A kubelet-like tmp dir; whatever is still mounted under it is undone."""
    from tests.e2e.inside.common import mounts_under  # guest only

    (tmp_path / "kubelet").mkdir()
    try:
        yield tmp_path
    finally:
        for entry in reversed(mounts_under(tmp_path)):
            subprocess.run(["umount", "-l", entry.mount_point], check=False)
