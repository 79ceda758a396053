"""Self-describing, versioned volume IDs.

Format (fields separated by ``#``, each percent-encoded)::

    v1#<protocol>#<server[:port]>#<share>#<dir>#<onDelete>[#<options>]

* ``protocol`` — ``smb`` or ``nfs``
* ``server[:port]`` — host name, IPv4, or ``[IPv6]``; port only when not default
* ``share`` — SMB share name, or the absolute NFS export path
* ``dir`` — the volume's directory relative to the share root (``base/sub``)
* ``onDelete`` — ``delete``, ``retain`` or ``archive``
* ``options`` — ``key=value`` pairs joined by ``,`` (e.g. ``vers=4.1`` for NFS)

Examples: ``v1#smb#files.example#data#k8s/pvc-1#delete`` and
``v1#nfs#10.0.0.5#/export#pvc-2#archive#vers=3``.

The ID carries everything DeleteVolume needs, so the controller keeps no
state.  Parsing is strict: only the canonical encoding of a valid ID is
accepted, and ``dir`` must be a clean relative path (see ``driver.paths``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, unquote

from driver import paths
from driver.errors import InvalidArgument
from driver.source import PROTOCOLS, Source, parse_host_port

VERSION = "v1"
OnDelete = Literal["delete", "retain", "archive"]
ON_DELETE: tuple[OnDelete, ...] = ("delete", "retain", "archive")
# Characters left readable in a field; '#' and '%' are always encoded.
_SAFE = "/:[]=,.-_~@+"
_OPTION_KEY = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
_OPTION_VALUE = re.compile(r"^[A-Za-z0-9_.:+-]{0,64}$")


@dataclass(frozen=True, slots=True)
class VolumeId:
    source: Source  # base is always "" here: it is folded into ``dir``
    dir: str
    on_delete: OnDelete = "delete"
    options: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        paths.safe_relpath(self.dir, what="volume directory")
        if self.source.base:
            raise InvalidArgument("volume ID: source base must be folded into dir")
        if self.on_delete not in ON_DELETE:
            raise InvalidArgument(f"volume ID: onDelete {self.on_delete!r} is not valid")
        keys = [k for k, _ in self.options]
        if keys != sorted(set(keys)):
            raise InvalidArgument("volume ID: options must be sorted and unique")
        for key, value in self.options:
            if not _OPTION_KEY.match(key) or not _OPTION_VALUE.match(value):
                raise InvalidArgument(f"volume ID: option {key!r} is not valid")

    def option(self, key: str) -> str | None:
        return dict(self.options).get(key)

    def format(self) -> str:
        return encode_id(VERSION, self.source, (self.dir, self.on_delete), self.options)

    def __str__(self) -> str:
        return self.format()


# -- the field codec shared by volume and snapshot IDs ---------------------------


def encode_id(
    version: str, source: Source, middle: Sequence[str], options: Sequence[tuple[str, str]]
) -> str:
    """``version#protocol#server[:port]#share#<middle...>[#k=v,...]``, each
    field percent-encoded."""
    fields = [version, source.protocol, source.host_port, source.share, *middle]
    if options:
        fields.append(",".join(f"{k}={v}" for k, v in options))
    return "#".join(quote(f, safe=_SAFE) for f in fields)


@dataclass(frozen=True, slots=True)
class DecodedId:
    source: Source
    middle: list[str]
    options: tuple[tuple[str, str], ...]


def _share(protocol: str, text: str, what: str) -> str:
    if protocol == "smb":
        return paths.check_component(text, what=f"{what} share")
    if not text.startswith("/"):
        raise InvalidArgument(f"{what}: NFS export must be absolute")
    if text != "/":
        paths.safe_relpath(text[1:], what=f"{what} export")
    return text


def decode_id(text: str, *, version: str, middle: int, what: str) -> DecodedId:
    """Split and decode an ID written by :func:`encode_id` with ``middle``
    fields between the share and the options.  The caller validates the
    middle fields and checks that the ID is in canonical form."""
    if len(text) > 4096:
        raise InvalidArgument(f"{what}: too long")
    raw = text.split("#")
    if len(raw) not in (4 + middle, 5 + middle) or raw[0] != version:
        raise InvalidArgument(f"{what}: not a {version} csi-driver-smb-nfs ID")
    try:
        fields = [unquote(f, errors="strict") for f in raw]
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{what}: invalid percent-encoding") from exc
    protocol, hostport, share = fields[1:4]
    if protocol not in PROTOCOLS:
        raise InvalidArgument(f"{what}: unknown protocol {protocol!r}")
    server, port = parse_host_port(hostport, what=what)
    options: list[tuple[str, str]] = []
    if len(fields) == 5 + middle:
        if not fields[-1]:
            raise InvalidArgument(f"{what}: empty options field")
        for item in fields[-1].split(","):
            key, sep, value = item.partition("=")
            if not sep:
                raise InvalidArgument(f"{what}: options must be key=value")
            options.append((key, value))
    source = Source(protocol, server, port, _share(protocol, share, what))
    return DecodedId(source, fields[4 : 4 + middle], tuple(options))


def parse_volume_id(text: str) -> VolumeId:
    """Parse a volume ID; InvalidArgument for anything malformed."""
    decoded = decode_id(text, version=VERSION, middle=2, what="volume ID")
    directory, on_delete = decoded.middle
    if on_delete not in ON_DELETE:
        raise InvalidArgument(f"volume ID: onDelete {on_delete!r} is not valid")
    vid = VolumeId(decoded.source, directory, on_delete, decoded.options)
    if vid.format() != text:
        # Reject alternative spellings (extra encoding, default port...): one
        # volume has exactly one ID, so idempotency checks can compare strings.
        raise InvalidArgument("volume ID: not in canonical form")
    return vid
