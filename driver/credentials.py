"""SMB credentials from a CSI ``secrets`` map, safe to pass around.

``repr``/``str`` never show the password, keytab or credential cache, so a
credentials object that ends up in a log line or an exception text gives
nothing away.

Two kinds: a password (:class:`Credentials`), or Kerberos
(:class:`KerberosCredentials`: a keytab the driver gets its own tickets from,
or a ready credential cache) for Active Directory file servers that refuse
NTLM.  :func:`smb_auth` reads either; :func:`smb_credentials` only passwords.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from driver.ccache import parse_ccache
from driver.errors import InvalidArgument

_KNOWN = ("username", "password", "domain", "keytab", "krb5ccache", "realm", "kdc")
# csi-driver-smb's key: the cache of the user with that uid (base64).
_UPSTREAM_CCACHE = re.compile(r"krb5cc_\d+")
_REALM = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_]{0,254}")
# host, IPv4, or [IPv6], with an optional port: written into a krb5.conf.
_KDC = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9.\-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?")
# A keytab file starts with 0x05 then its version (1 or 2).
_KEYTAB_MAGIC = (b"\x05\x01", b"\x05\x02")


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    domain: str = ""

    def __str__(self) -> str:
        return f"{self.domain}\\{self.username}" if self.domain else self.username


@dataclass(frozen=True, slots=True)
class KerberosCredentials:
    """A Kerberos identity: ``user@REALM`` with a keytab or a credential cache.

    ``kdcs``: ``host[:port]`` of the realm's KDCs when given in the secret
    (labs without DNS SRV records); empty means DNS or the node's krb5.conf.
    """

    user: str
    realm: str
    kdcs: tuple[str, ...] = ()
    keytab: bytes | None = field(default=None, repr=False)
    ccache: bytes | None = field(default=None, repr=False)

    @property
    def principal(self) -> str:
        return f"{self.user}@{self.realm}"

    @property
    def source(self) -> str:
        """What the tickets come from (for logs): ``keytab`` or ``ccache``."""
        return "keytab" if self.keytab is not None else "ccache"

    def __str__(self) -> str:
        return f"{self.principal} ({self.source})"


SmbAuth = Credentials | KerberosCredentials


def _b64(value: str, *, which: str, key: str) -> bytes:
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{which}: {key} is not valid base64") from None
    if not data:
        raise InvalidArgument(f"{which}: {key} is empty")
    return data


def _kdcs(value: str, *, which: str) -> tuple[str, ...]:
    out = tuple(k.strip() for k in value.split(",") if k.strip())
    bad = [k for k in out if not _KDC.fullmatch(k)]
    if bad:
        raise InvalidArgument(f"{which}: kdc must be host[:port] entries separated by commas")
    return out


def _ccache_key(lowered: Mapping[str, str], *, which: str) -> tuple[str, str] | None:
    found = [k for k in lowered if k == "krb5ccache" or _UPSTREAM_CCACHE.fullmatch(k)]
    if len(found) > 1:
        raise InvalidArgument(f"{which}: more than one credential cache key ({', '.join(found)})")
    return (found[0], lowered[found[0]]) if found else None


def _kerberos(lowered: Mapping[str, str], *, which: str) -> KerberosCredentials:
    username = lowered.get("username", "").strip()
    domain = lowered.get("domain", "").strip()
    realm = lowered.get("realm", "").strip()
    cc = _ccache_key(lowered, which=which)
    if lowered.get("keytab") and cc is not None:
        raise InvalidArgument(f"{which}: give either keytab or a credential cache, not both")
    if "\\" in username:
        domain, _, username = username.partition("\\")
    elif "@" in username:
        username, _, at_realm = username.rpartition("@")
        if realm and realm.upper() != at_realm.upper():
            raise InvalidArgument(f"{which}: the realm in username contradicts the realm key")
        realm = at_realm
    keytab = ccache = None
    if cc is None:
        keytab = _b64(lowered["keytab"], which=which, key="keytab")
        if keytab[:2] not in _KEYTAB_MAGIC:
            raise InvalidArgument(f"{which}: keytab is not a Kerberos keytab file")
        if not username:
            raise InvalidArgument(f"{which}: a keytab needs username (user or user@REALM)")
    else:
        ccache = _b64(cc[1], which=which, key=cc[0])
        cache = parse_ccache(ccache)
        if cache.tgt() is None:
            raise InvalidArgument(
                f"{which}: {cc[0]} holds no ticket-granting ticket (kinit makes one)"
            )
        owner = cache.principal
        cached_user = "/".join(owner.components)
        if username and username.lower() != cached_user.lower():
            raise InvalidArgument(f"{which}: username does not match the credential cache's owner")
        if realm and realm.upper() != owner.realm.upper():
            raise InvalidArgument(f"{which}: realm does not match the credential cache's realm")
        username, realm = username or cached_user, realm or owner.realm
    realm = (realm or domain).upper()
    if not realm:
        raise InvalidArgument(
            f"{which}: Kerberos needs the realm: a realm key, or username as user@REALM"
        )
    if not _REALM.fullmatch(realm):
        raise InvalidArgument(f"{which}: realm is not a valid Kerberos realm name")
    if not username or any(ord(c) < 0x21 or c in "@\\/,\x7f" for c in username):
        raise InvalidArgument(f"{which}: username is not a valid Kerberos user name")
    return KerberosCredentials(
        user=username,
        realm=realm,
        kdcs=_kdcs(lowered.get("kdc", ""), which=which),
        keytab=keytab,
        ccache=ccache,
    )


def is_kerberos_secret(secrets: Mapping[str, str]) -> bool:
    lowered = {k.lower() for k in secrets}
    return "keytab" in lowered or any(
        k == "krb5ccache" or _UPSTREAM_CCACHE.fullmatch(k) for k in lowered
    )


def smb_auth(secrets: Mapping[str, str], *, which: str) -> SmbAuth:
    """Password credentials, or Kerberos when the secret carries ``keytab``,
    ``krb5ccache`` or ``krb5cc_<uid>`` (then a ``password`` is refused: one
    secret, one way to log on)."""
    lowered = {k.lower(): v for k, v in secrets.items()}
    if not is_kerberos_secret(lowered):
        return smb_credentials(secrets, which=which)
    if lowered.get("password"):
        raise InvalidArgument(f"{which}: give either a password or Kerberos keys, not both")
    return _kerberos(lowered, which=which)


def smb_credentials(secrets: Mapping[str, str], *, which: str) -> Credentials:
    """Read ``username``/``password``/``domain`` (case-insensitive keys).

    ``which`` names the secret for the error text, e.g. "provisioner secret".
    ``DOMAIN\\user`` and ``user@domain`` user names are split into the parts.
    """
    lowered = {k.lower(): v for k, v in secrets.items()}
    username = lowered.get("username", "").strip()
    password = lowered.get("password", "")
    domain = lowered.get("domain", "").strip()
    missing = [k for k, v in (("username", username), ("password", password)) if not v]
    if missing:
        raise InvalidArgument(
            f"{which}: key(s) {', '.join(missing)} missing; SMB needs username and password "
            "(optional domain)"
        )
    if "\\" in username:
        dom, _, user = username.partition("\\")
        if domain and domain.lower() != dom.lower():
            raise InvalidArgument(f"{which}: domain in username contradicts the domain key")
        domain, username = dom, user
    if not username or any(ord(c) < 0x20 for c in username + domain):
        raise InvalidArgument(f"{which}: username or domain is not valid")
    return Credentials(username=username, password=password, domain=domain)


def unknown_secret_keys(secrets: Mapping[str, str]) -> list[str]:
    return sorted(
        k for k in secrets if k.lower() not in _KNOWN and not _UPSTREAM_CCACHE.fullmatch(k.lower())
    )
