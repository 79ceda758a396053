"""Dual-protocol volumes with real kernel mounts: one UML guest boot that runs
tests/e2e/inside/dual_inside.py (Samba and the kernel NFS server serving one
directory on the guest's loopback).

The guest writes a junit report into the shared work dir; this test fails
unless every expected inside test ran and passed (no silent skips).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.inside_run import check_junit, run_inside
from tests.secret_scan import register_secret

pytestmark = pytest.mark.e2e

INSIDE = "tests/e2e/inside/dual_inside.py"
PASSWORD = register_secret('dual p,a"s`s $w\\rd')
EXPECTED = {
    "test_one_directory_over_nfs_and_cifs[nfs]",
    "test_one_directory_over_nfs_and_cifs[smb]",
}


def test_dual_volume_in_guest(tmp_path: Path) -> None:
    res, tail = run_inside(INSIDE, tmp_path, password=PASSWORD, pytest_timeout=180, timeout=360)
    assert res.returncode == 0, f"guest pytest exit {res.returncode}:\n{tail}"
    check_junit(tmp_path / "junit.xml", EXPECTED, tail)
