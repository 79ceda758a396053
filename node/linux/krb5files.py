"""The Linux node's Kerberos files: where they live and how they are written.

Everything sits on a tmpfs (``/run``: tickets and keytabs never touch a disk)
below one directory ``<dir>`` (``KRB5_DIR``), 0711 root: the cifs.upcall
user may pass through, nobody may list it.

* ``<dir>/cc/<key>``: a cifs volume's credential cache, owned by the
  dedicated non-root ``cruid``; ``cc/`` is 0700 and belongs to that uid;
* ``<dir>/nfs/krb5cc_0``: root's credential cache for NFS ``sec=krb5*``
  mounts, where the node's rpc.gssd looks for it (``-d <dir>/nfs -n``);
  ``nfs/`` is 0700 root;
* ``<dir>/kt/``: 0700 root: per identity the secret's keytab, a krb5.conf
  fragment with the secret's realm and KDCs, and a small JSON file (no
  secret in it) that lets a restarted driver resume renewing.

Every file is written 0600 through a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import sys

from driver.credentials import KerberosCredentials
from driver.errors import Internal, InvalidArgument

# On tmpfs, and not below the credentials-file dir (/run/csi-smb-nfs is 0700
# root): the cruid must be able to reach cc/.
KRB5_DIR = "/run/csi-smb-nfs-krb5"
NODE_KRB5_CONF = "/etc/krb5.conf"


if sys.platform == "win32":  # type-checked only: this module runs on Linux

    def passwd_entry(uid: int) -> bool:
        return False

    def chown(path: str, uid: int) -> None:
        raise Internal("chown is Linux only")

    def euid() -> int:
        return 0

else:
    import pwd

    def passwd_entry(uid: int) -> bool:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return False
        return True

    def chown(path: str, uid: int) -> None:
        os.chown(path, uid, -1)

    def euid() -> int:
        return os.geteuid()


def read_small(path: str) -> bytes:
    """Small files on a tmpfs: reading them does not block the loop."""
    with open(path, "rb") as f:
        return f.read()


def volume_key(path: str) -> str:
    """The name of a staging's (or inline target's) Kerberos files."""
    return hashlib.sha256(path.encode()).hexdigest()[:24]


def krb5_conf(creds: KerberosCredentials) -> str:
    """The per-identity krb5.conf fragment (realm and KDCs are validated by
    ``driver.credentials``, so nothing here can break out of its line)."""
    lines = ["[libdefaults]", f"    default_realm = {creds.realm}"]
    if creds.kdcs:
        lines += ["    dns_lookup_kdc = false", "[realms]", f"    {creds.realm} = {{"]
        lines += [f"        kdc = {kdc}" for kdc in creds.kdcs]
        lines += ["    }"]
    return "\n".join(lines) + "\n"


def check_server(server: str) -> None:
    """Service tickets are issued for ``<service>/<host name>``: an address
    cannot get one (and reverse DNS is not trusted)."""
    if not server or server.replace(".", "").isdigit() or ":" in server:
        raise InvalidArgument(
            "Kerberos needs the file server's host name in source (tickets are issued for "
            f"<service>/<host name>), not the address {server!r}"
        )


def prepare_dirs(directory: str, owners: dict[str, int]) -> None:
    """``directory`` 0711 and its subdirectories (name -> owner uid) 0700."""
    try:
        os.makedirs(directory, mode=0o711, exist_ok=True)
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != euid():
            raise Internal(f"{directory} is not a directory owned by the driver")
        if stat.S_IMODE(st.st_mode) != 0o711:
            os.chmod(directory, 0o711)  # noqa: S103 - traversable, not listable: cc/ is 0700
        for name, owner in owners.items():
            path = os.path.join(directory, name)
            os.makedirs(path, mode=0o700, exist_ok=True)
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise Internal(f"{path} is not a directory")
            if st.st_uid != owner:
                chown(path, owner)
            if stat.S_IMODE(st.st_mode) != 0o700:
                os.chmod(path, 0o700)
    except OSError as exc:
        raise Internal(f"Kerberos: cannot prepare {directory}: {exc.strerror}") from None


def write_private(path: str, data: bytes, *, owner: int | None = None) -> None:
    """Write ``data`` 0600 (owned by ``owner``) through a temporary name."""
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            if owner is not None:
                chown(tmp, owner)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise Internal(f"Kerberos: cannot write {path}: {exc.strerror}") from None


def remove(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
