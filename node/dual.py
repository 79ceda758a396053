"""Dual-protocol volumes on a node: which name of the tree this node mounts.

The volume context of a dual volume carries both names of the tree
(``smbSource``, ``nfsSource``), the volume's ``subDir`` inside it and
``linuxProtocol`` (``controller.dual``); a static PV may give the same keys by
hand, or only a v2 volume ID.  Windows nodes mount SMB; every other node
mounts ``linuxProtocol``.  The StorageClass mount options are narrowed to the
chosen protocol (``nfs:``/``smb:`` prefixes, ``driver.dual.scoped_options``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Final

from driver import paths
from driver.dual import DualSources, protocol_value
from driver.errors import FailedPrecondition, InvalidArgument
from driver.source import Protocol, Source, parse_source
from driver.volume_id import parse_volume_id

_DUAL_CONTEXT: Final = frozenset({"smbsource", "nfssource"})
#: Node OSes that mount only some protocols; other OS names (Linux) mount both.
_MOUNTABLE: Final[Mapping[str, frozenset[str]]] = {"windows": frozenset({"smb"})}
#: The mount helper a Linux node needs per protocol, and the package that has it.
LINUX_HELPERS: Final[Mapping[str, tuple[str, str]]] = {
    "smb": ("mount.cifs", "cifs-utils"),
    "nfs": ("mount.nfs", "nfs-common"),
}
_SBIN: Final = "/usr/local/sbin:/usr/sbin:/sbin"

#: ``program -> path or None``; the node service passes its own in tests.
HelperFinder = Callable[[str], "str | None"]


def find_helper(program: str) -> str | None:
    return shutil.which(program, path=os.environ.get("PATH", "") + os.pathsep + _SBIN)


@dataclass(frozen=True, slots=True)
class DualChoice:
    tree: DualSources
    protocol: Protocol  # what this node mounts
    root: Source  # that protocol's share root
    dir: str  # the volume's directory under ``root``
    reason: str  # why this protocol (for error texts)


def is_dual_context(context: Mapping[str, str]) -> bool:
    return any(k.lower() in _DUAL_CONTEXT for k in context)


def _from_context(context: Mapping[str, str]) -> tuple[DualSources, str]:
    ctx = {k.lower(): v for k, v in context.items()}
    if ctx.get("source") or ctx.get("protocol"):
        raise InvalidArgument(
            "volume_context: 'source'/'protocol' and 'smbSource'/'nfsSource' exclude each other"
        )
    keys: dict[Protocol, str] = {"smb": "smbSource", "nfs": "nfsSource"}
    for key in keys.values():
        if not ctx.get(key.lower(), "").strip():
            raise InvalidArgument(f"volume_context: {key!r} is required for a dual-protocol volume")
    sources: dict[Protocol, Source] = {}
    for protocol, key in keys.items():
        try:
            sources[protocol] = parse_source(ctx[key.lower()], protocol)
        except InvalidArgument as exc:
            raise InvalidArgument(f"volume_context {key}: {exc.message}") from None
    smb, nfs = sources["smb"], sources["nfs"]
    linux_text = ctx.get("linuxprotocol", "").strip()
    linux = protocol_value(linux_text, what="volume_context linuxProtocol") if linux_text else "nfs"
    subdir = ctx.get("subdir", "").strip("/")
    paths.safe_relpath(subdir, what="volume_context subDir")
    return DualSources(smb, nfs, linux_protocol=linux), subdir


def locate_dual(
    volume_id: str,
    context: Mapping[str, str],
    os_name: str,
    *,
    helpers: HelperFinder = find_helper,
) -> DualChoice | None:
    """The side of a dual volume this node mounts; None for a one-protocol volume.

    FailedPrecondition when this node cannot mount the protocol it would need
    (a Linux node lacks the mount helper).
    """
    if is_dual_context(context):
        tree, subdir = _from_context(context)
    elif any(k.lower() == "source" for k in context) or not volume_id.startswith("v2#"):
        return None
    else:
        vid = parse_volume_id(volume_id)
        if vid.dual is None:  # pragma: no cover - a v2 ID always has a tree
            return None
        tree, subdir = vid.dual, vid.subdir
        linux = next((v for k, v in context.items() if k.lower() == "linuxprotocol"), "")
        if linux.strip():  # a static PV may choose for its Linux nodes
            tree = replace(tree, linux_protocol=protocol_value(linux, what="linuxProtocol"))
    protocol = tree.node_protocol(os_name)
    reason = (
        "Windows nodes mount the SMB side"
        if os_name == "windows"
        else f"linuxProtocol: {tree.linux_protocol}"
    )
    choice = DualChoice(tree, protocol, tree.root(protocol), tree.path(protocol, subdir), reason)
    # Windows always gets the SMB side (node_protocol), which it can mount.
    if os_name == "linux":
        program, package = LINUX_HELPERS[protocol]
        if helpers(program) is None:
            raise FailedPrecondition(
                f"this linux node cannot mount {protocol.upper()} ({choice.reason}): {program} "
                f"is not installed (package {package}); install it in the node image, or set "
                f"the StorageClass linuxProtocol to {'smb' if protocol == 'nfs' else 'nfs'}"
            )
    return choice


def refuse_single(protocol: str, os_name: str) -> None:
    """A one-protocol volume this node OS cannot mount: say how to make it dual."""
    mountable = _MOUNTABLE.get(os_name)
    if mountable is not None and protocol not in mountable:
        raise FailedPrecondition(
            f"{protocol.upper()} volumes are not supported on {os_name.capitalize()} nodes: run "
            "pods that use them on Linux nodes (nodeSelector kubernetes.io/os: linux), or make "
            "the volume dual-protocol (StorageClass smbSource + nfsSource instead of source) "
            "when the server also shares the directory over SMB"
        )
