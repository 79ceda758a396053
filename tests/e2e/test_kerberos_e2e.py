"""Kerberos SMB end to end: one UML guest boot with a Samba Active Directory
domain controller (tests/e2e/uml/provision-addc.sh, start-addc.sh) that
runs tests/e2e/inside/kerberos_inside.py: the node mounts with sec=krb5 and
tickets from a keytab or a credential cache, renews them, and removes them
at unstage; a staging whose ticket expired while the DC was away heals at
republish; inline volumes take a keytab; NFS sec=krb5 mounts get their
tickets from the secret through rpc.gssd.

The guest writes a junit report into the shared work dir; this test fails
unless every expected inside test ran and passed (no silent skips).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.inside_run import check_junit
from tests.e2e.uml.guest import GuestSetupError, ensure_addc, ensure_setup, run_in_guest

pytestmark = pytest.mark.e2e

INSIDE = "tests/e2e/inside/kerberos_inside.py"
EXPECTED = {
    "test_keytab_volume_stage_publish_unstage",
    "test_credential_cache_volume_with_the_upstream_key",
    "test_rotated_keytab_is_unauthenticated_with_the_kdc_reason",
    "test_tickets_are_renewed_while_staged",
    "test_controller_provisions_with_a_keytab_end_to_end",
    "test_controller_with_a_credential_cache",
    "test_controller_rotated_keytab_fails_clearly",
    "test_staging_heals_after_its_ticket_expired_with_the_server_away",
    "test_inline_volume_with_a_keytab",
    "test_nfs_sec_krb5_from_the_secret",
}


@pytest.mark.root(reason="the UML testbed needs root on Linux")
def test_kerberos_in_guest(tmp_path: Path) -> None:
    try:
        ensure_setup()
        ensure_addc()
    except GuestSetupError as exc:
        pytest.fail(str(exc))
    res = run_in_guest(
        [
            ".venv/bin/python", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
            "-s", "--timeout=500", INSIDE, f"--junitxml={tmp_path / 'junit.xml'}",
        ],
        workdir=tmp_path,
        addc=True,
        env={"CSI_E2E_INSIDE": "1"},
        timeout=1200,
    )  # fmt: skip
    tail = res.output[-8000:]
    print(f"guest: exit {res.returncode}, {res.duration:.1f} s")
    assert res.returncode == 0, f"guest pytest exit {res.returncode}:\n{tail}"
    check_junit(tmp_path / "junit.xml", EXPECTED, tail)
