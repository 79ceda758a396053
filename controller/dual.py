"""Dual-protocol volumes in the controller: parameters, context, origins.

A StorageClass with ``smbSource`` and ``nfsSource`` (instead of ``source``)
names one directory tree served over both protocols (``driver.dual``).  The
controller creates, deletes, archives, snapshots and clones through the
``provisionVia`` protocol only; the other name of the tree travels in the
volume ID (v2) and the volume context so nodes can mount either.

Default ``provisionVia`` is ``nfs``: the controller then needs no SMB
secret, ``mountPermissions`` is applied as a real POSIX mode, and NFS
metadata operations are the cheaper of the two (see the README).  Servers
whose tree has NTFS security (NetApp ``ntfs`` style, Windows Server) should
use ``provisionVia: smb`` so new directories inherit the share's ACLs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from controller.snapshot_id import SnapshotId
from driver.dual import DualSources, protocol_value, scoped_options
from driver.errors import InvalidArgument
from driver.source import Protocol, Source, parse_source
from driver.volume_id import VolumeId

#: Lower-cased StorageClass keys of dual-protocol volumes.
DUAL_KEYS: Final = frozenset({"smbsource", "nfssource", "provisionvia", "linuxprotocol"})
DEFAULT_PROVISION_VIA: Final[Protocol] = "nfs"
DEFAULT_LINUX_PROTOCOL: Final[Protocol] = "nfs"

# Volume context keys of a dual volume (the same words as the StorageClass).
CTX_SMB_SOURCE: Final = "smbSource"
CTX_NFS_SOURCE: Final = "nfsSource"
CTX_SUBDIR: Final = "subDir"
CTX_LINUX_PROTOCOL: Final = "linuxProtocol"


def _source(text: str, protocol: Protocol, key: str) -> Source:
    if not text.strip():
        raise InvalidArgument(f"parameter {key!r} must not be empty")
    try:
        return parse_source(text, protocol)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{key}: {exc.message}") from None


def _with_port(source: Source, options: Mapping[str, str], scope: str) -> Source:
    text = options.get("port")
    if text is None:
        return source
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InvalidArgument(f"mount options: {scope}port {text!r} is not valid")
    port = int(text)
    if source.port is not None and source.port != port:
        raise InvalidArgument(
            f"mount option {scope}port= contradicts the port in {scope[:3]}Source"
        )
    return Source(source.protocol, source.server, port, source.share, source.base)


def parse_dual(
    lowered: Mapping[str, str], options_for: Mapping[Protocol, Mapping[str, str]]
) -> DualSources:
    """The dual tree from lower-cased StorageClass keys.

    ``options_for`` holds each protocol's mount options (``scoped_options``
    already applied), for ``port=``.
    """
    smb_text, nfs_text = lowered.get("smbsource"), lowered.get("nfssource")
    if "source" in lowered:
        raise InvalidArgument(
            "parameters 'source' and 'smbSource'/'nfsSource' exclude each other: give 'source' "
            "for a one-protocol volume, or 'smbSource' and 'nfsSource' for a dual-protocol one"
        )
    if "protocol" in lowered:
        raise InvalidArgument(
            "parameter 'protocol' does not apply to a dual-protocol volume: use 'provisionVia' "
            "(controller) and 'linuxProtocol' (Linux nodes)"
        )
    if smb_text is None or nfs_text is None:
        given, missing = ("smbSource", "nfsSource")
        if smb_text is None:
            given, missing = missing, given
        if smb_text is None and nfs_text is None:
            raise InvalidArgument(
                "parameters 'provisionVia'/'linuxProtocol' need 'smbSource' and 'nfsSource' "
                "(dual-protocol volume)"
            )
        raise InvalidArgument(
            f"parameter {missing!r} is required with {given!r}: a dual-protocol volume names "
            "the same directory over SMB and NFS"
        )
    smb = _with_port(_source(smb_text, "smb", "smbSource"), options_for["smb"], "smb:")
    nfs = _with_port(_source(nfs_text, "nfs", "nfsSource"), options_for["nfs"], "nfs:")
    via_text = lowered.get("provisionvia", "").strip()
    via = protocol_value(via_text, what="provisionVia") if via_text else DEFAULT_PROVISION_VIA
    linux_text = lowered.get("linuxprotocol", "").strip()
    linux = (
        protocol_value(linux_text, what="linuxProtocol") if linux_text else DEFAULT_LINUX_PROTOCOL
    )
    return DualSources(smb, nfs, via, linux)


def check_dual_mount_flags(flags: Sequence[str]) -> None:
    """Refuse an unprefixed ``vers=``: mount.nfs and mount.cifs read it differently."""
    for flag in flags:
        for item in str(flag).split(","):
            key = item.strip().partition("=")[0].strip().lower()
            if key == "vers":
                raise InvalidArgument(
                    "mount options: 'vers' is the NFS version to mount.nfs and the SMB dialect to "
                    "mount.cifs; in a dual-protocol class write 'nfs:vers=...' or 'smb:vers=...'"
                )


def scoped_mount_options(flags: Sequence[str]) -> dict[Protocol, tuple[str, ...]]:
    return {"smb": scoped_options(flags, "smb"), "nfs": scoped_options(flags, "nfs")}


def volume_context(dual: DualSources, subdir: str) -> dict[str, str]:
    """What nodes need to mount either side (never a secret)."""
    return {
        CTX_SMB_SOURCE: str(dual.smb),
        CTX_NFS_SOURCE: str(dual.nfs),
        CTX_SUBDIR: subdir,
        CTX_LINUX_PROTOCOL: dual.linux_protocol,
    }


def align_origin(
    origin: SnapshotId | VolumeId, root: Source, target: DualSources | None
) -> SnapshotId | VolumeId | None:
    """``origin`` as seen through the share ``root`` the new volume is made on,
    or None when that share cannot see it.

    A snapshot or volume provisioned through one protocol of a dual tree is
    reachable through the other: its paths are translated with the tree of
    the origin (when it is dual) or of the new volume.
    """
    if _same(origin.source, root):
        return origin
    for tree in (origin.dual, target):
        if tree is None:
            continue
        have, want = origin.source.protocol, root.protocol
        if (
            have == want
            or not _same(tree.root(have), origin.source)
            or not _same(tree.root(want), root)
        ):
            continue
        if isinstance(origin, SnapshotId):
            archive = tree.translate(origin.archive, from_=have, to=want)
            source_dir = tree.translate(origin.source_dir, from_=have, to=want)
            if archive is None or source_dir is None:
                continue
            # Only the paths matter to a restore: a plain ID of the other side.
            return SnapshotId(root, archive, source_dir, origin.source_on_delete, origin.options)
        directory = tree.translate(origin.dir, from_=have, to=want)
        if directory:
            return VolumeId(root, directory, origin.on_delete, origin.options)
    return None


def _same(a: Source, b: Source) -> bool:
    return (a.protocol, a.host_port, a.share) == (b.protocol, b.host_port, b.share)
