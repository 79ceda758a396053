"""Where volumes live: the parsed ``source`` StorageClass parameter.

SMB:  ``//server[:port]/share[/base]``
NFS:  ``server:/export[/base]`` or ``nfs://server[:port]/export[/base]``

For NFS the whole path is the export the controller mounts (servers let
clients mount any directory below an export), so ``base`` is always empty;
for SMB the first component is the share and the rest is ``base``.
IPv6 literals are written in brackets: ``//[::1]:4450/share``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from driver import paths
from driver.errors import InvalidArgument

Protocol = Literal["smb", "nfs"]
PROTOCOLS: tuple[Protocol, ...] = ("smb", "nfs")
DEFAULT_PORTS: dict[str, int] = {"smb": 445, "nfs": 2049}

# A DNS name or IPv4 address; IPv6 is handled separately (brackets).
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Source:
    protocol: Protocol
    server: str  # host name or IP, IPv6 without brackets
    port: int | None  # None: the protocol's default
    share: str  # SMB share name, or absolute NFS export path ("/export/x")
    base: str = ""  # SMB only: directory inside the share, relative

    @property
    def host_port(self) -> str:
        host = f"[{self.server}]" if ":" in self.server else self.server
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def share_root(self) -> Source:
        """The share itself, ``base`` dropped: what backends and mounts are keyed on."""
        return Source(self.protocol, self.server, self.port, self.share)

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.protocol]

    def __str__(self) -> str:
        if self.protocol == "smb":
            return "//" + "/".join(p for p in (self.host_port, self.share, self.base) if p)
        if self.port is None:
            return f"{self.host_port}:{self.share}"
        return f"nfs://{self.host_port}{self.share}"


def parse_host_port(text: str, *, what: str = "source") -> tuple[str, int | None]:
    """Split ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise InvalidArgument(f"{what}: unbalanced '[' in server address")
        if rest:
            if not rest.startswith(":"):
                raise InvalidArgument(f"{what}: unexpected text after ']'")
            port_text = rest[1:]
        if not re.fullmatch(r"[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?", host) or ":" not in host:
            raise InvalidArgument(f"{what}: {host!r} is not an IPv6 address")
    else:
        host, sep, port_part = text.partition(":")
        if sep:
            port_text = port_part
        if not _HOST.match(host) or ".." in host:
            raise InvalidArgument(f"{what}: {host!r} is not a valid server name")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not port_text.isascii():
            raise InvalidArgument(f"{what}: port {port_text!r} is not a number")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise InvalidArgument(f"{what}: port {port} is out of range")
    return host, port


def _parse_smb(text: str) -> Source:
    rest = text[2:]
    hostport, _, path = rest.partition("/")
    server, port = parse_host_port(hostport)
    path = path.rstrip("/")
    if not path:
        raise InvalidArgument("source: SMB source needs a share: //server/share[/dir]")
    share, _, base = path.partition("/")
    paths.check_component(share, what="source share")
    paths.safe_relpath(base, what="source directory", allow_empty=True)
    return Source("smb", server, port, share, base)


def _parse_nfs_path(server: str, port: int | None, path: str) -> Source:
    if not path.startswith("/"):
        raise InvalidArgument("source: NFS export path must be absolute (server:/export)")
    if path.startswith("//"):
        raise InvalidArgument("source: NFS export path has an empty component ('//')")
    path = "/" + path.strip("/")
    if path == "/":
        paths_part = ""
    else:
        paths_part = path[1:]
        paths.safe_relpath(paths_part, what="source export")
    return Source("nfs", server, port, "/" + paths_part)


def parse_source(text: str, protocol: str | None = None) -> Source:
    """Parse the ``source`` parameter; ``protocol`` (if given) must agree."""
    if protocol is not None:
        protocol = protocol.strip().lower()
        if protocol not in PROTOCOLS:
            raise InvalidArgument(f"protocol: {protocol!r} is not one of smb, nfs")
    text = text.strip()
    if not text:
        raise InvalidArgument("source: must not be empty")
    if "\x00" in text or "\\" in text:
        raise InvalidArgument("source: NUL and backslash are not allowed (write //server/share)")
    if text.startswith("//"):
        found = _parse_smb(text)
    elif text.lower().startswith("smb://"):
        found = _parse_smb(text[4:])
    elif text.lower().startswith("nfs://"):
        hostport, slash, path = text[6:].partition("/")
        server, port = parse_host_port(hostport)
        found = _parse_nfs_path(server, port, slash + path)
    elif ":/" in text:
        if text.startswith("["):
            end = text.find("]:/")
            if end < 0:
                raise InvalidArgument("source: expected [ipv6]:/export")
            hostpart, path = text[: end + 1], text[end + 2 :]
        else:
            hostpart, _, path = text.partition(":")
        server, port = parse_host_port(hostpart)
        if port is not None:
            raise InvalidArgument("source: write nfs://server:port/export to give an NFS port")
        found = _parse_nfs_path(server, None, path)
    else:
        raise InvalidArgument(
            "source: expected //server/share[/dir] (SMB) or server:/export[/dir] (NFS)"
        )
    if protocol is not None and protocol != found.protocol:
        raise InvalidArgument(
            f"protocol: {protocol!r} contradicts source, which is {found.protocol}"
        )
    return found
