"""Runs INSIDE the UML guest (tests/image/test_node_in_guest.py boots it): the
driver FROM THE IMAGE'S ROOT FILESYSTEM stages and publishes real kernel cifs
and NFS volumes against Samba and the kernel NFS server on the guest's
loopback.

As in the chart's node DaemonSet: the image's ``tini -- csi-smb-nfs serve``
as root, the kubelet directory shared both ways (Bidirectional propagation),
the plugin socket on a host directory. The guest's own Python only plays
kubelet (the gRPC client) and checks the result from outside the image.

Not named ``test_*.py``: a host ``pytest tests/image`` never collects it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from driver.csi import csi_pb2, csi_pb2_grpc
from tests.e2e.inside.common import (
    NFS_DIR,
    SMB_DIR,
    SMB_PASSWORD,
    SMB_SHARE,
    SMB_USER,
    cap,
    mounts_under,
)
from tests.harness import stop_process
from tests.secret_scan import watch_log_file

pytestmark = pytest.mark.e2e

IMAGE_ROOTFS = Path(os.environ["IMAGE_ROOTFS"])
IMAGE_ENV: dict[str, str] = json.loads(os.environ["IMAGE_ENV"])
KUBELET = "/var/lib/kubelet"  # the driver's default --kubelet-dir, inside the image
PLUGIN = "smb-nfs.csi.io"


def sh(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


@dataclass
class Node:
    """The image's node plugin and the paths kubelet would use."""

    root: Path  # the image's root filesystem (with the binds below)
    kubelet: Path  # the guest's kubelet dir: the same mounts as root/var/lib/kubelet
    node: csi_pb2_grpc.NodeStub
    controller: csi_pb2_grpc.ControllerStub
    identity: csi_pb2_grpc.IdentityStub
    pid: int

    def staging(self, name: str) -> str:
        return f"{KUBELET}/plugins/kubernetes.io/csi/{PLUGIN}/{name}/globalmount"

    def target(self, pod: str, name: str) -> str:
        return f"{KUBELET}/pods/{pod}/volumes/kubernetes.io~csi/{name}/mount"

    def outside(self, inside: str) -> Path:
        """Where a path of the image's kubelet dir is seen from the guest."""
        return self.kubelet / Path(inside).relative_to(KUBELET)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    root = IMAGE_ROOTFS
    kubelet = tmp_path / "kubelet"
    sockets = tmp_path / "csi"
    for d in (kubelet, sockets):
        d.mkdir()
    # The guest's /var (and so the image's files) is a throw-away overlay:
    # creating mount points in the image changes nothing on the host.
    binds = []
    for inside in ("proc", "dev", "run", "tmp", "csi", KUBELET.lstrip("/")):
        (root / inside).mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "proc", "proc", str(root / "proc"))
    binds.append(root / "proc")
    sh("mount", "--rbind", "/dev", str(root / "dev"))
    sh("mount", "--make-rslave", str(root / "dev"))
    binds.append(root / "dev")
    for tmpfs in ("run", "tmp"):
        sh("mount", "-t", "tmpfs", tmpfs, str(root / tmpfs))
        binds.append(root / tmpfs)
    sh("mount", "--bind", str(sockets), str(root / "csi"))
    binds.append(root / "csi")
    # Bidirectional: a shared mount, bound into the image; mounts the driver
    # makes below it show up in the guest's kubelet dir and the reverse.
    sh("mount", "--bind", str(kubelet), str(kubelet))
    sh("mount", "--make-rshared", str(kubelet))
    sh("mount", "--rbind", str(kubelet), str(root / KUBELET.lstrip("/")))
    binds.append(root / KUBELET.lstrip("/"))
    for module in ("cifs", "nfs", "nfsv4"):
        subprocess.run(["modprobe", module], check=False)

    log = watch_log_file(tmp_path / "driver.log")
    argv = [
        "chroot", str(root), "tini", "-s", "--", "csi-smb-nfs", "serve", "--mode=all",
        "--endpoint=unix:///csi/csi.sock", "--node-id=image-guest", "--v=4",
        "--mount-timeout=60",
    ]  # fmt: skip
    env = {"HOME": "/root", **IMAGE_ENV}
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    channel = grpc.insecure_channel(f"unix://{sockets / 'csi.sock'}")
    try:
        identity = csi_pb2_grpc.IdentityStub(channel)
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the image's driver exited:\n{log.read_text()[-3000:]}"
            try:
                identity.Probe(csi_pb2.ProbeRequest(), timeout=2)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the image's driver never answered Probe"
                time.sleep(0.05)
        yield Node(
            root,
            kubelet,
            csi_pb2_grpc.NodeStub(channel),
            csi_pb2_grpc.ControllerStub(channel),
            identity,
            proc.pid,
        )
    finally:
        channel.close()
        stop_process(proc)
        for entry in reversed(mounts_under(kubelet)):
            subprocess.run(["umount", "-l", entry.mount_point], check=False)
        for path in reversed(binds):
            with suppress(subprocess.CalledProcessError):
                sh("umount", "-R", "-l", str(path))
        subprocess.run(["umount", "-l", str(kubelet)], check=False)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def mounts_below(path: Path) -> list[str]:
    """Mount points strictly below ``path`` (not its own shared bind)."""
    return [e.mount_point for e in mounts_under(path) if e.mount_point != str(path)]


def runs_from_the_image(pid: int) -> bool:
    """The driver's process tree is rooted in the image (chroot)."""
    return os.readlink(f"/proc/{pid}/root") == str(IMAGE_ROOTFS)


def round_trip(
    n: Node, name: str, source: str, flags: tuple[str, ...], server: Path, fstype: str
) -> None:
    secrets = {"username": SMB_USER, "password": SMB_PASSWORD} if source.startswith("//") else {}
    volume = n.controller.CreateVolume(
        csi_pb2.CreateVolumeRequest(
            name=name,
            parameters={"source": source},
            volume_capabilities=[cap(*flags)],
            secrets=secrets,
        ),
        timeout=60,
    ).volume
    assert (server / name).is_dir(), "the image's controller created nothing"
    staging, target = n.staging(name), n.target("pod-1", name)
    n.node.NodeStageVolume(
        csi_pb2.NodeStageVolumeRequest(
            volume_id=volume.volume_id,
            staging_target_path=staging,
            volume_capability=cap(*flags),
            volume_context=dict(volume.volume_context),
            secrets=secrets,
        ),
        timeout=90,
    )
    n.node.NodePublishVolume(
        csi_pb2.NodePublishVolumeRequest(
            volume_id=volume.volume_id,
            staging_target_path=staging,
            target_path=target,
            volume_capability=cap(*flags),
            volume_context=dict(volume.volume_context),
        ),
        timeout=90,
    )
    # Seen from the guest (kubelet's side of the shared mount): a kernel
    # mount at the staging path, the bind at the target, and a file written
    # through the target lands on the server.
    mounted = {e.mount_point: e.fstype for e in mounts_under(n.kubelet)}
    assert set(mounted) - {str(n.kubelet)} == {str(n.outside(staging)), str(n.outside(target))}
    assert mounted.get(str(n.outside(staging))) == fstype, mounted
    assert mounted.get(str(n.outside(target))) == fstype, mounted
    with (n.outside(target) / "hello.txt").open("w") as f:
        f.write(f"from the image, {fstype}")
        f.flush()
        os.fsync(f.fileno())
    assert (server / name / "hello.txt").read_text() == f"from the image, {fstype}"

    n.node.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume.volume_id, target_path=target),
        timeout=60,
    )
    n.node.NodeUnstageVolume(
        csi_pb2.NodeUnstageVolumeRequest(volume_id=volume.volume_id, staging_target_path=staging),
        timeout=60,
    )
    assert mounts_below(n.kubelet) == []
    n.controller.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id, secrets=secrets), timeout=60
    )
    assert not (server / name).exists()


def test_image_node_cifs(node: Node) -> None:
    assert runs_from_the_image(node.pid)
    round_trip(node, "pvc-image-smb", f"//127.0.0.1/{SMB_SHARE}", (), SMB_DIR, "cifs")


def test_image_node_nfs(node: Node) -> None:
    round_trip(node, "pvc-image-nfs", "127.0.0.1:/", ("vers=4.1",), NFS_DIR, "nfs4")
