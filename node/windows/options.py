"""What a Windows node makes of a volume's source (server name, port), its
mount options and its read-only request: pure checks, no host calls."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from driver.errors import FailedPrecondition, InvalidArgument
from driver.log import get_logger
from driver.source import Source
from node.platform import PublishRequest
from node.windows.paths import parse_bool

log = get_logger("node.windows")

SMB_PORT = 445
# Names only cluster DNS answers: <service>.<namespace>.svc[.cluster.local].
_CLUSTER_SUFFIXES = (".svc", ".cluster.local")


def port_message(port: int) -> str:
    return (
        f"SMB port {port}: Windows maps SMB shares (New-SmbGlobalMapping) on port {SMB_PORT} "
        "only; serve the share on 445 for Windows nodes"
    )


def require_privacy(source: Source, options: Iterable[str], default: bool) -> bool:
    """RequirePrivacy from the mount options; refuse ports other than 445."""
    if source.port is not None and source.port != SMB_PORT:
        raise FailedPrecondition(port_message(source.port))
    privacy = default
    for option in options:
        key, has_value, value = option.partition("=")
        key = key.strip().lower()
        if key == "requireprivacy":
            privacy = parse_bool(value, what="mount option requirePrivacy")
        elif key == "seal" and not has_value:
            privacy = True
        elif key == "port":
            if not value.strip().isdigit():
                raise InvalidArgument(f"mount option port: {value!r} is not a number")
            if int(value) != SMB_PORT:
                raise FailedPrecondition(port_message(int(value)))
        else:
            log.debug("mount option has no meaning on Windows; ignored", option=key)
    return privacy


def is_cluster_dns_name(server: str) -> bool:
    """A Kubernetes Service name (``*.svc``, ``*.cluster.local``)."""
    name = server.rstrip(".").lower()
    return name.endswith(_CLUSTER_SUFFIXES)


def check_server_name(source: Source) -> None:
    """Refuse a server name the Windows host cannot resolve.

    A HostProcess pod uses the host's DNS, not the cluster's (ClusterFirst
    does not apply there), so a Service name that works on the controller and
    on Linux nodes fails on Windows with error 53 "network path not found".
    """
    if is_cluster_dns_name(source.server):
        raise FailedPrecondition(
            f"SMB server {source.server!r} is a cluster Service name: Windows nodes run the "
            "driver as a HostProcess container with the host's DNS, which cannot resolve "
            "cluster names (Windows error 53); use a name or address the Windows host "
            "resolves (an external DNS record, a LoadBalancer or node address)"
        )


def check_read_only(request: PublishRequest, mode: Literal["refuse", "warn"]) -> None:
    """Read-only is enforced by the container runtime, when kubelet asks it.

    kubelet passes the pod's ``readOnly`` (PVC or PV ``csi.readOnly``) to
    the runtime as well as to NodePublish (containerd → hcsshim ``ro``), so
    such publishes are read-only in the container.  A reader-only access
    mode alone (``readonly`` false) reaches only this driver, and a
    directory symlink cannot be read-only: nothing would enforce it.
    ``mode`` is ``--windows-read-only``: refuse such a publish, or warn.
    """
    if not request.read_only or request.readonly_flag:
        return
    if mode == "warn":
        log.warning(
            "reader-only access mode without readOnly on the pod's volume: not enforceable "
            "on Windows; the volume is writable unless the SMB account is read-only",
            volume_id=request.volume_id,
        )
        return
    raise InvalidArgument(
        "NodePublishVolume: the access mode is read-only but the volume is not published "
        "read-only (readonly=false); on Windows only the container runtime enforces "
        "read-only, and kubelet asks it to only for readOnly volumes: set readOnly: true "
        "on the pod's persistentVolumeClaim volume (or csi.readOnly on the PV), or run the "
        "driver with --windows-read-only=warn to accept such volumes writable"
    )
