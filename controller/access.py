"""How the controller reaches a share with what a request carries.

Every RPC that touches a share gets its backend here.  SMB needs the
request's secret, named in errors as the CO knows it ("provisioner secret",
"snapshotter secret"; for a dual-protocol volume provisioned over SMB the
text says so, since its StorageClass may look like an NFS one).  NFS needs no
secret, but the controller speaks ``sec=sys`` only: a Kerberos ``sec=`` in
the mount options is refused rather than ignored.  Calls that carry no
secrets (GetCapacity; ListSnapshots without one) can only use an SMB session
an earlier call opened.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from controller.params import VolumeParams
from controller.share import BackendFactory, FileShareBackend
from driver.credentials import SmbAuth, smb_auth
from driver.dual import DualSources
from driver.errors import FailedPrecondition, InvalidArgument, NotFound
from driver.source import Source
from driver.volume_id import VolumeId

# How errors name the secret a call should have carried (``which=``).
PROVISIONER: Final = "provisioner secret"
SNAPSHOTTER: Final = "snapshotter secret"
#: A call that may carry one (ValidateVolumeCapabilities, ControllerExpandVolume).
ANY_CALL: Final = "secret"
_DUAL_PROVISIONER: Final = "provisioner secret (provisionVia: smb)"
#: NFS security flavours the controller's client (libnfs) speaks.
_NFS_SEC: Final = frozenset({"sys", "none", ""})


def provisioner_secret(dual: DualSources | None) -> str:
    """How the provisioner secret is named in errors for a volume."""
    return PROVISIONER if dual is None else _DUAL_PROVISIONER


class ShareAccess:
    """Backends for requests: credentials from the request's secrets."""

    def __init__(self, backends: BackendFactory) -> None:
        self.backends = backends

    def backend(
        self,
        source: Source,
        secrets: Mapping[str, str],
        *,
        nfs_version: str | None,
        which: str,
        mount_options: Mapping[str, str] | None = None,
    ) -> FileShareBackend:
        """The backend of ``source``'s share; ``which`` names the secret in errors."""
        creds: SmbAuth | None = None
        if source.protocol == "smb":
            creds = smb_auth(secrets, which=which)
        elif mount_options and mount_options.get("sec", "sys") not in _NFS_SEC:
            raise InvalidArgument(
                f"mount option sec={mount_options['sec']} is not supported by the controller "
                "(NFS volumes are provisioned with sec=sys)"
            )
        return self.backends.get(source.share_root, credentials=creds, nfs_version=nfs_version)

    def cached(self, root: Source) -> FileShareBackend | None:
        """A backend an earlier call opened for this share (any identity)."""
        return self.backends.cached(root)

    def for_capacity(self, params: VolumeParams) -> FileShareBackend:
        """GetCapacity's backend: it carries no secrets.  A dual tree is asked
        over NFS unless an SMB session to it is open already."""
        root = params.source.share_root
        if params.dual is not None and self.backends.cached(root) is None:
            root = params.dual.root("nfs")  # the same tree, and NFS needs no secret
        if root.protocol == "nfs":
            return self.backends.get(root, credentials=None, nfs_version=params.nfs_version)
        backend = self.backends.cached(root)
        if backend is None:
            raise FailedPrecondition(
                f"no SMB session to {root} yet: capacity is known after the first CreateVolume"
            )
        return backend

    async def require_volume(self, vid: VolumeId, secrets: Mapping[str, str]) -> None:
        """NOT_FOUND when the volume's directory is gone, where the share can
        be asked: NFS always, SMB when the RPC carries credentials."""
        if vid.source.protocol == "nfs" or secrets:
            backend = self.backend(
                vid.source, secrets, nfs_version=vid.option("vers"), which=ANY_CALL
            )
            if not await backend.exists(vid.dir):
                raise NotFound(f"volume directory {vid.dir!r} does not exist on the share")
