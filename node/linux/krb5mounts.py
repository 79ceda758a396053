"""Which tickets a Kerberos mount uses: one cache per cifs mount, one NFS
identity per node for rpc.gssd.

cifs (``sec=krb5``/``krb5i``): every staging (or inline target) gets its own
cache, owned by the ``cruid`` and named in the ``mount`` process's
``KRB5CCNAME`` (``node/linux/kerberos.py``).

NFS (``sec=krb5``/``krb5i``/``krb5p`` with Kerberos keys in the secret): the
kernel asks the node's ``rpc.gssd`` for a security context of the *accessing
uid*, and rpc.gssd reads that uid's credential cache from its search
directories.  The driver mounts as root, so the secret's tickets go to
``<dir>/nfs/krb5cc_0`` (0600 root, in a 0700 root directory), for an
rpc.gssd started with ``-n -d <dir>/nfs`` (the chart's ``gssd`` container),
with ``KRB5_CONFIG=<dir>/nfs/krb5.conf:/etc/krb5.conf``: the driver writes
the secret's realm and KDCs there, and no DNS canonicalisation of the server
name (the ticket is for the name in ``source``, as for cifs).

One cache per uid means one identity for every NFS Kerberos volume on the
node: a staging whose secret names another principal while others are
staged is refused (FAILED_PRECONDITION), never silently mixed.  Each NFS
staging leaves a marker (``kt/<key>.nfs``, the principal only) so that a
restarted driver still knows who uses the identity; the last unstage removes
it.  Only root's accesses (and the kernel's own) carry these tickets: a
process of another uid reading the volume needs its own cache in rpc.gssd's
search path (docs/kerberos.md).
"""

from __future__ import annotations

import os

from driver.credentials import KerberosCredentials
from driver.errors import FailedPrecondition
from driver.log import get_logger
from node.linux import krb5files as files
from node.linux.kerberos import TicketKeeper
from node.linux.krb5files import volume_key
from node.linux.options import MountSpec, with_kerberos

log = get_logger("node.kerberos")

NFS_KEY = "nfs-uid0"  # the ticket keeper's key of the NFS identity


def gssd_krb5_conf(creds: KerberosCredentials) -> str:
    """rpc.gssd's configuration in front of the node's /etc/krb5.conf."""
    conf = files.krb5_conf(creds)
    # The ticket is for the name in source: no reverse-DNS rewriting of it.
    return conf.replace(
        "[libdefaults]\n",
        "[libdefaults]\n    rdns = false\n    dns_canonicalize_hostname = false\n",
        1,
    )


def _exists(path: str) -> bool:
    """A file on the node's tmpfs: never blocks the loop for long."""
    return os.path.exists(path)


class KerberosMounts:
    """The tickets of Kerberos mounts, by the path they are mounted at."""

    def __init__(self, keeper: TicketKeeper) -> None:
        self.keeper = keeper
        self._nfs_dir = os.path.join(keeper.directory, "nfs")
        self._kt_dir = os.path.join(keeper.directory, "kt")

    @property
    def nfs_cache(self) -> str:
        return os.path.join(self._nfs_dir, "krb5cc_0")

    def _marker(self, path: str) -> str:
        return os.path.join(self._kt_dir, volume_key(path) + ".nfs")

    def _nfs_users(self) -> dict[str, str]:
        """Marker file -> principal of every NFS Kerberos staging."""
        users: dict[str, str] = {}
        try:
            names = os.listdir(self._kt_dir)
        except OSError:
            return users
        for name in names:
            if name.endswith(".nfs"):
                path = os.path.join(self._kt_dir, name)
                try:
                    users[path] = files.read_small(path).decode("utf-8", "replace")
                except OSError:
                    continue
        return users

    # -- cifs --------------------------------------------------------------

    async def smb(self, path: str, creds: KerberosCredentials, server: str) -> dict[str, str]:
        """Tickets for a cifs mount at ``path``; the mount's environment."""
        return await self.keeper.acquire(volume_key(path), creds, server)

    # -- NFS ---------------------------------------------------------------

    async def nfs(self, path: str, creds: KerberosCredentials, server: str) -> None:
        """Tickets for an NFS mount at ``path`` in rpc.gssd's cache for root."""
        await self.keeper.resume()
        marker = self._marker(path)
        others = {m: p for m, p in self._nfs_users().items() if m != marker}
        held = await self.keeper.principal(NFS_KEY)
        clash = sorted({p for p in others.values() if p != creds.principal})
        if others and held is not None and held != creds.principal:
            clash.append(held)
        if clash:
            raise FailedPrecondition(
                f"Kerberos: NFS volumes on this node already authenticate as "
                f"{clash[0]}, and this volume's secret names {creds.principal}: "
                "rpc.gssd keeps one credential cache per uid and the node mounts as root, so "
                "every NFS sec=krb5 volume on a node must use the same identity (the same "
                "secret); give this volume that secret, or stage it on another node"
            )
        root = files.euid()  # the driver's own uid: root on a node
        files.prepare_dirs(self.keeper.directory, {"kt": root, "nfs": root})
        await self.keeper.acquire(NFS_KEY, creds, server, service="nfs", cache=self.nfs_cache,
                                  owner=root)  # fmt: skip
        conf = gssd_krb5_conf(creds).encode()
        files.write_private(os.path.join(self._nfs_dir, "krb5.conf"), conf)
        files.write_private(marker, creds.principal.encode())
        log.info("nfs kerberos identity in use", principal=creds.principal, users=len(others) + 1)

    # -- both --------------------------------------------------------------

    async def release(self, path: str) -> None:
        """``path`` was unstaged (or unpublished, inline): forget its tickets."""
        await self.keeper.release(volume_key(path))
        marker = self._marker(path)
        if not _exists(marker):
            return
        files.remove(marker)
        if not self._nfs_users():
            await self.keeper.release(NFS_KEY)
            files.remove(os.path.join(self._nfs_dir, "krb5.conf"))
            log.info("nfs kerberos identity released")

    async def remount_spec(self, path: str, spec: MountSpec) -> tuple[MountSpec, str] | None:
        """The mount options and ticket key of a Kerberos mount at ``path``
        (for a self-healing remount); None when it does not use Kerberos."""
        if spec.protocol == "smb":
            key = volume_key(path)
            if await self.keeper.knows(key):
                return with_kerberos(spec, self.keeper.uid), key
            return None
        if _exists(self._marker(path)) and await self.keeper.knows(NFS_KEY):
            return spec, NFS_KEY
        return None

    async def fresh(self, key: str) -> dict[str, str]:
        return await self.keeper.fresh(key)
