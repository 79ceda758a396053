"""Small builders of CSI messages that many tests need."""

from __future__ import annotations

from driver.csi import csi_pb2

AM = csi_pb2.VolumeCapability.AccessMode


def cap(
    *flags: str, mode: int = AM.MULTI_NODE_MULTI_WRITER, group: str = ""
) -> csi_pb2.VolumeCapability:
    """A mount volume capability: mount ``flags`` (StorageClass mountOptions),
    access ``mode`` and volume mount ``group`` (fsGroup)."""
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(
            mount_flags=list(flags), volume_mount_group=group
        ),
        access_mode=AM(mode=mode),
    )
