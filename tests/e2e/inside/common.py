"""What the in-guest test files share: the guest's servers' settings, the
driver in-process, the requests for one volume and the checks on it (the
``tmp`` fixture is in this directory's conftest.py; acting on the servers is
in servers.py).

Imported only inside the UML guest (the files importing it are never
collected on the host).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.service import build as build_controller
from driver.config import Config, parse_endpoint
from driver.csi import csi_pb2
from driver.plugin import ServicePlugin
from driver.server import DriverServer
from node.linux import PROBE_TIMEOUT, LinuxPlatform, mountinfo
from node.service import NodePlugin
from tests.csi_requests import cap
from tests.harness import Client, running_driver
from tests.secret_scan import register_secret

if not (os.path.exists("/run/e2e-guest") and os.environ.get("CSI_E2E_INSIDE") == "1"):
    pytest.fail(
        "tests/e2e/inside/ runs only inside the UML guest: run its host test, "
        "tests/e2e/test_*_e2e.py (test_kerberos_e2e.py for kerberos_inside.py)",
        pytrace=False,
    )

# The guest's plain Samba and NFS servers; a guest booted with the AD DC
# instead (kerberos_inside.py) has none of them, and its tests use none of these.
# The password is read once and removed from the environment, so that
# processes the tests start (mount, mount.cifs, driver processes) do not
# inherit it: the scans of /proc and of the driver logs then prove the driver
# never hands it on.
SMB_PASSWORD = register_secret(os.environ.pop("SMB_PASSWORD", ""))
SMB_USER = os.environ.get("SMB_USER", "")
SMB_SHARE = os.environ.get("SMB_SHARE", "")
SMB_DIR = Path(os.environ.get("SMB_SHARE_DIR", "/nonexistent"))
NFS_DIR = Path(os.environ.get("NFS_EXPORT_DIR", "/nonexistent"))
AM = csi_pb2.VolumeCapability.AccessMode
# kubelet's layout under the test's kubelet directory (the driver's --kubelet-dir):
# staging paths below this, pod targets below ``pods``.
STAGING = "plugins/kubernetes.io/csi/smb-nfs.csi.io"


@dataclass
class Volume:
    """A volume as the node sees it, and the requests kubelet would send for it."""

    id: str
    context: dict[str, str]
    flags: tuple[str, ...]
    secrets: dict[str, str]
    staging: Path
    server_dir: Path

    def stage(self) -> Any:
        return csi_pb2.NodeStageVolumeRequest(
            volume_id=self.id,
            staging_target_path=str(self.staging),
            volume_capability=cap(*self.flags),
            volume_context=self.context,
            secrets=self.secrets,
        )

    def unstage(self) -> Any:
        return csi_pb2.NodeUnstageVolumeRequest(
            volume_id=self.id, staging_target_path=str(self.staging)
        )

    def publish(self, target: Path, *, readonly: bool = False) -> Any:
        return csi_pb2.NodePublishVolumeRequest(
            volume_id=self.id,
            staging_target_path=str(self.staging),
            target_path=str(target),
            volume_capability=cap(*self.flags),
            volume_context=self.context,
            readonly=readonly,
        )

    def unpublish(self, target: Path) -> Any:
        return csi_pb2.NodeUnpublishVolumeRequest(volume_id=self.id, target_path=str(target))

    def stats(self, path: Path | None = None) -> Any:
        return csi_pb2.NodeGetVolumeStatsRequest(
            volume_id=self.id, volume_path=str(path or self.staging)
        )


def mounts_under(path: Path) -> list[mountinfo.MountEntry]:
    prefix = str(path) + "/"
    return [e for e in mountinfo.read() if (e.mount_point + "/").startswith(prefix)]


@asynccontextmanager
async def in_process_driver(
    tmp: Path,
    *,
    mount_timeout: float = 30.0,
    backend_timeout: float = 10.0,
    probe_timeout: float | None = None,
    metrics: bool = False,
    controller: bool = True,
    config: dict[str, Any] | None = None,
    **platform: Any,
) -> AsyncIterator[tuple[DriverServer, Client]]:
    """Controller (unless not ``controller``) and node in this process on
    ``tmp/csi.sock``, kubelet's directory ``tmp/kubelet``; and a client.
    ``probe_timeout``: the node's health probe bound (default: the
    configuration's); ``config``: more Config fields; ``platform``: more
    LinuxPlatform arguments."""
    cfg = Config(
        endpoint=parse_endpoint(f"unix://{tmp}/csi.sock"),
        node_id="e2e",
        mount_timeout=mount_timeout,
        backend_timeout=backend_timeout,
        kubelet_dir=str(tmp / "kubelet"),
        **(config or {}),
    )
    node = NodePlugin(cfg, LinuxPlatform(cfg, probe_timeout=probe_timeout, **platform))
    plugins: list[ServicePlugin] = [build_controller(cfg), node] if controller else [node]
    async with running_driver(tmp / "csi.sock", plugins, metrics=metrics) as pair:
        yield pair


async def create_volume(
    c: Client,
    tmp: Path,
    name: str,
    source: str,
    server_dir: Path,
    *flags: str,
    secrets: dict[str, str] | None = None,
) -> Volume:
    """CreateVolume of ``name`` on ``source`` (SMB with the guest's user unless
    ``secrets`` says otherwise), checked on the server's side (``server_dir``);
    the volume as the node sees it."""
    if secrets is None:
        smb = source.startswith("//")
        secrets = {"username": SMB_USER, "password": SMB_PASSWORD} if smb else {}
    resp = await c.controller.CreateVolume(
        csi_pb2.CreateVolumeRequest(
            name=name,
            parameters={"source": source},
            volume_capabilities=[cap(*flags)],
            secrets=secrets,
        )
    )
    vol = resp.volume
    assert (server_dir / name).is_dir(), f"the controller did not create {server_dir / name}"
    return Volume(
        vol.volume_id,
        dict(vol.volume_context),
        flags,
        secrets,
        tmp / "kubelet" / STAGING / name / "globalmount",
        server_dir / name,
    )


async def delete_volume(c: Client, vol: Volume) -> None:
    """DeleteVolume with the volume's secrets, checked on the server's side."""
    await c.controller.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=vol.id, secrets=vol.secrets)
    )
    assert not vol.server_dir.exists()


def inline_publish(
    target: Path,
    attrs: dict[str, str],
    secrets: dict[str, str],
    *,
    volume_id: str = "csi-e2e-inline",
    **kw: Any,
) -> Any:
    """kubelet's NodePublishVolume of a CSI inline (ephemeral) volume with
    the pod's ``attrs`` and ``secrets``."""
    return csi_pb2.NodePublishVolumeRequest(
        volume_id=volume_id,
        target_path=str(target),
        volume_capability=cap(),
        volume_context={
            "csi.storage.k8s.io/ephemeral": "true",
            "csi.storage.k8s.io/pod.name": "inline-pod",
            **attrs,
        },
        secrets=secrets,
        **kw,
    )


def write_through(target: Path, name: str, text: str) -> None:
    """Write a file through a mount, all the way to the server (fsync)."""
    with (target / name).open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


async def until_healthy(
    node: Any, vol: Volume, timeout: float, *, path: Path | None = None, every: float = 0.5
) -> float:
    """Seconds until NodeGetVolumeStats of ``path`` (the staging path by
    default) reports the volume healthy; -1 if not within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        resp = await node.NodeGetVolumeStats(vol.stats(path), timeout=PROBE_TIMEOUT + 10)
        if not resp.volume_condition.abnormal:
            return time.monotonic() - start
        await asyncio.sleep(every)
    return -1.0


async def healthy_again(
    node: Any,
    vol: Volume,
    within: float,
    *,
    path: Path | None = None,
    every: float = 0.5,
    stage_timeout: float | None = None,
) -> tuple[float, bool]:
    """After a server came back: seconds until the volume is healthy by itself
    (``within``), else after a re-stage (10 s more); and whether the re-stage
    was needed.  Fails if neither heals it."""
    healed = await until_healthy(node, vol, within, path=path, every=every)
    restaged = healed < 0
    if restaged:  # not by itself: a re-stage repairs it
        await node.NodeStageVolume(vol.stage(), timeout=stage_timeout)
        healed = await until_healthy(node, vol, 10, path=path, every=every)
    assert healed >= 0, "still abnormal after the server came back and a re-stage"
    return healed, restaged


@dataclass
class ProcessScan:
    """Looks at every process again and again, in a thread, while a block runs
    (a mount, say): a subclass says what one pass looks at (``scan_once``)."""

    passes: int = field(default=0, kw_only=True)
    _stop: threading.Event = field(default_factory=threading.Event, kw_only=True)

    def scan_once(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self._stop.is_set():
            self.scan_once()
            self.passes += 1

    @asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join(10)
