"""The Linux node with real kernel cifs / nfs mounts: one UML guest boot that
runs tests/e2e/inside/node_inside.py (Samba and the kernel NFS server on the
guest's loopback).

The guest writes a junit report into the shared work dir; this test fails
unless every expected inside test ran and passed (no silent skips).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.e2e.uml.guest import GuestSetupError, ensure_setup, run_in_guest
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
    if os.geteuid() != 0:
        pytest.skip("the UML testbed needs root")
    try:
        ensure_setup()
    except GuestSetupError as exc:
        pytest.fail(str(exc))
    junit = tmp_path / "junit.xml"
    res = run_in_guest(
        [
            ".venv/bin/python", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
            "-s", "--timeout=240", INSIDE, f"--junitxml={junit}",
        ],
        workdir=tmp_path,
        samba=True,
        nfs=True,
        env={"SMB_PASSWORD": PASSWORD, "CSI_E2E_INSIDE": "1"},
        timeout=400,
    )  # fmt: skip
    print(f"guest: exit {res.returncode}, {res.duration:.1f} s")
    tail = res.output[-8000:].replace(PASSWORD, "***")
    assert res.returncode == 0, f"guest pytest exit {res.returncode}:\n{tail}"
    assert junit.exists(), f"no junit report from the guest:\n{tail}"
    cases = ET.parse(junit).getroot().iter("testcase")  # noqa: S314 - our own guest wrote it
    ran: dict[str, str] = {}
    for case in cases:
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
        ran[case.get("name", "")] = outcome
    assert ran, f"the guest ran no test:\n{tail}"
    not_passed = {k: v for k, v in ran.items() if v != "passed"}
    assert not not_passed, f"inside tests not passed: {not_passed}\n{tail}"
    missing = EXPECTED - set(ran)
    assert not missing, f"inside tests did not run: {sorted(missing)} (ran: {sorted(ran)})"
