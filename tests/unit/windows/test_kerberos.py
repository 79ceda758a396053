"""Windows nodes and Kerberos secrets (docs/kerberos.md, "Windows nodes").

PowerShell's New-SmbGlobalMapping takes a password credential only; a
domain-joined node negotiates Kerberos with it. A keytab or credential cache
in the node-stage secret is refused before anything runs on the host.
"""

from __future__ import annotations

import dataclasses

import pytest

from driver.credentials import Credentials, KerberosCredentials
from driver.errors import InvalidArgument
from node.windows import WindowsPlatform
from tests.unit.windows.fake import FakeWindows, stage_request


async def test_a_keytab_secret_is_refused_with_what_works(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    request = dataclasses.replace(
        stage_request(platform, node, credentials=None),
        kerberos=KerberosCredentials("svc", "CORP.EXAMPLE", keytab=b"\x05\x02"),
    )
    with pytest.raises(InvalidArgument, match="keytab") as info:
        await platform.stage(request)
    assert "DOMAIN\\user" in info.value.message
    assert node.calls == []
    assert node.mappings == {}


async def test_a_domain_account_password_maps_as_domain_user(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    """The Kerberos path on a domain-joined node: DOMAIN\\user + password go to
    New-SmbGlobalMapping unchanged (Windows picks Kerberos itself)."""
    creds = Credentials("svc", "domain-pw-123", "CORP")
    node.accounts["corp\\svc"] = "domain-pw-123"
    await platform.stage(stage_request(platform, node, credentials=creds))
    (mapping,) = node.mappings.values()
    assert mapping.user == "CORP\\svc"
