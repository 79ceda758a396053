"""What the in-guest test files share: the guest's servers and the requests
for one volume (the ``tmp`` fixture is in this directory's conftest.py).

Imported only inside the UML guest (the files importing it are never
collected on the host).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from driver.csi import csi_pb2
from node.linux import mountinfo
from tests.csi_requests import cap
from tests.secret_scan import register_secret

if not (os.path.exists("/run/e2e-guest") and os.environ.get("CSI_E2E_INSIDE") == "1"):
    pytest.fail(
        "tests/e2e/inside/ runs only inside the UML guest: run tests/e2e/test_node_e2e.py "
        "or tests/e2e/test_node_faults_e2e.py",
        pytrace=False,
    )

# Read once and removed from the environment, so that processes the tests
# start (mount, mount.cifs, driver processes) do not inherit it: the scans
# of /proc and of the driver logs then prove the driver never hands it on.
SMB_PASSWORD = register_secret(os.environ.pop("SMB_PASSWORD"))
SMB_USER = os.environ["SMB_USER"]
SMB_SHARE = os.environ["SMB_SHARE"]
SMB_DIR = Path(os.environ["SMB_SHARE_DIR"])
NFS_DIR = Path(os.environ["NFS_EXPORT_DIR"])
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
