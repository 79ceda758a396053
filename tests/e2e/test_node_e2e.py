"""The Linux node with real kernel cifs / nfs mounts: one UML guest boot that
runs tests/e2e/inside/node_inside.py (Samba and the kernel NFS server on the
guest's loopback).

The guest writes a junit report into the shared work dir; this test fails
unless every expected inside test ran and passed (no silent skips).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.inside_run import check_junit, run_inside
from tests.secret_scan import register_secret

pytestmark = pytest.mark.e2e

INSIDE = "tests/e2e/inside/node_inside.py"
# What pain point 5 was about: , " ` $ \ and spaces in an SMB password.
PASSWORD = register_secret('e2e p,a"s`s $w\\rd')
EXPECTED = {
    "test_smb_stage_publish_without_leaking_the_password",
    "test_nfs_stage_publish[v3]",
    "test_nfs_stage_publish[v4.1]",
    "test_smb_server_outage_is_reported_and_heals",
    "test_nfs_server_outage_and_unstage_while_down",
    "test_stale_runner_state_is_clean",
}


def test_node_in_guest(tmp_path: Path) -> None:
    res, tail = run_inside(INSIDE, tmp_path, password=PASSWORD, pytest_timeout=240, timeout=400)
    assert res.returncode == 0, f"guest pytest exit {res.returncode}:\n{tail}"
    check_junit(tmp_path / "junit.xml", EXPECTED, tail)
