"""Kerberos logons for the controller's SMB sessions (keytab or credential cache).

smbprotocol authenticates through pyspnego, which speaks Kerberos when the
``gssapi`` and ``krb5`` packages are installed (extra ``kerberos``).  pyspnego
takes a credential object per session:

* a keytab: ``spnego.KerberosKeytab`` makes pyspnego run the AS exchange
  itself into a new in-memory credential cache for every SMB session, so a
  session opened after the old one expired (or was logged off) always starts
  from fresh tickets, and no cache is shared between identities or sessions;
* a credential cache: ``spnego.KerberosCCache`` on a private copy of it
  (service tickets are added to that copy; it cannot outlive the cache's own
  end time).

The keytab or cache copy lives in a 0700 directory private to this process
(on ``/dev/shm`` when there is one), 0600, named by a hash of its content.
The realms' KDCs from the secrets go into one krb5.conf in that directory;
``KRB5_CONFIG`` (a path, no secret) points the Kerberos library at it before
``/etc/krb5.conf``.  Nothing about any identity is in the environment.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

from driver.credentials import KerberosCredentials
from driver.errors import FailedPrecondition

_NODE_KRB5_CONF = "/etc/krb5.conf"
_lock = threading.Lock()
_dir: str | None = None
_realms: dict[str, tuple[str, ...]] = {}
_lifetime: list[str | None] = [None]


@dataclass(frozen=True, slots=True)
class KerberosLogon:
    """What a channel needs to log on with Kerberos; picklable (it crosses to
    the SMB worker process like a password does), never printed."""

    principal: str
    realm: str
    kdcs: tuple[str, ...] = ()
    keytab: bytes | None = field(default=None, repr=False)
    ccache: bytes | None = field(default=None, repr=False)
    lifetime: str | None = None  # krb5.conf ticket_lifetime (tests: short tickets)

    @classmethod
    def from_credentials(
        cls, creds: KerberosCredentials, *, lifetime: str | None = None
    ) -> KerberosLogon:
        return cls(creds.principal, creds.realm, creds.kdcs, creds.keytab, creds.ccache, lifetime)

    @property
    def material(self) -> bytes:
        return self.keytab if self.keytab is not None else (self.ccache or b"")

    def secret_texts(self) -> list[str]:
        """The forms of the secret an error text could carry (for scrubbing)."""
        return [base64.b64encode(self.material).decode()]

    def credential(self) -> Any:
        """pyspnego's credential for this logon (blocking; SMB threads only)."""
        try:
            import spnego
            import spnego.exceptions
        except ImportError as exc:  # pragma: no cover - dependency missing
            raise FailedPrecondition(f"Kerberos needs pyspnego: {exc}") from None
        if not _kerberos_available():
            raise FailedPrecondition(
                "Kerberos is not available in this controller: install the 'kerberos' extra "
                "(python packages gssapi and krb5, built against libkrb5)"
            )
        directory = _private_dir()
        _add_realm(self.realm, self.kdcs, self.lifetime)
        name = hashlib.sha256(self.material).hexdigest()[:24]
        if self.keytab is not None:
            path = os.path.join(directory, f"{name}.keytab")
            _write_private(path, self.keytab)
            return spnego.KerberosKeytab(keytab=f"FILE:{path}", principal=self.principal)
        path = os.path.join(directory, f"{name}.ccache")
        _write_private(path, self.material)
        return spnego.KerberosCCache(ccache=f"FILE:{path}", principal=self.principal)

    def forget(self) -> None:
        """Remove this logon's file (the channel closed)."""
        if _dir is None:
            return
        name = hashlib.sha256(self.material).hexdigest()[:24]
        for suffix in (".keytab", ".ccache"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(_dir, name + suffix))


def _kerberos_available() -> bool:
    try:
        import gssapi  # noqa: F401
        import krb5  # noqa: F401
    except ImportError:
        return False
    return True


def _private_dir() -> str:
    global _dir  # noqa: PLW0603 - one private directory per process
    with _lock:
        if _dir is None:
            base = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - tmpfs, 0700 below
            _dir = tempfile.mkdtemp(prefix="csi-smb-krb5-", dir=base)
            atexit.register(shutil.rmtree, _dir, True)
        return _dir


def _write_private(path: str, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _add_realm(realm: str, kdcs: tuple[str, ...], lifetime: str | None) -> None:
    """Keep this process's krb5.conf listing every realm seen with its KDCs."""
    with _lock:
        if _realms.get(realm) == kdcs and (lifetime is None or _lifetime[0] == lifetime):
            return
        _realms[realm] = kdcs
        if lifetime is not None:
            _lifetime[0] = lifetime
        assert _dir is not None  # noqa: S101 - _private_dir ran first
        lines = ["[libdefaults]", "    dns_canonicalize_hostname = false", "    rdns = false"]
        if _lifetime[0]:
            lines.append(f"    ticket_lifetime = {_lifetime[0]}")
        lines.append("[realms]")
        for name, servers in sorted(_realms.items()):
            lines.append(f"    {name} = {{")
            lines += [f"        kdc = {kdc}" for kdc in servers]
            lines.append("    }")
        conf = os.path.join(_dir, "krb5.conf")
        tmp = conf + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, conf)
        os.environ["KRB5_CONFIG"] = f"{conf}:{_NODE_KRB5_CONF}"
