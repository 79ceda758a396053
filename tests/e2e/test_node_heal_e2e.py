"""Self-healing republish, a hung mount killed with its process group, and
inline ephemeral volumes with real kernel cifs / nfs mounts: one UML guest
boot that runs tests/e2e/inside/heal_inside.py.

The guest writes a junit report into the shared work dir; this test fails
unless every expected inside test ran and passed (no silent skips).  The
heal timings the guest measured are printed (``HEAL ...`` lines).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.inside_run import check_junit, run_inside
from tests.secret_scan import register_secret

pytestmark = pytest.mark.e2e

INSIDE = "tests/e2e/inside/heal_inside.py"
PASSWORD = register_secret('heal p,a"s`s $w\\rd')
EXPECTED = {
    "test_republish_heals_a_running_container[nfs]",
    "test_republish_heals_a_running_container[smb]",
    "test_hung_nfs_mount_is_killed_with_its_process_group",
    "test_inline_volume[smb]",
    "test_inline_volume[nfs]",
}


def test_heal_and_inline_in_guest(tmp_path: Path) -> None:
    res, tail = run_inside(INSIDE, tmp_path, password=PASSWORD, pytest_timeout=300, timeout=600)
    for line in res.output.splitlines():
        if line.startswith("HEAL ") or "mount repair" in line or ": the container saw" in line:
            print(line)
    assert res.returncode == 0, f"guest pytest exit {res.returncode}:\n{tail}"
    check_junit(tmp_path / "junit.xml", EXPECTED, tail)
