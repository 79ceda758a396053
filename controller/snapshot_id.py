"""Self-describing, versioned snapshot IDs.

Format (fields separated by ``#``, each percent-encoded like the volume ID)::

    s1#<protocol>#<server[:port]>#<share>#<archive>#<source dir>#<source onDelete>[#<options>]

* ``archive`` -- the archive's path relative to the share root; it ends in
  ``.tar.gz`` and never lies inside the source volume's directory
* ``source dir`` / ``source onDelete`` -- the source volume's directory and
  delete policy: with the other fields they give back the source volume ID
* ``options`` -- as in the volume ID (``vers=4.1`` for NFS)

Example: ``s1#nfs#10.0.0.5#/export#k8s/.snapshots/snap-1.tar.gz#k8s/pvc-1#delete#vers=4.1``.

Everything DeleteSnapshot, ListSnapshots and a restore need is in the ID, so
the controller keeps no state.  Parsing is strict: only the canonical
encoding of a valid ID is accepted, and both paths must be clean relative
paths (``driver.paths``), so no ID can point outside its share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from driver import paths
from driver.errors import InvalidArgument
from driver.source import PROTOCOLS, Source, parse_host_port
from driver.volume_id import ON_DELETE, OnDelete, VolumeId

VERSION = "s1"
ARCHIVE_SUFFIX = ".tar.gz"
_SAFE = "/:[]=,.-_~@+"


def inside(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or lies below it (both clean relative paths)."""
    return path == directory or path.startswith(directory + "/")


@dataclass(frozen=True, slots=True)
class SnapshotId:
    source: Source  # the share root: base is always ""
    archive: str
    source_dir: str
    source_on_delete: OnDelete = "delete"
    options: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        # The source volume ID validates server, share, dir and options.
        self.source_volume()
        paths.safe_relpath(self.archive, what="snapshot archive")
        leaf = self.archive.rpartition("/")[2]
        if not leaf.endswith(ARCHIVE_SUFFIX) or leaf == ARCHIVE_SUFFIX:
            raise InvalidArgument(f"snapshot ID: archive must be a *{ARCHIVE_SUFFIX} file")
        if inside(self.archive, self.source_dir):
            raise InvalidArgument("snapshot ID: the archive lies inside its source volume")

    @property
    def name(self) -> str:
        """The archive's file name without the suffix (the snapshot's name)."""
        return self.archive.rpartition("/")[2][: -len(ARCHIVE_SUFFIX)]

    @property
    def area(self) -> str:
        """The directory that holds the archive ("" = the share root)."""
        return self.archive.rpartition("/")[0]

    def option(self, key: str) -> str | None:
        return dict(self.options).get(key)

    def source_volume(self) -> VolumeId:
        return VolumeId(self.source, self.source_dir, self.source_on_delete, self.options)

    def format(self) -> str:
        fields = [
            VERSION,
            self.source.protocol,
            self.source.host_port,
            self.source.share,
            self.archive,
            self.source_dir,
            self.source_on_delete,
        ]
        if self.options:
            fields.append(",".join(f"{k}={v}" for k, v in self.options))
        return "#".join(quote(f, safe=_SAFE) for f in fields)

    def __str__(self) -> str:
        return self.format()


def _share(protocol: str, text: str) -> str:
    if protocol == "smb":
        return paths.check_component(text, what="snapshot ID share")
    if not text.startswith("/"):
        raise InvalidArgument("snapshot ID: NFS export must be absolute")
    if text != "/":
        paths.safe_relpath(text[1:], what="snapshot ID export")
    return text


def parse_snapshot_id(text: str) -> SnapshotId:
    """Parse a snapshot ID; InvalidArgument for anything malformed."""
    if len(text) > 4096:
        raise InvalidArgument("snapshot ID: too long")
    raw = text.split("#")
    if len(raw) not in (7, 8) or raw[0] != VERSION:
        raise InvalidArgument("snapshot ID: not an s1 csi-driver-smb-nfs snapshot ID")
    try:
        fields = [unquote(f, errors="strict") for f in raw]
    except UnicodeDecodeError as exc:
        raise InvalidArgument("snapshot ID: invalid percent-encoding") from exc
    _, protocol, hostport, share, archive, source_dir, on_delete, *rest = fields
    if protocol not in PROTOCOLS:
        raise InvalidArgument(f"snapshot ID: unknown protocol {protocol!r}")
    server, port = parse_host_port(hostport, what="snapshot ID")
    options: list[tuple[str, str]] = []
    if rest:
        if not rest[0]:
            raise InvalidArgument("snapshot ID: empty options field")
        for item in rest[0].split(","):
            key, sep, value = item.partition("=")
            if not sep:
                raise InvalidArgument("snapshot ID: options must be key=value")
            options.append((key, value))
    if on_delete not in ON_DELETE:
        raise InvalidArgument(f"snapshot ID: onDelete {on_delete!r} is not valid")
    sid = SnapshotId(
        source=Source(protocol, server, port, _share(protocol, share)),
        archive=archive,
        source_dir=source_dir,
        source_on_delete=on_delete,
        options=tuple(options),
    )
    if sid.format() != text:
        raise InvalidArgument("snapshot ID: not in canonical form")
    return sid
