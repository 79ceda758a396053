"""Known Kerberos failure reasons, in the driver's own words.

The Kerberos tools and libraries (MIT ``kinit``/``kvno`` on the node, krb5 and
GSSAPI under pyspnego in the controller) say why a logon failed in free text
that may quote anything: principal names, paths, once in a while a fragment of
what they were given.  That text never reaches a gRPC message or a log line.
Instead the text is matched against this table (lower-cased fragments, first
match wins) and the driver says the reason in its own words, with the failure
(and so the gRPC code) it stands for.  A text the table does not know gives
None: callers say "no reason the driver knows".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from driver.failures import Failure


@dataclass(frozen=True, slots=True)
class KerberosReason:
    heard: str  # a lower-case fragment of the library's text
    said: str  # what the driver says instead
    failure: Failure

    @property
    def unreachable(self) -> bool:
        return self.failure is Failure.UNREACHABLE


_R = KerberosReason
#: The reasons the driver knows, most specific first.
KERBEROS_REASONS: Final[tuple[KerberosReason, ...]] = (
    _R("cannot contact any kdc", "Cannot contact any KDC for the realm", Failure.UNREACHABLE),
    _R("unable to reach any kdc", "Cannot contact any KDC for the realm", Failure.UNREACHABLE),
    _R(
        "cannot find kdc",
        "Cannot find a KDC for the realm (DNS SRV records or the kdc key)",
        Failure.UNREACHABLE,
    ),
    _R(
        "preauthentication failed",
        "Preauthentication failed (is the keytab or cache current?)",
        Failure.AUTH_FAILED,
    ),
    _R(
        "password incorrect",
        "Password incorrect (the keytab's key is out of date?)",
        Failure.AUTH_FAILED,
    ),
    _R(
        "client not found in kerberos database",
        "Client not found in Kerberos database",
        Failure.AUTH_FAILED,
    ),
    _R(
        "server not found in kerberos database",
        "Server not found in Kerberos database",
        Failure.CONFLICT,
    ),
    _R("clock skew too great", "Clock skew too great", Failure.AUTH_FAILED),
    _R("ticket expired", "Ticket expired", Failure.AUTH_FAILED),
    _R(
        "key table entry not found",
        "Key table entry not found for the principal",
        Failure.AUTH_FAILED,
    ),
    _R("no key table entry", "Key table entry not found for the principal", Failure.AUTH_FAILED),
    _R(
        "keytab contains no suitable keys",
        "The keytab holds no key for the principal the KDC accepts (encryption types?)",
        Failure.AUTH_FAILED,
    ),
    _R(
        "decrypt integrity check failed",
        "Decrypt integrity check failed (a wrong key: is the keytab current?)",
        Failure.AUTH_FAILED,
    ),
    _R(
        "no support for encryption type",
        "KDC has no support for the encryption type",
        Failure.AUTH_FAILED,
    ),
    _R("password has expired", "Password has expired", Failure.AUTH_FAILED),
    _R(
        "revoked",
        "Credentials have been revoked (account disabled or locked out?)",
        Failure.AUTH_FAILED,
    ),
    _R(
        "no credentials cache found",
        "No credential cache found",
        Failure.AUTH_FAILED,
    ),
    _R("gssapi", "GSSAPI logon failed", Failure.AUTH_FAILED),
)


def kerberos_reason(text: str) -> KerberosReason | None:
    """The known reason ``text`` (a library's or tool's message) names, if any."""
    lowered = text.lower()
    for reason in KERBEROS_REASONS:
        if reason.heard in lowered:
            return reason
    return None
