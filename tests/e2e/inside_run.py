"""Run a pytest file inside the UML guest and check its junit report.

Shared by the host-side e2e tests: the guest writes ``junit.xml`` into the
work dir, and a host test fails unless every expected inside test ran and
passed (no silent skips).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.e2e.uml.guest import GuestResult, GuestSetupError, ensure_setup, run_in_guest


def run_inside(
    inside: str,
    workdir: Path,
    *,
    password: str,
    pytest_timeout: int,
    timeout: float,
    env: dict[str, str] | None = None,
) -> tuple[GuestResult, str]:
    """Boot the guest (Samba and NFS) and run ``inside`` there.  Returns the
    result and the console's tail with the password masked."""
    if getattr(os, "geteuid", lambda: -1)() != 0:  # (no geteuid: not Linux)
        pytest.skip("the UML testbed needs root on Linux")
    try:
        ensure_setup()
    except GuestSetupError as exc:
        pytest.fail(str(exc))
    res = run_in_guest(
        [
            ".venv/bin/python", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
            "-s", f"--timeout={pytest_timeout}", inside, f"--junitxml={workdir / 'junit.xml'}",
        ],
        workdir=workdir,
        samba=True,
        nfs=True,
        env={"SMB_PASSWORD": password, "CSI_E2E_INSIDE": "1", **(env or {})},
        timeout=timeout,
    )  # fmt: skip
    print(f"guest: exit {res.returncode}, {res.duration:.1f} s")
    return res, res.output[-8000:].replace(password, "***")


def check_junit(junit: Path, expected: set[str], tail: str) -> None:
    """Every test in ``expected`` ran in the guest and every test passed."""
    assert junit.exists(), f"no junit report from the guest:\n{tail}"
    ran: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):  # noqa: S314 - our own guest wrote it
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
        ran[case.get("name", "")] = outcome
    assert ran, f"the guest ran no test:\n{tail}"
    not_passed = {k: v for k, v in ran.items() if v != "passed"}
    assert not not_passed, f"inside tests not passed: {not_passed}\n{tail}"
    missing = expected - set(ran)
    assert not missing, f"inside tests did not run: {sorted(missing)} (ran: {sorted(ran)})"
