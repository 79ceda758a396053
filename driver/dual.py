"""Dual-protocol trees: one directory tree served over SMB *and* NFS.

Multiprotocol file servers (Samba + knfsd on one box, Windows Server with
Server for NFS, NetApp) serve the same directory under two names, e.g.
``//files/data/k8s`` and ``files:/srv/data/k8s``.  A dual volume is a
subdirectory of such a tree: the controller works on it through one protocol
(``provisionVia``), Linux nodes mount it over ``linuxProtocol`` and Windows
nodes over SMB.

A volume directory is ``<base>/<subdir>`` on either side: the SMB base is the
part of ``smbSource`` after the share, the NFS base is folded into the export
path (NFS clients mount any directory below an export), so only the subdir
is shared between the two spellings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from driver import paths
from driver.errors import InvalidArgument
from driver.source import PROTOCOLS, Protocol, Source


def protocol_value(text: str, *, what: str) -> Protocol:
    """``smb`` or ``nfs`` (case-insensitive); InvalidArgument naming ``what``."""
    value = text.strip().lower()
    if value == "smb":
        return "smb"
    if value == "nfs":
        return "nfs"
    raise InvalidArgument(f"{what}: {text!r} is not one of nfs, smb")


@dataclass(frozen=True, slots=True)
class DualSources:
    smb: Source  # //server[:port]/share[/base]: ``base`` is the tree inside the share
    nfs: Source  # server:/export[/base]: base already folded into the export path
    provision_via: Protocol = "nfs"
    linux_protocol: Protocol = "nfs"

    def __post_init__(self) -> None:
        if self.smb.protocol != "smb" or self.nfs.protocol != "nfs":
            raise InvalidArgument("dual sources: smbSource must be SMB and nfsSource NFS")
        if self.nfs.base:
            raise InvalidArgument("dual sources: the NFS base must be part of the export")
        choices = ((self.provision_via, "provisionVia"), (self.linux_protocol, "linuxProtocol"))
        for value, what in choices:
            if value not in PROTOCOLS:
                raise InvalidArgument(f"{what}: {value!r} is not one of nfs, smb")
        paths.safe_relpath(self.smb.base, what="smbSource directory", allow_empty=True)

    def tree(self, protocol: Protocol) -> Source:
        """The tree's root as ``protocol`` names it (with its base)."""
        return self.smb if protocol == "smb" else self.nfs

    def root(self, protocol: Protocol) -> Source:
        """The share root ``protocol`` mounts (base removed)."""
        return self.tree(protocol).share_root

    def base(self, protocol: Protocol) -> str:
        return self.tree(protocol).base

    def path(self, protocol: Protocol, relative: str) -> str:
        """A path relative to the tree, as a path relative to ``protocol``'s share root."""
        return paths.join(self.base(protocol), relative)

    def relative(self, protocol: Protocol, path: str) -> str | None:
        """``path`` (relative to ``protocol``'s share root) relative to the tree;
        None when it lies outside the tree (the other protocol cannot see it)."""
        base = self.base(protocol)
        if not base:
            return path
        if path == base:
            return ""
        if path.startswith(base + "/"):
            return path[len(base) + 1 :]
        return None

    def translate(self, path: str, *, from_: Protocol, to: Protocol) -> str | None:
        """The same file as the other protocol names it (None: not in the tree)."""
        rel = self.relative(from_, path)
        return None if rel is None else self.path(to, rel)

    def via(self, protocol: Protocol) -> DualSources:
        return replace(self, provision_via=protocol)

    def node_protocol(self, os_name: str) -> Protocol:
        """What a node of ``os_name`` mounts: SMB on Windows, else ``linuxProtocol``."""
        return "smb" if os_name == "windows" else self.linux_protocol

    def describe(self) -> str:
        return f"{self.smb} + {self.nfs}"


def other(protocol: Protocol) -> Protocol:
    return "nfs" if protocol == "smb" else "smb"


def scoped_options(flags: Iterable[str], protocol: Protocol) -> tuple[str, ...]:
    """The mount options that apply to ``protocol`` in a dual-protocol class.

    One StorageClass ``mountOptions`` list serves both protocols, and some
    keys mean different things to each (``vers=3`` is NFSv3 to mount.nfs and
    SMB 3 to mount.cifs).  ``nfs:<option>`` and ``smb:<option>`` apply to that
    protocol only (prefix removed); unprefixed options apply to both.
    """
    out: list[str] = []
    for flag in flags:
        for raw in str(flag).split(","):
            item = raw.strip()
            if not item:
                continue
            scope, sep, rest = item.partition(":")
            if sep and scope.lower() in PROTOCOLS:
                if scope.lower() == protocol and rest.strip():
                    out.append(rest.strip())
                continue
            out.append(item)
    return tuple(out)
