"""Runs INSIDE the UML guest (tests/e2e/test_kerberos_e2e.py boots it with the
Samba AD DC and runs this file): Kerberos volumes with the kernel's cifs and
nfs clients.

The node plugin (real runner, real mount table) and, where a case needs it,
the controller run behind a real gRPC server; volumes are directories on the
DC's share or on a Kerberos-only NFS export.  This is the file pytest
collects, in this order; the cases live in modules named for what they cover:

- krb5_domain.py: the AD DC, its principals' keys as secrets, the driver set
  up for Kerberos, the checks the cases share;
- krb5_smb_cases.py: keytab and credential cache volumes, a rotated keytab,
  ticket renewal, the controller with the same secrets;
- krb5_heal_inline_cases.py: self-healing after ticket expiry, inline volumes;
- krb5_nfs_cases.py: NFS sec=krb5 fed to rpc.gssd from the secret (last: it
  takes over the guest's NFS server).
"""

from __future__ import annotations

import pytest

from tests.e2e.inside import krb5_heal_inline_cases as heal_inline
from tests.e2e.inside import krb5_nfs_cases as nfs
from tests.e2e.inside import krb5_smb_cases as smb
from tests.e2e.inside.krb5_domain import prepare_node

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def guest_setup() -> None:
    prepare_node()


test_keytab_volume_stage_publish_unstage = smb.test_keytab_volume_stage_publish_unstage
test_credential_cache_volume_with_the_upstream_key = (
    smb.test_credential_cache_volume_with_the_upstream_key
)
test_rotated_keytab_is_unauthenticated_with_the_kdc_reason = (
    smb.test_rotated_keytab_is_unauthenticated_with_the_kdc_reason
)
test_tickets_are_renewed_while_staged = smb.test_tickets_are_renewed_while_staged
test_controller_provisions_with_a_keytab_end_to_end = (
    smb.test_controller_provisions_with_a_keytab_end_to_end
)
test_controller_with_a_credential_cache = smb.test_controller_with_a_credential_cache
test_controller_rotated_keytab_fails_clearly = smb.test_controller_rotated_keytab_fails_clearly
test_staging_heals_after_its_ticket_expired_with_the_server_away = (
    heal_inline.test_staging_heals_after_its_ticket_expired_with_the_server_away
)
test_inline_volume_with_a_keytab = heal_inline.test_inline_volume_with_a_keytab
test_nfs_sec_krb5_from_the_secret = nfs.test_nfs_sec_krb5_from_the_secret
