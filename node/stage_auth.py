"""How a volume authenticates, from the node-stage (or inline volume's
NodePublish) secret: pure.

* SMB: a password, or Kerberos keys (``keytab``, ``krb5ccache``,
  ``krb5cc_<uid>``; ``driver.credentials``);
* NFS: nothing, unless the mount options ask for ``sec=krb5``, ``krb5i`` or
  ``krb5p`` and the secret carries Kerberos keys: then the node feeds its
  rpc.gssd with them (``node/linux/krb5mounts.py``).  Kerberos keys on a
  plain NFS volume without such a ``sec=`` are a mistake and refused; on a
  dual-protocol volume they are the SMB side's (Windows nodes) and ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from driver.credentials import KerberosCredentials, is_kerberos_secret, smb_auth
from driver.errors import InvalidArgument
from node.platform import StageRequest

NFS_KERBEROS = ("krb5", "krb5i", "krb5p")


def nfs_kerberos(options: Sequence[str]) -> bool:
    """Whether NFS mount options ask for a Kerberos flavour (``sec=`` takes a
    colon-separated list)."""
    for opt in options:
        key, _, value = opt.partition("=")
        if key.strip().lower() == "sec":
            return any(f.strip().lower() in NFS_KERBEROS for f in value.split(":"))
    return False


def with_auth(
    stage: StageRequest, secrets: Mapping[str, str], *, which: str, dual: bool = False
) -> StageRequest:
    """``stage`` with the credentials ``secrets`` carry for it."""
    if stage.source.protocol == "smb":
        auth = smb_auth(secrets, which=which)
        if isinstance(auth, KerberosCredentials):
            return dataclasses.replace(stage, kerberos=auth)
        return dataclasses.replace(stage, credentials=auth)
    if not is_kerberos_secret(secrets):
        return stage
    if not nfs_kerberos(stage.mount_options):
        if dual:
            return stage  # the SMB side's keys
        raise InvalidArgument(
            f"{which}: Kerberos keys for an NFS volume need the mount option sec=krb5, "
            "sec=krb5i or sec=krb5p"
        )
    kerberos = smb_auth(secrets, which=which)
    if not isinstance(kerberos, KerberosCredentials):  # pragma: no cover - keys checked above
        raise InvalidArgument(f"{which}: no Kerberos keys")
    return dataclasses.replace(stage, kerberos=kerberos)
