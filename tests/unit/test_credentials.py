from __future__ import annotations

import pytest

from driver.credentials import smb_credentials
from driver.errors import InvalidArgument


def test_reads_case_insensitive_keys() -> None:
    creds = smb_credentials({"UserName": "bob", "Password": 'pw,"`x', "domain": "CORP"}, which="s")
    assert (creds.username, creds.password, creds.domain) == ("bob", 'pw,"`x', "CORP")


def test_domain_in_username() -> None:
    creds = smb_credentials({"username": "CORP\\bob", "password": "p"}, which="s")
    assert (creds.domain, creds.username) == ("CORP", "bob")
    with pytest.raises(InvalidArgument, match="contradicts"):
        smb_credentials({"username": "A\\bob", "password": "p", "domain": "B"}, which="s")


def test_password_never_in_repr_or_str() -> None:
    creds = smb_credentials({"username": "bob", "password": "hunter2-secret"}, which="s")
    assert "hunter2" not in repr(creds)
    assert "hunter2" not in str(creds)


@pytest.mark.parametrize(
    "secrets",
    [
        {},
        {"username": "u"},
        {"password": "s3cr3t-value"},
        {"username": " ", "password": "s3cr3t-value"},
    ],
)
def test_missing_keys(secrets: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument, match="missing") as info:
        smb_credentials(secrets, which="provisioner secret")
    assert "provisioner secret" in info.value.message
    assert "s3cr3t-value" not in str(info.value)
