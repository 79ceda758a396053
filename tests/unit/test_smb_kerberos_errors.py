"""How the controller reports Kerberos logon failures (no KDC needed)."""

from __future__ import annotations

import pytest
from smbprotocol.exceptions import SMBAuthenticationError

from controller.smb.errors import map_smb_error
from driver.errors import Unauthenticated, Unavailable


class Krb5Error(Exception):
    """Stands in for krb5.Krb5Error: the mapping goes by the library module."""


Krb5Error.__module__ = "krb5._exceptions"


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (Krb5Error("Preauthentication failed -1765328360"), Unauthenticated, "Preauthentication"),
        (Krb5Error("Cannot contact any KDC for realm 'R'"), Unavailable, "Cannot contact"),
        (
            SMBAuthenticationError("Failed to authenticate with server: SpnegoError: GSSAPI ..."),
            Unauthenticated,
            "GSSAPI",
        ),
        # CSI: secrets that do not authenticate are UNAUTHENTICATED, NTLM too.
        (SMBAuthenticationError("Failed to authenticate with server: NTLM"), Unauthenticated, ""),
    ],
)
def test_kerberos_failures_keep_the_reason(exc: Exception, kind: type, text: str) -> None:
    err = map_smb_error(exc, "mkdir", "pvc-1")
    assert isinstance(err, kind)
    assert text in err.message
