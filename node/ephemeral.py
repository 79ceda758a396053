"""CSI inline ephemeral volumes: a pod's ``csi:`` volume with attributes.

kubelet calls NodePublishVolume with ``csi.storage.k8s.io/ephemeral: "true"``
in the volume context (the CSIDriver has ``podInfoOnMount``), the pod's
``volumeAttributes`` beside it, no staging path, and the pod's
``nodePublishSecretRef`` as the request's secrets.  The volume is an
existing directory of a share: nothing is created or deleted on the server.

Attributes (keys case-insensitive): ``source`` (required, the StorageClass
syntax), ``subDir`` (optional, relative to ``source``, never leaving it) and
``mountOptions`` (comma-separated).  kubelet's own ``csi.storage.k8s.io/*``
keys are ignored; any other key is InvalidArgument, naming it.

Pure: validation and the resulting :class:`~node.platform.StageRequest`.
"""

from __future__ import annotations

from collections.abc import Mapping

from driver import paths
from driver.errors import InvalidArgument
from driver.source import parse_source
from node.platform import StageRequest
from node.stage_auth import with_auth

EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"
_KUBELET_PREFIX = "csi.storage.k8s.io/"
ATTRIBUTES = ("source", "subDir", "mountOptions")
_BY_LOWER = {name.lower(): name for name in ATTRIBUTES}


def is_ephemeral(context: Mapping[str, str]) -> bool:
    return context.get(EPHEMERAL_KEY, "").strip().lower() == "true"


def attributes(context: Mapping[str, str]) -> dict[str, str]:
    """The pod's attributes by canonical name; InvalidArgument for unknown
    or repeated keys."""
    found: dict[str, str] = {}
    for key, value in context.items():
        if key.lower().startswith(_KUBELET_PREFIX):
            continue
        name = _BY_LOWER.get(key.lower())
        if name is None:
            raise InvalidArgument(
                f"volumeAttributes: unknown key {key!r} "
                f"(an inline volume takes {', '.join(ATTRIBUTES)})"
            )
        if name in found:
            raise InvalidArgument(f"volumeAttributes: {name!r} is given twice")
        found[name] = value
    return found


def ephemeral_volume(
    volume_id: str,
    context: Mapping[str, str],
    secrets: Mapping[str, str],
    *,
    target_path: str,
    read_only: bool,
    mount_group: str = "",
) -> StageRequest:
    """The share directory an inline volume mounts at ``target_path``."""
    attrs = attributes(context)
    text = attrs.get("source", "").strip()
    if not text:
        raise InvalidArgument(
            "volumeAttributes: 'source' is required (//server/share or server:/export)"
        )
    src = parse_source(text)
    subdir = attrs.get("subDir", "").strip()
    if subdir:
        paths.safe_relpath(subdir.rstrip("/"), what="volumeAttributes subDir")
    options = tuple(o.strip() for o in attrs.get("mountOptions", "").split(",") if o.strip())
    volume = StageRequest(
        volume_id=volume_id,
        source=src.share_root,
        subdir=paths.join(src.base, subdir.rstrip("/")),
        staging_path=target_path,
        mount_options=options,
        mount_group=mount_group,
        read_only=read_only,
    )
    # A password or Kerberos keys, as for a staged volume.
    return with_auth(volume, secrets, which="nodePublishSecretRef secret")
