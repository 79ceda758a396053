"""SMB credentials from a CSI ``secrets`` map, safe to pass around.

``repr``/``str`` never show the password, so a credentials object that ends up
in a log line or an exception text gives nothing away.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from driver.errors import InvalidArgument

_KNOWN = ("username", "password", "domain")


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    domain: str = ""

    def __str__(self) -> str:
        return f"{self.domain}\\{self.username}" if self.domain else self.username


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
    return sorted(k for k in secrets if k.lower() not in _KNOWN)
