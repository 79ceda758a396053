"""The controller's SMB connection with a Kerberos logon, against a fake
smbclient that records what it was asked (no server, no KDC): the session is
registered with pyspnego's credential object and no password, and a session
the server ended because its ticket expired is logged on again once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from smbprotocol.exceptions import SMBOSError

from controller.smb import connection as connection_module
from controller.smb.connection import Connection, CredentialKey, SmbSettings
from controller.smb.errors import Status
from controller.smb.kerberos import KerberosLogon
from controller.smb.steps import Step

KEY = CredentialKey("fs1.corp.example", 445, None, "svc@CORP.EXAMPLE", "krb5:x")
SHARE = r"\\fs1.corp.example\share"


@dataclass
class FakeSmbClient:
    sessions: list[dict[str, Any]] = field(default_factory=list)
    stats: int = 0

    def register_session(self, server: str, **kw: Any) -> None:
        self.sessions.append({"server": server, **kw})

    def stat(self, path: str, **kw: Any) -> None:
        self.stats += 1


@dataclass
class Credential:
    """Stands in for spnego.KerberosKeytab (compared by value, like it)."""

    principal: str


@pytest.fixture
def smb(monkeypatch: pytest.MonkeyPatch) -> FakeSmbClient:
    fake = FakeSmbClient()
    monkeypatch.setattr(connection_module, "smbclient", fake)
    monkeypatch.setattr(KerberosLogon, "credential", lambda self: Credential(self.principal))
    monkeypatch.setattr(KerberosLogon, "forget", lambda self: None)
    return fake


def connection() -> Connection:
    logon = KerberosLogon("svc@CORP.EXAMPLE", "CORP.EXAMPLE", keytab=b"\x05\x02secret")
    return Connection(KEY, "", SmbSettings(), logon)


def test_kerberos_session_has_the_credential_and_no_password(smb: FakeSmbClient) -> None:
    seen: list[dict[str, Any]] = []
    conn = connection()
    conn.call(SHARE, Step("probe", lambda **kw: seen.append(kw)), (), retry=True)
    (session,) = smb.sessions
    assert session["username"] == Credential("svc@CORP.EXAMPLE")
    assert session["password"] is None
    assert session["auth_protocol"] == "kerberos"
    assert seen[0]["password"] is None
    assert seen[0]["auth_protocol"] == "kerberos"


def test_expired_session_logs_on_again_once(smb: FakeSmbClient) -> None:
    calls: list[int] = []

    def rename(**kw: Any) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise SMBOSError(Status.NETWORK_SESSION_EXPIRED, SHARE + r"\a")
        return "done"

    # not idempotent (retry=False), yet repeated: the server refused it unseen
    assert connection().call(SHARE, Step("rename", rename), (), retry=False) == "done"
    assert len(calls) == 2
    assert len(smb.sessions) == 2  # a new logon: fresh tickets


def test_other_errors_are_not_retried(smb: FakeSmbClient) -> None:
    def denied(**kw: Any) -> None:
        raise SMBOSError(Status.ACCESS_DENIED, SHARE + r"\a")

    with pytest.raises(SMBOSError):
        connection().call(SHARE, Step("mkdir", denied), (), retry=True)
    assert len(smb.sessions) == 1
