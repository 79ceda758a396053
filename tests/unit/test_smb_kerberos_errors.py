"""How the controller reports Kerberos logon failures (no KDC needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from smbprotocol.exceptions import SMBAuthenticationError

from controller.smb.errors import map_smb_error
from driver.errors import FailedPrecondition, Unauthenticated, Unavailable
from driver.kerberos_reasons import KERBEROS_REASONS


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


def test_server_principal_missing_is_a_configuration_problem() -> None:
    err = map_smb_error(Krb5Error("Server not found in Kerberos database"), "mkdir", "pvc-1")
    assert isinstance(err, FailedPrecondition)
    assert "Server not found" in err.message


# Our own words: a random text that happens to be part of them proves nothing.
OURS = (
    " ".join(r.said for r in KERBEROS_REASONS)
    + " SMB mkdir 'pvc-1': the server rejected the credentials"
)


@given(st.text(min_size=8).filter(lambda s: s.strip() == s and s not in OURS))
def test_kerberos_library_text_never_reaches_the_message(text: str) -> None:
    for exc in (
        Krb5Error(text),
        Krb5Error(f"Preauthentication failed {text}"),
        SMBAuthenticationError(f"Failed to authenticate with server: GSSAPI {text}"),
    ):
        err = map_smb_error(exc, "mkdir", "pvc-1")
        assert text not in err.message
