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
        fields = [
            VERSION,
            self.source.protocol,
            self.source.host_port,
            self.source.share,
            self.dir,
            self.on_delete,
        ]
        if self.options:
            fields.append(",".join(f"{k}={v}" for k, v in self.options))
        return "#".join(quote(f, safe=_SAFE) for f in fields)

    def __str__(self) -> str:
        return self.format()


def _share(protocol: str, text: str) -> str:
    if protocol == "smb":
        return paths.check_component(text, what="volume ID share")
    if not text.startswith("/"):
        raise InvalidArgument("volume ID: NFS export must be absolute")
    if text != "/":
        paths.safe_relpath(text[1:], what="volume ID export")
    return text


def parse_volume_id(text: str) -> VolumeId:
    """Parse a volume ID; InvalidArgument for anything malformed."""
    if len(text) > 4096:
        raise InvalidArgument("volume ID: too long")
    raw = text.split("#")
    if len(raw) not in (6, 7) or raw[0] != VERSION:
        raise InvalidArgument("volume ID: not a v1 csi-driver-smb-nfs volume ID")
    try:
        fields = [unquote(f, errors="strict") for f in raw]
    except UnicodeDecodeError as exc:
        raise InvalidArgument("volume ID: invalid percent-encoding") from exc
    _, protocol, hostport, share, directory, on_delete, *rest = fields
    if protocol not in PROTOCOLS:
        raise InvalidArgument(f"volume ID: unknown protocol {protocol!r}")
    server, port = parse_host_port(hostport, what="volume ID")
    options: list[tuple[str, str]] = []
    if rest:
        if not rest[0]:
            raise InvalidArgument("volume ID: empty options field")
        for item in rest[0].split(","):
            key, sep, value = item.partition("=")
            if not sep:
                raise InvalidArgument("volume ID: options must be key=value")
            options.append((key, value))
    if on_delete not in ON_DELETE:
        raise InvalidArgument(f"volume ID: onDelete {on_delete!r} is not valid")
    vid = VolumeId(
        source=Source(protocol, server, port, _share(protocol, share)),
        dir=directory,
        on_delete=on_delete,
        options=tuple(options),
    )
    if vid.format() != text:
        # Reject alternative spellings (extra encoding, default port...): one
        # volume has exactly one ID, so idempotency checks can compare strings.
        raise InvalidArgument("volume ID: not in canonical form")
    return vid
