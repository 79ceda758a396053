"""Checks of Controller requests: volume capabilities, capacity ranges, IDs
that must name something, and the RPCs the service advertises.

Shares hold file systems: only mount access with a cifs/nfs (or empty)
``fs_type`` is accepted; block access is InvalidArgument.  A directory has no
size of its own, so a capacity range is only checked for sense and echoed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, TypeVar

from driver.csi import csi_pb2
from driver.errors import InvalidArgument, NotFound
from driver.log import get_logger

log = get_logger("controller")

T = TypeVar("T")

AccessMode = csi_pb2.VolumeCapability.AccessMode
SUPPORTED_MODES: Final = frozenset(
    {
        AccessMode.SINGLE_NODE_WRITER,
        AccessMode.SINGLE_NODE_READER_ONLY,
        AccessMode.MULTI_NODE_READER_ONLY,
        AccessMode.MULTI_NODE_SINGLE_WRITER,
        AccessMode.MULTI_NODE_MULTI_WRITER,
        AccessMode.SINGLE_NODE_SINGLE_WRITER,
        AccessMode.SINGLE_NODE_MULTI_WRITER,
    }
)
FS_TYPES: Final = frozenset({"", "cifs", "smb", "smb3", "nfs", "nfs4"})
#: The RPCs ControllerGetCapabilities advertises.
CONTROLLER_RPCS: Final = (
    csi_pb2.ControllerServiceCapability.RPC.CREATE_DELETE_VOLUME,
    csi_pb2.ControllerServiceCapability.RPC.EXPAND_VOLUME,
    csi_pb2.ControllerServiceCapability.RPC.GET_CAPACITY,
    csi_pb2.ControllerServiceCapability.RPC.SINGLE_NODE_MULTI_WRITER,
    csi_pb2.ControllerServiceCapability.RPC.CREATE_DELETE_SNAPSHOT,
    csi_pb2.ControllerServiceCapability.RPC.LIST_SNAPSHOTS,
    csi_pb2.ControllerServiceCapability.RPC.CLONE_VOLUME,
)


def check_capabilities(caps: Iterable[csi_pb2.VolumeCapability]) -> list[str]:
    """Validate capabilities; return the mount flags of the mount ones."""
    caps = list(caps)
    if not caps:
        raise InvalidArgument("volume_capabilities: at least one is required")
    flags: list[str] = []
    for cap in caps:
        kind = cap.WhichOneof("access_type")
        if kind == "block":
            raise InvalidArgument(
                "volume_capabilities: block access is not supported (file shares)"
            )
        if kind != "mount":
            raise InvalidArgument("volume_capabilities: access_type mount is required")
        if cap.mount.fs_type.lower() not in FS_TYPES:
            raise InvalidArgument(
                f"volume_capabilities: fs_type {cap.mount.fs_type!r} is not cifs/nfs"
            )
        if cap.access_mode.mode not in SUPPORTED_MODES:
            raise InvalidArgument("volume_capabilities: access_mode is missing or unknown")
        flags.extend(cap.mount.mount_flags)
    return flags


def requested_bytes(
    request: csi_pb2.CreateVolumeRequest | csi_pb2.ControllerExpandVolumeRequest,
) -> int:
    """The size to report for a capacity range: required, else the limit, else 0."""
    if not request.HasField("capacity_range"):
        return 0
    required = request.capacity_range.required_bytes
    limit = request.capacity_range.limit_bytes
    if required < 0 or limit < 0:
        raise InvalidArgument("capacity_range: byte counts must not be negative")
    if limit and required > limit:
        raise InvalidArgument("capacity_range: required_bytes exceeds limit_bytes")
    return required or limit


def capabilities_response() -> csi_pb2.ControllerGetCapabilitiesResponse:
    return csi_pb2.ControllerGetCapabilitiesResponse(
        capabilities=[
            csi_pb2.ControllerServiceCapability(rpc=csi_pb2.ControllerServiceCapability.RPC(type=t))
            for t in CONTROLLER_RPCS
        ]
    )


def existing(text: str, parse: Callable[[str], T], what: str) -> T:
    """``text`` parsed as the ID of something that must exist: an ID this
    driver cannot have made names nothing, so it is NOT_FOUND."""
    try:
        return parse(text)
    except InvalidArgument as exc:
        raise NotFound(f"{what} {text!r} does not exist ({exc.message})") from exc


def to_delete(text: str, parse: Callable[[str], T], what: str) -> T | None:
    """``text`` parsed as the ID a Delete RPC names; None when it cannot name
    anything: the spec makes deleting what cannot exist a success."""
    if not text:
        raise InvalidArgument(f"{what}_id: required")
    try:
        return parse(text)
    except InvalidArgument as exc:
        log.warning("ignoring the delete of a malformed ID", kind=what, reason=exc.message)
        return None
