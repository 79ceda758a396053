"""StorageClass parameters of CreateVolume → one validated request.

Keys are case-insensitive.  Unknown keys are InvalidArgument naming the key;
keys under ``csi.storage.k8s.io/`` are set by Kubernetes and are accepted (the
PVC/PV metadata ones feed the ``subDir`` template).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from controller.dual import DUAL_KEYS, check_dual_mount_flags, parse_dual, scoped_mount_options
from driver import paths
from driver.dual import DualSources
from driver.errors import InvalidArgument
from driver.modes import parse_octal_mode
from driver.source import Source, parse_source
from driver.volume_id import ON_DELETE, OnDelete

PVC_NAME = "csi.storage.k8s.io/pvc/name"
PVC_NAMESPACE = "csi.storage.k8s.io/pvc/namespace"
PV_NAME = "csi.storage.k8s.io/pv/name"
RESERVED_PREFIX = "csi.storage.k8s.io/"

_KNOWN = {
    "source",
    "protocol",
    "subdir",
    "ondelete",
    "mountpermissions",
    "smbsource",
    "nfssource",
    "provisionvia",
    "linuxprotocol",
}
_TEMPLATE = re.compile(r"\$\{([^}]*)\}")
_TEMPLATE_KEYS = {
    "pvc.metadata.name": PVC_NAME,
    "pvc.metadata.namespace": PVC_NAMESPACE,
    "pv.metadata.name": PV_NAME,
}
NFS_VERSIONS = ("3", "4", "4.0", "4.1", "4.2")
#: The default snapshot area: this directory beside the volume's directory.
SNAPSHOT_AREA = ".snapshots"
#: Prefix of the temporary directory a restore or clone fills before the rename.
TEMP_PREFIX = ".csi-tmp-"
#: Beside the volumes: deleted trees wait here for the purge (controller.trash).
TRASH_DIR = ".csi-trash"
_SNAPSHOT_KNOWN = {"snapshotdir"}


@dataclass(frozen=True, slots=True)
class VolumeParams:
    source: Source
    subdir: str  # relative to source.base
    on_delete: OnDelete
    mount_permissions: int | None
    nfs_version: str | None  # from mount options; None = backend default
    dual: DualSources | None = None  # dual-protocol: source is its provisionVia side

    @property
    def dir(self) -> str:
        """The volume's directory relative to the share root."""
        return paths.join(self.source.base, self.subdir)


def render_template(template: str, metadata: Mapping[str, str]) -> str:
    """Expand ``${pvc.metadata.name}`` style placeholders."""

    def replace(match: re.Match[str]) -> str:
        key = match.group(1).strip()
        if key not in _TEMPLATE_KEYS:
            known = ", ".join("${" + k + "}" for k in _TEMPLATE_KEYS)
            raise InvalidArgument(f"subDir: unknown placeholder ${{{key}}} (known: {known})")
        value = metadata.get(_TEMPLATE_KEYS[key], "")
        if not value:
            raise InvalidArgument(
                f"subDir: ${{{key}}} needs {_TEMPLATE_KEYS[key]}; run csi-provisioner "
                "with --extra-create-metadata"
            )
        if "/" in value:
            raise InvalidArgument(f"subDir: value of ${{{key}}} contains '/'")
        return value

    rendered = _TEMPLATE.sub(replace, template)
    if "${" in rendered or "$(" in rendered:
        raise InvalidArgument("subDir: unbalanced placeholder")
    return rendered


def parse_mount_permissions(text: str) -> int:
    return parse_octal_mode(text, what="mountPermissions")


def options_from_mount_flags(flags: Sequence[str]) -> dict[str, str]:
    """Split mount flags (``["vers=3", "hard"]`` or ``["vers=3,hard"]``)."""
    out: dict[str, str] = {}
    for flag in flags:
        for raw in flag.split(","):
            item = raw.strip()
            if not item:
                continue
            key, _, value = item.partition("=")
            out[key.strip().lower()] = value.strip()
    return out


def nfs_version_from(options: Mapping[str, str]) -> str | None:
    version = options.get("nfsvers") or options.get("vers")
    if version is None:
        if "minorversion" in options:
            version = "4." + options["minorversion"]
        else:
            return None
    if version not in NFS_VERSIONS:
        raise InvalidArgument(
            f"mount options: NFS version {version!r} is not one of {NFS_VERSIONS}"
        )
    return "4.0" if version == "4" else version


def _lowered(
    parameters: Mapping[str, str], known: AbstractSet[str], what: str, known_text: str
) -> dict[str, str]:
    """The parameters by lower-cased key, the CO's reserved ones left out;
    an unknown or twice-given key is InvalidArgument."""
    lowered: dict[str, str] = {}
    for key, value in parameters.items():
        low = key.lower()
        if low.startswith(RESERVED_PREFIX):
            continue
        if low not in known:
            raise InvalidArgument(f"unknown {what} {key!r} (known: {known_text})")
        if low in lowered:
            raise InvalidArgument(f"parameter {key!r} given twice (keys are case-insensitive)")
        lowered[low] = value
    return lowered


def parse_params(
    name: str, parameters: Mapping[str, str], mount_flags: Sequence[str] = ()
) -> VolumeParams:
    lowered = _lowered(
        parameters,
        _KNOWN,
        "parameter",
        "source, protocol, subDir, onDelete, mountPermissions, smbSource, nfsSource, "
        "provisionVia, linuxProtocol",
    )
    metadata = {
        k.lower(): v for k, v in parameters.items() if k.lower().startswith(RESERVED_PREFIX)
    }
    dual: DualSources | None = None
    if DUAL_KEYS & lowered.keys():
        check_dual_mount_flags(mount_flags)
        scoped = scoped_mount_options(mount_flags)
        dual = parse_dual(lowered, {p: options_from_mount_flags(f) for p, f in scoped.items()})
        source = dual.tree(dual.provision_via)
        options = options_from_mount_flags(scoped["nfs"])
    else:
        source, options = _single_source(lowered, mount_flags)

    template = lowered.get("subdir", "").strip() or name
    subdir = render_template(template, metadata).strip("/")
    paths.safe_relpath(subdir, what="subDir")

    on_delete = lowered.get("ondelete", "delete").strip().lower() or "delete"
    if on_delete not in ON_DELETE:
        raise InvalidArgument(f"onDelete: {on_delete!r} is not one of delete, retain, archive")
    if TRASH_DIR in subdir.split("/"):
        raise InvalidArgument(f"subDir: {TRASH_DIR!r} is kept for deleted volumes being purged")
    leaf = subdir.rpartition("/")[2]
    if leaf.startswith("archived-"):
        raise InvalidArgument("subDir: names starting with 'archived-' are kept for archives")
    if leaf == SNAPSHOT_AREA or leaf.startswith(TEMP_PREFIX):
        raise InvalidArgument(
            f"subDir: {SNAPSHOT_AREA!r} and names starting with {TEMP_PREFIX!r} are kept for "
            "snapshots and restores"
        )

    mode = None
    if lowered.get("mountpermissions", "").strip():
        mode = parse_mount_permissions(lowered["mountpermissions"])
    nfs_version = nfs_version_from(options) if source.protocol == "nfs" or dual else None
    return VolumeParams(source, subdir, on_delete, mode, nfs_version, dual)


def _single_source(
    lowered: Mapping[str, str], mount_flags: Sequence[str]
) -> tuple[Source, dict[str, str]]:
    """``source`` (and ``protocol``), with a ``port=`` mount option applied."""
    if not lowered.get("source", "").strip():
        raise InvalidArgument("parameter 'source' is required (//server/share or server:/export)")
    source = parse_source(lowered["source"], lowered.get("protocol") or None)

    options = options_from_mount_flags(mount_flags)
    if "port" in options:
        if not options["port"].isdigit() or not 0 < int(options["port"]) < 65536:
            raise InvalidArgument(f"mount options: port {options['port']!r} is not valid")
        port = int(options["port"])
        if source.port is not None and source.port != port:
            raise InvalidArgument("mount option port= contradicts the port in source")
        source = Source(source.protocol, source.server, port, source.share, source.base)
    return source, options


@dataclass(frozen=True, slots=True)
class SnapshotParams:
    snapshot_dir: str | None  # relative to the share root; None: the default area


def parse_snapshot_params(parameters: Mapping[str, str]) -> SnapshotParams:
    """VolumeSnapshotClass parameters of CreateSnapshot (case-insensitive keys).

    ``snapshotDir``: the directory, relative to the share root, that holds
    the archives.  Default: ``.snapshots`` beside the volume's directory.
    """
    lowered = _lowered(parameters, _SNAPSHOT_KNOWN, "snapshot parameter", "snapshotDir")
    text = lowered.get("snapshotdir", "").strip().strip("/")
    if not text:
        return SnapshotParams(None)
    paths.safe_relpath(text, what="snapshotDir")
    return SnapshotParams(text)


def default_snapshot_area(volume_dir: str) -> str:
    """``.snapshots`` beside the volume's directory."""
    parent, _ = paths.parent_and_leaf(volume_dir)
    return paths.join(parent, SNAPSHOT_AREA)
