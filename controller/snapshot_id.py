"""Self-describing, versioned snapshot IDs.

Format (fields separated by ``#``, each percent-encoded like the volume ID)::

    s1#<protocol>#<server[:port]>#<share>#<archive>#<source dir>#<source onDelete>[#<options>]

* ``archive`` -- the archive's path relative to the share root; it ends in
  ``.tar.gz`` and never lies inside the source volume's directory
* ``source dir`` / ``source onDelete`` -- the source volume's directory and
  delete policy: with the other fields they give back the source volume ID
* ``options`` -- as in the volume ID (``vers=4.1`` for NFS)

Example: ``s1#nfs#10.0.0.5#/export#k8s/.snapshots/snap-1.tar.gz#k8s/pvc-1#delete#vers=4.1``.

Snapshots of dual-protocol volumes (``driver.dual``) keep both sources, with
the dual tree fields of the v2 volume ID::

    s2#<provisionVia>#<linuxProtocol>#<smb server>#<smb share>#<smb base>
      #<nfs server>#<nfs export>#<archive>#<source subdir>#<source onDelete>[#<options>]

(one line, wrapped here)

``archive`` is relative to the provisionVia side's share root (as in s1),
``source subdir`` relative to the tree (as in v2).

Everything DeleteSnapshot, ListSnapshots and a restore need is in the ID, so
the controller keeps no state.  Parsing is strict: only the canonical
encoding of a valid ID is accepted, and both paths must be clean relative
paths (``driver.paths``), so no ID can point outside its share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from driver import paths
from driver.dual import DualSources
from driver.errors import InvalidArgument
from driver.source import Source
from driver.volume_id import (
    OnDelete,
    VolumeId,
    decode_dual_id,
    decode_id,
    encode_dual_id,
    encode_id,
    on_delete_value,
)

VERSION = "s1"
DUAL_VERSION = "s2"
ARCHIVE_SUFFIX = ".tar.gz"


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
    dual: DualSources | None = None  # the source volume's dual tree, if it has one

    def __post_init__(self) -> None:
        # The source volume ID validates server, share, dir, options and the tree.
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
        return VolumeId(
            self.source, self.source_dir, self.source_on_delete, self.options, self.dual
        )

    def format(self) -> str:
        if self.dual is not None:
            middle = (self.archive, self.source_volume().subdir, self.source_on_delete)
            return encode_dual_id(DUAL_VERSION, self.dual, middle, self.options)
        middle = (self.archive, self.source_dir, self.source_on_delete)
        return encode_id(VERSION, self.source, middle, self.options)

    def __str__(self) -> str:
        return self.format()


def parse_snapshot_id(text: str) -> SnapshotId:
    """Parse a snapshot ID (s1 or s2); InvalidArgument for anything malformed."""
    what = "snapshot ID"
    if text.startswith(DUAL_VERSION + "#"):
        dual = decode_dual_id(text, version=DUAL_VERSION, middle=3, what=what)
        archive, subdir, on_delete = dual.middle
        when = on_delete_value(on_delete, what=what)
        source, source_dir = dual.provision_side(subdir, what=f"{what} source")
        sid = SnapshotId(source, archive, source_dir, when, dual.options, dual.dual)
    else:
        decoded = decode_id(text, version=VERSION, middle=3, what=what)
        archive, source_dir, on_delete = decoded.middle
        when = on_delete_value(on_delete, what=what)
        sid = SnapshotId(decoded.source, archive, source_dir, when, decoded.options)
    if sid.format() != text:
        raise InvalidArgument(f"{what}: not in canonical form")
    return sid
