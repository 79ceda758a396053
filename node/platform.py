"""What the Node service asks of a platform (Linux or Windows).

The service (``node/service.py``) validates CSI requests, takes the
per-volume lock and turns a request into one of the plain values below; a
platform module (``node/linux/``, ``node/windows/``) does the work.  The
platform is chosen in one place, :func:`node.service.build`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from driver.credentials import Credentials, KerberosCredentials
from driver.source import Source


@dataclass(frozen=True, slots=True)
class StageRequest:
    volume_id: str
    source: Source  # the share root (SMB share / NFS export), base folded into subdir
    subdir: str  # relative to the share root; "" = the share root itself
    staging_path: str  # absolute, as kubelet gave it
    mount_options: tuple[str, ...] = ()  # StorageClass mountOptions, split on ','
    credentials: Credentials | None = field(default=None, repr=False)  # SMB only
    kerberos: KerberosCredentials | None = field(default=None, repr=False)  # SMB, instead
    mount_group: str = ""  # VolumeCapability.mount.volume_mount_group (fsGroup)
    read_only: bool = False  # every access mode is *_READER_ONLY
    mount_permissions: int | None = None  # chmod the volume root after mounting (NFS)


@dataclass(frozen=True, slots=True)
class PublishRequest:
    volume_id: str
    staging_path: str  # "" for an inline ephemeral volume
    target_path: str
    read_only: bool = False  # the readonly flag, or every access mode is *_READER_ONLY
    mount_options: tuple[str, ...] = ()
    # NodePublishVolumeRequest.readonly itself: kubelet then also asks the
    # container runtime for a read-only mount (what enforces it on Windows).
    readonly_flag: bool = False
    # Where the volume lives, from the publish request's volume context (as
    # NodeStage got it).  Persistent: lets a republish remount a broken
    # staging (no credentials here: the platform keeps the node-stage ones
    # in memory).  Ephemeral: what to mount at the target, with the
    # NodePublish secret's credentials.  None when the context names no
    # volume this driver can locate.
    volume: StageRequest | None = None
    ephemeral: bool = False  # inline volume: no staging, mounted at the target


@dataclass(frozen=True, slots=True)
class VolumeHealth:
    abnormal: bool
    message: str


@dataclass(frozen=True, slots=True)
class VolumeUsage:
    total_bytes: int
    available_bytes: int
    used_bytes: int
    total_inodes: int | None  # None where the platform has no inode counts
    free_inodes: int | None
    used_inodes: int | None
    health: VolumeHealth


class NodePlatform(Protocol):
    """One implementation per OS.  Every method is idempotent and raises
    ``driver.errors`` domain errors only."""

    name: str
    # NodeServiceCapability.RPC.Type names this platform supports, e.g.
    # "STAGE_UNSTAGE_VOLUME", "GET_VOLUME_STATS", "VOLUME_CONDITION", "VOLUME_MOUNT_GROUP".
    capabilities: frozenset[str]

    def check_path(self, path: str, *, what: str) -> str:
        """Validate and normalise a kubelet path (absolute, no ``..``);
        InvalidArgument names ``what`` otherwise."""
        ...

    async def stage(self, request: StageRequest) -> None:
        """Make ``request.staging_path`` show the volume (mount / link)."""
        ...

    async def unstage(self, volume_id: str, staging_path: str) -> None:
        """Undo :meth:`stage`; a path that is not staged is success."""
        ...

    async def publish(self, request: PublishRequest) -> None:
        """Make ``target_path`` show the staged volume (bind mount / link), or
        the share itself for an inline ephemeral volume.  Called again for a
        published target (kubelet's republish, ``requiresRepublish``): check
        it and repair what is broken, bounded in time, changing nothing
        that works."""
        ...

    async def unpublish(self, volume_id: str, target_path: str) -> None:
        """Undo :meth:`publish`; a missing target is success."""
        ...

    async def published_elsewhere(self, staging_path: str, target_path: str) -> list[str]:
        """The target paths, other than ``target_path``, where the volume
        staged at ``staging_path`` is published now (for the single-writer
        access modes, which allow one target at a time)."""
        ...

    async def usage(self, volume_id: str, path: str) -> VolumeUsage:
        """Space, inodes and health of a staged or published path, bounded in
        time: a dead server makes it abnormal, never a hang.  NotFound when
        ``path`` does not exist."""
        ...

    async def aclose(self) -> None:
        """Stop background work (health checks, pending mounts)."""
        ...


@runtime_checkable
class Reconciling(Protocol):
    """A platform with work to do when the driver starts (e.g. after a node
    reboot: links left over, share mappings gone)."""

    async def reconcile(self) -> None:
        """Look at what earlier runs left on the node and restore or report
        it; raises nothing (problems are logged and shown in stats)."""
        ...
