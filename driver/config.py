"""Command-line flags → one validated, frozen configuration object."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import Literal

from driver.errors import InvalidArgument
from driver.source import parse_host_port

Mode = Literal["all", "controller", "node"]
LogFormat = Literal["json", "text"]

DEFAULT_ENDPOINT = "unix:///csi/csi.sock"
DEFAULT_DRIVER_NAME = "smb-nfs.csi.io"
DEFAULT_KUBELET_DIR = "C:\\var\\lib\\kubelet" if sys.platform == "win32" else "/var/lib/kubelet"
# CSI: at most 63 characters, alphanumerics, '-', '.', starting and ending alnum.
_DRIVER_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: Literal["unix", "tcp"]
    path: str = ""  # unix
    host: str = ""  # tcp
    port: int = 0  # tcp

    @property
    def grpc_target(self) -> str:
        """The address string grpc understands (server bind or client dial)."""
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        return f"tcp://{self.grpc_target}"

    @property
    def is_loopback(self) -> bool:
        """A tcp endpoint only this host can reach (127.0.0.0/8, ::1, localhost)."""
        if self.scheme != "tcp":
            return False
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.split("%")[0]).is_loopback
        except ValueError:
            return False


def check_serve_endpoint(endpoint: Endpoint) -> None:
    """The driver serves without authentication: a tcp endpoint must be
    loopback only (on Windows, csi-grpc-proxy bridges kubelet's socket to it)."""
    if endpoint.scheme == "tcp" and not endpoint.is_loopback:
        raise InvalidArgument(
            f"--endpoint {endpoint}: a tcp endpoint must be a loopback address "
            "(127.0.0.1, ::1 or localhost): the CSI API has no authentication"
        )


def parse_endpoint(text: str) -> Endpoint:
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path.startswith("/") and not path.startswith("./"):
            # unix:///abs/path or unix://./relative — a bare relative path is
            # almost always a missing slash.
            raise InvalidArgument(f"endpoint {text!r}: use unix:///absolute/path")
        if "\x00" in path:
            raise InvalidArgument("endpoint: NUL in socket path")
        # grpc only takes absolute unix:// paths: resolve ./relative ones here.
        return Endpoint("unix", path=os.path.abspath(path))
    if text.startswith("tcp://"):
        host, port = parse_host_port(text[len("tcp://") :].rstrip("/"), what="endpoint")
        if port is None:
            raise InvalidArgument(f"endpoint {text!r}: tcp endpoints need a port")
        return Endpoint("tcp", host=host, port=port)
    raise InvalidArgument(f"endpoint {text!r}: expected unix://PATH or tcp://HOST:PORT")


def parse_host_port_flag(text: str, *, what: str) -> tuple[str, int]:
    host, port = parse_host_port(text, what=what)
    if port is None:
        raise InvalidArgument(f"{what}: expected HOST:PORT")
    return host, port


@dataclass(frozen=True, slots=True)
class Config:
    endpoint: Endpoint
    mode: Mode = "all"
    node_id: str = ""
    driver_name: str = DEFAULT_DRIVER_NAME
    metrics_address: tuple[str, int] | None = None
    log_format: LogFormat = "json"
    verbosity: int = 2
    grace_period: float = 30.0
    # Controller: bounds for user-space share clients.
    backend_timeout: float = 30.0
    backend_workers: int = 4  # archive (tar/gzip) threads for snapshots and clones
    # Node: bound on one mount/unmount command.
    mount_timeout: float = 110.0
    # Node: bound on one health/stats probe of a mounted volume.
    health_timeout: float = 5.0
    # Linux node: the non-root user cifs.upcall reads Kerberos tickets as (cruid).
    krb5_uid: int = 10002
    # Windows node: SMB encryption for global mappings; read-only requests.
    windows_require_privacy: bool = True
    windows_read_only: Literal["refuse", "warn"] = "refuse"
    # Node: kubelet's root directory; node RPCs touch paths under its CSI
    # plugin directory and its pods directory only.
    kubelet_dir: str = DEFAULT_KUBELET_DIR

    @property
    def runs_controller(self) -> bool:
        return self.mode in ("all", "controller")

    @property
    def runs_node(self) -> bool:
        return self.mode in ("all", "node")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint", default=DEFAULT_ENDPOINT, help="unix://PATH or tcp://HOST:PORT"
    )
    parser.add_argument("--mode", choices=("all", "controller", "node"), default="all")
    parser.add_argument("--node-id", default="", help="node name (default: host name)")
    parser.add_argument("--driver-name", default=DEFAULT_DRIVER_NAME)
    parser.add_argument(
        "--metrics-address", default="", help="HOST:PORT for /metrics (off if unset)"
    )
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    parser.add_argument(
        "-v", "--v", dest="verbosity", type=int, default=2, help="log verbosity 0-5"
    )
    parser.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        help="seconds in-flight RPCs may take to finish on SIGTERM",
    )
    parser.add_argument(
        "--backend-timeout",
        type=float,
        default=30.0,
        help="controller: timeout of one SMB/NFS operation, seconds",
    )
    parser.add_argument(
        "--backend-workers",
        type=int,
        default=4,
        help="controller: threads for snapshot/clone archive work (tar, gzip)",
    )
    parser.add_argument(
        "--health-timeout",
        type=float,
        default=5.0,
        help="node: seconds a health/stats probe of a mount may take before it is abnormal",
    )
    parser.add_argument(
        "--windows-require-privacy",
        choices=("true", "false"),
        default="true",
        help="Windows node: New-SmbGlobalMapping -RequirePrivacy (SMB encryption)",
    )
    parser.add_argument(
        "--windows-read-only",
        choices=("refuse", "warn"),
        default="refuse",
        help="Windows node: a reader-only access mode on a volume the pod does not mount "
        "readOnly (nothing enforces it there): refuse, or accept with a warning",
    )
    parser.add_argument(
        "--kubelet-dir",
        default=DEFAULT_KUBELET_DIR,
        help="node: kubelet's root directory; staging and target paths outside "
        "DIR/plugins/kubernetes.io/csi/ and DIR/pods/ are refused "
        f"(default {DEFAULT_KUBELET_DIR})",
    )
    parser.add_argument(
        "--krb5-uid",
        type=int,
        default=10002,
        help="Linux node: uid (with a passwd entry in the image) that owns the per-volume "
        "Kerberos credential caches; cifs mounts use it as cruid",
    )
    parser.add_argument(
        "--mount-timeout",
        type=float,
        default=110.0,
        help="node: timeout of one mount command, seconds",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """Validate parsed flags; InvalidArgument names the bad flag."""
    endpoint = parse_endpoint(args.endpoint)
    check_serve_endpoint(endpoint)
    kubelet_dir = args.kubelet_dir
    if not kubelet_dir or "\x00" in kubelet_dir or not _is_absolute(kubelet_dir):
        raise InvalidArgument(f"--kubelet-dir {kubelet_dir!r}: must be an absolute path")
    if not _DRIVER_NAME.match(args.driver_name):
        raise InvalidArgument(
            f"--driver-name {args.driver_name!r}: at most 63 characters of [A-Za-z0-9.-], "
            "starting and ending with a letter or digit"
        )
    node_id = args.node_id or socket.gethostname()
    if len(node_id) > 128 or not node_id.isprintable():
        raise InvalidArgument("--node-id: at most 128 printable characters")
    metrics = None
    if args.metrics_address:
        metrics = parse_host_port_flag(args.metrics_address, what="--metrics-address")
    if not 0 <= args.verbosity <= 10:
        raise InvalidArgument("-v: verbosity must be between 0 and 10")
    for flag, value in (
        ("--grace-period", args.grace_period),
        ("--backend-timeout", args.backend_timeout),
        ("--mount-timeout", args.mount_timeout),
        ("--health-timeout", args.health_timeout),
    ):
        if not 0 < value <= 3600:
            raise InvalidArgument(f"{flag}: must be in (0, 3600] seconds")
    if not 0 < args.krb5_uid < 2**31 - 1:
        raise InvalidArgument("--krb5-uid: must be a non-root uid")
    if not 1 <= args.backend_workers <= 64:
        raise InvalidArgument("--backend-workers: must be between 1 and 64")
    return Config(
        endpoint=endpoint,
        mode=args.mode,
        node_id=node_id,
        driver_name=args.driver_name,
        metrics_address=metrics,
        log_format=args.log_format,
        verbosity=args.verbosity,
        grace_period=args.grace_period,
        backend_timeout=args.backend_timeout,
        backend_workers=args.backend_workers,
        mount_timeout=args.mount_timeout,
        health_timeout=args.health_timeout,
        krb5_uid=args.krb5_uid,
        windows_require_privacy=args.windows_require_privacy == "true",
        windows_read_only=args.windows_read_only,
        kubelet_dir=kubelet_dir,
    )


def _is_absolute(path: str) -> bool:
    # POSIX (/...) or Windows (C:\..., \...): the node platform checks it fully.
    return path.startswith(("/", "\\")) or (
        len(path) > 2 and path[0].isascii() and path[0].isalpha() and path[1:3] in (":\\", ":/")
    )
