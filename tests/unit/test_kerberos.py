"""Kerberos pieces without a KDC: the credential cache reader, the secret
keys, the cifs options, and the node's ticket keeper against a fake kinit.

The real KDC (Samba AD DC) and kernel mounts: tests/e2e/test_kerberos_e2e.py.
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driver.ccache import parse_ccache
from driver.credentials import Credentials, KerberosCredentials, smb_auth, unknown_secret_keys
from driver.errors import (
    DriverError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
)
from driver.kerberos_reasons import KERBEROS_REASONS
from driver.source import Source
from node.linux.errors import kdc_error
from node.linux.kerberos import TicketKeeper
from node.linux.krb5files import krb5_conf
from node.linux.options import smb_options
from node.platform import StageRequest
from tests.fakes.kdc import UNKNOWN_TEXT, FakeKdc, make_ccache


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


KEYTAB = b"\x05\x02" + b"\0" * 40
TGT = "krbtgt/CORP.EXAMPLE@CORP.EXAMPLE"


# ---------------------------------------------------------------- ccache


@pytest.mark.parametrize("version", [3, 4])
def test_ccache_reader_finds_owner_and_tgt(version: int) -> None:
    data = make_ccache(
        "alice@CORP.EXAMPLE",
        [("cifs/fs1.corp.example@CORP.EXAMPLE", 100, 500, 0), (TGT, 100, 1000, 5000)],
        version=version,
    )
    cache = parse_ccache(data)
    assert str(cache.principal) == "alice@CORP.EXAMPLE"
    tgt = cache.tgt()
    assert tgt is not None
    assert (tgt.start, tgt.end, tgt.renew_till) == (100, 1000, 5000)


def test_ccache_config_entries_are_not_tickets() -> None:
    data = make_ccache("a@R", [("krb5_ccache_conf_data/pa_type@X-CACHECONF:", 0, 0, 0)])
    assert parse_ccache(data).tickets == ()


@pytest.mark.parametrize("data", [b"", b"\x05\x04", b"\x05\x01rest", b"garbage!"])
def test_ccache_reader_refuses_non_caches(data: bytes) -> None:
    with pytest.raises(InvalidArgument, match="credential cache"):
        parse_ccache(data)


@given(st.binary(max_size=300))
def test_ccache_reader_fuzz_raises_only_invalid_argument(data: bytes) -> None:
    with contextlib.suppress(InvalidArgument):
        parse_ccache(b"\x05\x04" + data)


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z]{1,8}/[a-z.]{1,12}@[A-Z.]{1,10}", fullmatch=True),
            st.integers(0, 2**31),
            st.integers(0, 2**31),
            st.integers(0, 2**31),
        ),
        max_size=5,
    )
)
def test_ccache_round_trip(tickets: list[tuple[str, int, int, int]]) -> None:
    cache = parse_ccache(make_ccache("u@R", tickets))
    assert [(str(t.server), t.start, t.end, t.renew_till) for t in cache.tickets] == [
        (s, start or start, end, renew) for s, start, end, renew in tickets
    ]


# ---------------------------------------------------------------- secret keys


def test_keytab_secret_reads_user_at_realm() -> None:
    auth = smb_auth(
        {"username": "svc@corp.example", "keytab": b64(KEYTAB), "kdc": "dc1.corp, 10.0.0.1:88"},
        which="s",
    )
    assert isinstance(auth, KerberosCredentials)
    assert (auth.principal, auth.kdcs) == ("svc@CORP.EXAMPLE", ("dc1.corp", "10.0.0.1:88"))
    assert auth.keytab == KEYTAB
    assert b64(KEYTAB) not in repr(auth) + str(auth)


def test_realm_from_key_or_domain() -> None:
    a = smb_auth({"username": "svc", "realm": "corp.example", "keytab": b64(KEYTAB)}, which="s")
    b = smb_auth({"username": "CORP\\svc", "keytab": b64(KEYTAB)}, which="s")
    assert isinstance(a, KerberosCredentials)
    assert isinstance(b, KerberosCredentials)
    assert (a.principal, b.principal) == ("svc@CORP.EXAMPLE", "svc@CORP")


def test_password_secrets_stay_passwords() -> None:
    assert isinstance(smb_auth({"username": "u", "password": "p"}, which="s"), Credentials)


def test_upstream_ccache_key_takes_owner_from_the_cache() -> None:
    data = make_ccache("alice@CORP.EXAMPLE", [(TGT, 1, 2, 0)])
    auth = smb_auth({"krb5cc_1000": b64(data)}, which="s")
    assert isinstance(auth, KerberosCredentials)
    assert (auth.principal, auth.ccache) == ("alice@CORP.EXAMPLE", data)
    assert unknown_secret_keys({"krb5cc_1000": "x", "keytab": "y", "realm": "r", "kdc": "k"}) == []


@pytest.mark.parametrize(
    ("secrets", "match"),
    [
        ({"username": "u@R", "password": "p", "keytab": b64(KEYTAB)}, "not both"),
        ({"username": "u@R", "keytab": "%%%"}, "base64"),
        ({"username": "u@R", "keytab": b64(b"not a keytab")}, "not a Kerberos keytab"),
        ({"keytab": b64(KEYTAB), "realm": "R"}, "needs username"),
        ({"username": "u", "keytab": b64(KEYTAB)}, "needs the realm"),
        ({"username": "u@A", "realm": "B", "keytab": b64(KEYTAB)}, "contradicts"),
        ({"username": "u@R", "keytab": b64(KEYTAB), "kdc": "a\n[realms]"}, "kdc"),
        ({"username": "u@R", "keytab": b64(KEYTAB), "kdc": "a}b"}, "kdc"),
        ({"username": "u", "realm": "R\nX", "keytab": b64(KEYTAB)}, "realm"),
        ({"username": "u@R", "keytab": b64(KEYTAB), "krb5ccache": "eA=="}, "not both"),
        ({"krb5ccache": b64(make_ccache("a@R", []))}, "no ticket-granting"),
        ({"krb5ccache": b64(make_ccache("a@R", [(TGT, 1, 2, 0)])), "username": "b"}, "owner"),
        ({"krb5ccache": "eA==", "krb5cc_0": "eA=="}, "more than one"),
    ],
)
def test_bad_kerberos_secrets(secrets: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as info:
        smb_auth(secrets, which="node-stage secret")
    assert b64(KEYTAB) not in info.value.message


def test_krb5_conf_holds_realm_and_kdcs() -> None:
    creds = KerberosCredentials("u", "CORP.EXAMPLE", ("dc1:88", "[fd00::1]"))
    text = krb5_conf(creds)
    assert "default_realm = CORP.EXAMPLE" in text
    assert "kdc = dc1:88" in text
    assert "kdc = [fd00::1]" in text
    assert "dns_lookup_kdc" not in krb5_conf(KerberosCredentials("u", "R"))


# ---------------------------------------------------------------- cifs options


def stage_request(*flags: str) -> StageRequest:
    return StageRequest(
        volume_id="v",
        source=Source("smb", "fs1.corp.example", None, "share"),
        subdir="d",
        staging_path="/k/s",
        mount_options=flags,
        kerberos=KerberosCredentials("u", "R", keytab=KEYTAB),
    )


def test_kerberos_mounts_default_to_sec_krb5() -> None:
    assert "sec=krb5" in smb_options(stage_request())
    opts = smb_options(stage_request("sec=krb5i"))
    assert "sec=krb5i" in opts
    assert "sec=krb5" not in opts


@pytest.mark.parametrize(("flag", "match"), [("sec=ntlmssp", "contradicts"), ("cruid=0", "cruid")])
def test_kerberos_mounts_refuse_conflicting_options(flag: str, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        smb_options(stage_request(flag))


# ---------------------------------------------------------------- kdc errors


@pytest.mark.parametrize(
    ("stderr", "kind", "said"),
    [
        (
            "kinit: Preauthentication failed while getting initial credentials",
            Unauthenticated,
            "Preauthentication failed",
        ),
        ("kinit: Client not found in Kerberos database", Unauthenticated, "Client not found"),
        (
            "kinit: Cannot contact any KDC for realm 'R' while getting",
            Unavailable,
            "Cannot contact",
        ),
        (
            "kvno: Server not found in Kerberos database while getting",
            FailedPrecondition,
            "Server not found",
        ),
        (UNKNOWN_TEXT, Internal, "a reason the driver does not know"),
    ],
)
def test_kdc_errors_name_the_reason_in_our_words(
    stderr: str, kind: type[DriverError], said: str
) -> None:
    err = kdc_error("kinit", 1, stderr, "u@R")
    assert isinstance(err, kind)
    assert said in err.message
    assert stderr not in err.message  # the tool's own text is never quoted
    assert "while getting" not in err.message


# Our own words: a random text that happens to be part of them proves nothing.
OURS = " ".join(r.said for r in KERBEROS_REASONS) + str(kdc_error("kinit", 1, "", "u@R"))


@given(st.text(min_size=8).filter(lambda s: s.strip() == s and s not in OURS))
def test_kdc_tool_text_never_reaches_the_message(text: str) -> None:
    for output in (
        text,
        f"kinit: Preauthentication failed {text}",
        f"{text} cannot contact any KDC",
    ):
        err = kdc_error("kinit", 1, output, "u@R")
        assert text not in err.message


# ---------------------------------------------------------------- ticket keeper


@pytest.fixture
def clock() -> list[float]:
    return [10_000.0]


def keeper(tmp_path: Path, kdc: FakeKdc) -> TicketKeeper:
    return TicketKeeper(kdc, str(tmp_path / "krb5"), uid=os.geteuid(), clock=lambda: kdc.clock[0])


async def test_keytab_tickets_files_and_renewal(tmp_path: Path, clock: list[float]) -> None:
    kdc = FakeKdc(clock)
    k = keeper(tmp_path, kdc)
    creds = KerberosCredentials("u", "R", ("dc1",), keytab=KEYTAB)
    env = await k.acquire("key1", creds, "fs1.corp.example")
    cache = tmp_path / "krb5" / "cc" / "key1"
    assert env == {"KRB5CCNAME": f"FILE:{cache}"}
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "krb5" / "cc").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "krb5").stat().st_mode) == 0o711
    keytab = tmp_path / "krb5" / "kt" / "key1.keytab"
    assert keytab.read_bytes() == KEYTAB
    assert stat.S_IMODE(keytab.stat().st_mode) == 0o600
    assert kdc.tools() == ["kinit", "kvno"]
    assert kdc.calls[1][0][-1] == "cifs/fs1.corp.example@"
    for argv, call_env in kdc.calls:
        assert str(keytab) in argv or argv[0] == "kvno"
        assert call_env is not None
        assert set(call_env) == {"KRB5_CONFIG"}  # no KRB5CCNAME outside the mount
    assert k.due("key1") == clock[0] + 500  # halfway to the end

    clock[0] += 499
    await k.refresh_due()
    assert len(kdc.calls) == 2  # not yet
    clock[0] += 1
    await k.refresh_due()
    assert [a[0] for a, _ in kdc.calls[2:]] == ["kinit", "kvno"]
    assert parse_ccache(cache.read_bytes()).tgt().end == int(clock[0]) + 1000  # type: ignore[union-attr]
    assert [p.name for p in cache.parent.iterdir()] == ["key1"]  # no temp files left

    await k.release("key1")
    assert list((tmp_path / "krb5" / "cc").iterdir()) == []
    assert list((tmp_path / "krb5" / "kt").iterdir()) == []
    await k.aclose()


async def test_failed_refresh_retries_before_expiry(tmp_path: Path, clock: list[float]) -> None:
    kdc = FakeKdc(clock)
    k = keeper(tmp_path, kdc)
    await k.acquire("k", KerberosCredentials("u", "R", keytab=KEYTAB), "fs1")
    clock[0] += 500
    kdc.refuse = "kinit: Cannot contact any KDC for realm 'R'"
    await k.refresh_due()
    assert k.due("k") == clock[0] + 30  # RETRY_DELAY, well before the end at +500
    assert (tmp_path / "krb5" / "cc" / "k").exists()  # the old cache stays
    await k.aclose()


async def test_refused_keytab_leaves_nothing(tmp_path: Path, clock: list[float]) -> None:
    kdc = FakeKdc(clock, refuse="kinit: Preauthentication failed while getting initial credentials")
    k = keeper(tmp_path, kdc)
    with pytest.raises(Unauthenticated, match="Preauthentication failed") as info:
        await k.acquire("k", KerberosCredentials("u", "R", keytab=KEYTAB), "fs1")
    assert "while getting" not in info.value.message
    assert list((tmp_path / "krb5" / "kt").iterdir()) == []
    assert list((tmp_path / "krb5" / "cc").iterdir()) == []
    assert k.due("k") is None
    await k.aclose()  # the renewal task a refused acquire started


async def test_given_cache_is_checked_and_not_renewable_waits(
    tmp_path: Path, clock: list[float]
) -> None:
    kdc = FakeKdc(clock)
    k = keeper(tmp_path, kdc)
    now = int(clock[0])
    expired = make_ccache("u@R", [("krbtgt/R@R", now - 100, now - 1, 0)])
    with pytest.raises(Unauthenticated, match="no valid"):
        await k.acquire("k", KerberosCredentials("u", "R", ccache=expired), "fs1")
    fresh = make_ccache("u@R", [("krbtgt/R@R", now, now + 600, 0)])
    await k.acquire("k", KerberosCredentials("u", "R", ccache=fresh), "fs1")
    assert [a[0] for a, _ in kdc.calls] == ["kvno"]  # no kinit: nothing to get tickets from
    assert k.due("k") == now + 600  # not renewable: only a warning when it ends
    clock[0] += 600
    await k.refresh_due()
    assert k.due("k") == float("inf")
    await k.aclose()


async def test_ip_address_servers_are_refused(tmp_path: Path, clock: list[float]) -> None:
    k = keeper(tmp_path, FakeKdc(clock))
    with pytest.raises(InvalidArgument, match="host name"):
        await k.acquire("k", KerberosCredentials("u", "R", keytab=KEYTAB), "10.0.0.5")


async def test_restarted_keeper_resumes(tmp_path: Path, clock: list[float]) -> None:
    kdc = FakeKdc(clock)
    first = keeper(tmp_path, kdc)
    await first.acquire("k", KerberosCredentials("u", "R", keytab=KEYTAB), "fs1")
    await first.aclose()
    second = keeper(tmp_path, kdc)
    await second.resume()
    assert second.due("k") == 0.0  # refreshed at once
    await second.refresh_due()
    assert second.due("k") == clock[0] + 500
    await second.aclose()
