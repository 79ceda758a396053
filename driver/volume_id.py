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

Dual-protocol volumes (``driver.dual``: one tree served over SMB and NFS)
have version 2::

    v2#<provisionVia>#<linuxProtocol>#<smb server[:port]>#<smb share>#<smb base>
      #<nfs server[:port]>#<nfs export>#<subdir>#<onDelete>[#<options>]

(one line, wrapped here)

* ``smb base`` -- the tree's directory inside the SMB share (may be empty)
* ``nfs export`` -- the tree's root as the NFS export path (base folded in)
* ``subdir`` -- the volume's directory relative to the tree, the same on both sides
* ``options`` -- as in v1; ``vers`` is the NFS version

Example: ``v2#nfs#nfs#files.example#data#k8s#files.example#/srv/data/k8s#pvc-3#delete``.
A v2 ID's ``source`` and ``dir`` are the ``provisionVia`` side, so code that
only provisions treats both versions alike.

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
from driver.dual import DualSources, protocol_value
from driver.errors import InvalidArgument
from driver.source import PROTOCOLS, Source, parse_host_port

VERSION = "v1"
DUAL_VERSION = "v2"
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
    # Dual-protocol volumes: both trees; ``source``/``dir`` are its provisionVia side.
    dual: DualSources | None = None

    def __post_init__(self) -> None:
        paths.safe_relpath(self.dir, what="volume directory")
        if self.source.base:
            raise InvalidArgument("volume ID: source base must be folded into dir")
        if self.dual is not None:
            check_dual_side(self.dual, self.source, self.dir, what="volume ID")
        on_delete_value(self.on_delete, what="volume ID")
        keys = [k for k, _ in self.options]
        if keys != sorted(set(keys)):
            raise InvalidArgument("volume ID: options must be sorted and unique")
        for key, value in self.options:
            if not _OPTION_KEY.match(key) or not _OPTION_VALUE.match(value):
                raise InvalidArgument(f"volume ID: option {key!r} is not valid")

    def option(self, key: str) -> str | None:
        return dict(self.options).get(key)

    @property
    def subdir(self) -> str:
        """The directory relative to the dual tree (``dir`` for v1 IDs)."""
        if self.dual is None:
            return self.dir
        return self.dual.relative(self.dual.provision_via, self.dir) or ""

    def format(self) -> str:
        if self.dual is not None:
            return encode_dual_id(
                DUAL_VERSION, self.dual, (self.subdir, self.on_delete), self.options
            )
        return encode_id(VERSION, self.source, (self.dir, self.on_delete), self.options)

    def __str__(self) -> str:
        return self.format()


def check_dual_side(dual: DualSources, source: Source, directory: str, *, what: str) -> None:
    """``source``/``directory`` must be the provisionVia side of ``dual``, strictly
    below the tree's root (a volume is never the whole tree)."""
    if source != dual.root(dual.provision_via):
        raise InvalidArgument(f"{what}: source is not the provisionVia side of the dual tree")
    if not dual.relative(dual.provision_via, directory):
        raise InvalidArgument(f"{what}: directory lies outside the dual tree")


# -- the field codec shared by volume and snapshot IDs ---------------------------


def encode_id(
    version: str, source: Source, middle: Sequence[str], options: Sequence[tuple[str, str]]
) -> str:
    """``version#protocol#server[:port]#share#<middle...>[#k=v,...]``, each
    field percent-encoded."""
    return _join([version, source.protocol, source.host_port, source.share, *middle], options)


def _join(fields: list[str], options: Sequence[tuple[str, str]]) -> str:
    """The fields, then the options as one ``k=v,...`` field, percent-encoded."""
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
    fields, options = _split(text, version=version, count=4 + middle, what=what)
    protocol, hostport, share = fields[1:4]
    if protocol not in PROTOCOLS:
        raise InvalidArgument(f"{what}: unknown protocol {protocol!r}")
    server, port = parse_host_port(hostport, what=what)
    source = Source(protocol, server, port, _share(protocol, share, what))
    return DecodedId(source, fields[4:], options)


# -- version 2: dual-protocol trees -------------------------------------------


def encode_dual_id(
    version: str, dual: DualSources, middle: Sequence[str], options: Sequence[tuple[str, str]]
) -> str:
    """``version#via#linux#smb host#smb share#smb base#nfs host#nfs export#<middle...>[#opts]``."""
    smb, nfs = dual.smb, dual.nfs
    fields = [
        version,
        dual.provision_via,
        dual.linux_protocol,
        smb.host_port,
        smb.share,
        smb.base,
        nfs.host_port,
        nfs.share,
        *middle,
    ]
    return _join(fields, options)


@dataclass(frozen=True, slots=True)
class DecodedDualId:
    dual: DualSources
    middle: list[str]
    options: tuple[tuple[str, str], ...]

    def provision_side(self, subdir: str, *, what: str) -> tuple[Source, str]:
        """The provisionVia share root and the directory ``subdir`` names in it."""
        paths.safe_relpath(subdir, what=f"{what} subdir")
        via = self.dual.provision_via
        return self.dual.root(via), self.dual.path(via, subdir)


def _split(
    text: str, *, version: str, count: int, what: str
) -> tuple[list[str], tuple[tuple[str, str], ...]]:
    """The ``count`` decoded fields, and the options of the optional last one."""
    if len(text) > 4096:
        raise InvalidArgument(f"{what}: too long")
    raw = text.split("#")
    if len(raw) not in (count, count + 1) or raw[0] != version:
        raise InvalidArgument(f"{what}: not a {version} csi-driver-smb-nfs ID")
    try:
        fields = [unquote(f, errors="strict") for f in raw]
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{what}: invalid percent-encoding") from exc
    options = _options(fields[count], what) if len(fields) > count else ()
    return fields[:count], options


def _options(text: str, what: str) -> tuple[tuple[str, str], ...]:
    if not text:
        raise InvalidArgument(f"{what}: empty options field")
    options: list[tuple[str, str]] = []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidArgument(f"{what}: options must be key=value")
        options.append((key, value))
    return tuple(options)


def decode_dual_id(text: str, *, version: str, middle: int, what: str) -> DecodedDualId:
    """Split and decode an ID written by :func:`encode_dual_id`."""
    fields, options = _split(text, version=version, count=8 + middle, what=what)
    via = protocol_value(fields[1], what=f"{what} provisionVia")
    linux = protocol_value(fields[2], what=f"{what} linuxProtocol")
    smb_server, smb_port = parse_host_port(fields[3], what=what)
    smb_share = _share("smb", fields[4], what)
    smb_base = paths.safe_relpath(fields[5], what=f"{what} SMB base", allow_empty=True)
    nfs_server, nfs_port = parse_host_port(fields[6], what=what)
    nfs_export = _share("nfs", fields[7], what)
    dual = DualSources(
        Source("smb", smb_server, smb_port, smb_share, smb_base),
        Source("nfs", nfs_server, nfs_port, nfs_export),
        via,
        linux,
    )
    return DecodedDualId(dual, fields[8:], options)


def on_delete_value(text: str, *, what: str) -> OnDelete:
    """``text`` as an onDelete value (the ``in`` test does not narrow the type)."""
    for value in ON_DELETE:
        if text == value:
            return value
    raise InvalidArgument(f"{what}: onDelete {text!r} is not valid")


def parse_volume_id(text: str) -> VolumeId:
    """Parse a volume ID (v1 or v2); InvalidArgument for anything malformed."""
    what = "volume ID"
    vid: VolumeId
    if text.startswith(DUAL_VERSION + "#"):
        dual = decode_dual_id(text, version=DUAL_VERSION, middle=2, what=what)
        subdir, on_delete = dual.middle
        when = on_delete_value(on_delete, what=what)
        source, directory = dual.provision_side(subdir, what=what)
        vid = VolumeId(source, directory, when, dual.options, dual.dual)
    else:
        decoded = decode_id(text, version=VERSION, middle=2, what=what)
        directory, on_delete = decoded.middle
        vid = VolumeId(
            decoded.source, directory, on_delete_value(on_delete, what=what), decoded.options
        )
    if vid.format() != text:
        # Reject alternative spellings (extra encoding, default port...): one
        # volume has exactly one ID, so idempotency checks can compare strings.
        raise InvalidArgument(f"{what}: not in canonical form")
    return vid
