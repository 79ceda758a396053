"""The built image (``make image``), run from its own root filesystem as a
container runtime would: its ENTRYPOINT, its USER, its ENV, nothing of the
host's Python or packages."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from driver.csi import csi_pb2, csi_pb2_grpc
from tests.chart.support import default_values
from tests.image.rootfs import (
    ImageConfig,
    command,
    image_env,
    process_ids,
    serve_from_image,
    tree_rss_kib,
    writable_rootfs,
)
from tests.servers.ganesha import GaneshaServer
from tests.servers.plugin import SMB_WRITER
from tests.servers.samba import SambaServer

pytestmark = pytest.mark.image

AM = csi_pb2.VolumeCapability.AccessMode
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "x86_64-linux-gnu-gcc-12")


@pytest.fixture
def rootfs(image_lower: Path, tmp_path: Path) -> Iterator[Path]:
    with writable_rootfs(image_lower, tmp_path / "rootfs") as root:
        yield root


def run_in(
    root: Path, config: ImageConfig, argv: list[str], *, as_image_user: bool = True
) -> subprocess.CompletedProcess[str]:
    """A program of the image (not its entrypoint) in the image's root."""
    prefix = command(root, config, [], as_image_user=as_image_user)[: -len(config.entrypoint)]
    return subprocess.run(
        prefix + argv, capture_output=True, text=True, env=image_env(config), check=False
    )


def test_image_config(image_config: ImageConfig) -> None:
    """What the chart relies on: the console script as ENTRYPOINT, the
    numeric non-root user the controller runs as."""
    assert image_config.entrypoint == ["csi-smb-nfs"]
    assert image_config.cmd == ["--help"]
    controller = default_values()["controller"]
    assert image_config.uid_gid == (controller["runAsUser"], controller["runAsGroup"])
    assert image_config.user == "10001:10001"
    print(
        f"image size: {image_config.size / 1e6:.0f} MB"
        + (" (on the stand-in base)" if image_config.stand_in_base else "")
    )


def test_entrypoint_runs_as_the_image_user(rootfs: Path, image_config: ImageConfig) -> None:
    argv = command(rootfs, image_config, image_config.cmd)
    proc = subprocess.run(
        argv, check=False, capture_output=True, text=True, env=image_env(image_config)
    )
    assert proc.returncode == 0, proc.stderr
    assert "serve" in proc.stdout
    ids = run_in(rootfs, image_config, ["id", "-u"])
    assert ids.stdout.strip() == "10001", ids.stderr


def test_mount_helpers_and_tini(rootfs: Path, image_config: ImageConfig) -> None:
    """What the node plugin execs, present and runnable in the image."""
    for program, version_flag in (
        ("mount.cifs", "-V"),
        ("mount.nfs", "-V"),
        ("mount", "--version"),
        ("umount", "--version"),
        ("tini", "--version"),
    ):
        found = run_in(rootfs, image_config, ["sh", "-c", f"command -v {program}"])
        assert found.returncode == 0, f"{program} is not in the image"
        ran = run_in(rootfs, image_config, [program, version_flag], as_image_user=False)
        assert ran.returncode in (0, 1), (program, ran)
        assert (ran.stdout + ran.stderr).strip(), (program, ran)
    # mount.nfs with its helpers for NFSv3 locking; mount.cifs with its key helper.
    assert run_in(rootfs, image_config, ["sh", "-c", "command -v rpc.statd"]).returncode == 0


def test_libnfs_loads(rootfs: Path, image_config: ImageConfig) -> None:
    """The controller's NFS client library: every symbol it declares resolves."""
    proc = run_in(
        rootfs,
        image_config,
        [
            "python3",
            "-c",
            "from controller.nfs.libnfs import LibNfs; lib = LibNfs(); "
            "ctx = lib.init_context(); lib.destroy_context(ctx); print('libnfs ok')",
        ],
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "libnfs ok"


def test_lean(image_lower: Path) -> None:
    """Multi-stage: no compilers, no wheels or pip caches, no apt lists."""
    for directory in ("usr/bin", "usr/local/bin", "bin"):
        for name in COMPILERS:
            assert not (image_lower / directory / name).exists(), f"/{directory}/{name}"
    for path in ("wheels", "src", "root/.cache/pip", "tmp/requirements.txt"):
        assert not (image_lower / path).exists(), f"/{path}"
    assert not list((image_lower / "var/lib/apt/lists").glob("*_Packages*"))
    wheels = [p for p in image_lower.glob("**/*.whl") if "python-wheels" not in str(p)]
    assert wheels == []


# ---------------------------------------------------------------- the controller


def _cap(*flags: str) -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(mount_flags=list(flags)),
        access_mode=AM(mode=AM.MULTI_NODE_MULTI_WRITER),
    )


@pytest.fixture(scope="module")
def nfs_v4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GaneshaServer]:
    with GaneshaServer(tmp_path_factory.mktemp("image-nfs"), versions=("4",)) as server:
        # The controller speaks NFS as its own uid (AUTH_SYS): the base
        # directory belongs to it, as docs/helm.md tells operators.
        (server.export_path / "k8s").mkdir()
        os.chown(server.export_path / "k8s", 10001, 10001)
        yield server


def test_controller_from_the_image(
    rootfs: Path,
    image_config: ImageConfig,
    tmp_path: Path,
    samba: SambaServer,
    nfs_v4: GaneshaServer,
) -> None:
    """Probe, then a volume created and deleted on the test Samba and on
    nfs-ganesha (libnfs) by the image's own controller, running as 10001."""
    smb_base = samba.share_path("csi") / "image-tests"
    smb_base.mkdir(exist_ok=True)
    smb_base.chmod(0o777)  # the SMB user (not root) creates the volumes in it
    with serve_from_image(rootfs, image_config, tmp_path, mode="controller") as ctl:
        assert process_ids(ctl.pid) == (10001, 10001)
        with grpc.insecure_channel(f"unix://{ctl.socket}") as channel:
            identity = csi_pb2_grpc.IdentityStub(channel)
            controller = csi_pb2_grpc.ControllerStub(channel)
            info = identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=10)
            assert info.name == default_values()["driver"]["name"]
            volumes = {
                "smb": (
                    f"//{samba.host}:{samba.port}/csi/image-tests",
                    {"username": SMB_WRITER, "password": samba.password(SMB_WRITER)},
                    (),
                    smb_base,
                ),
                "nfs": (
                    f"nfs://{nfs_v4.host}:{nfs_v4.port}{nfs_v4.pseudo_path}/k8s",
                    {},
                    ("nfsvers=4.1",),
                    nfs_v4.export_path / "k8s",
                ),
            }
            for protocol, (source, secrets, flags, on_disk) in volumes.items():
                name = f"pvc-image-{protocol}"
                created = controller.CreateVolume(
                    csi_pb2.CreateVolumeRequest(
                        name=name,
                        parameters={"source": source},
                        volume_capabilities=[_cap(*flags)],
                        secrets=secrets,
                    ),
                    timeout=60,
                ).volume
                assert (on_disk / name).is_dir(), f"{protocol}: nothing on the server"
                controller.DeleteVolume(
                    csi_pb2.DeleteVolumeRequest(volume_id=created.volume_id, secrets=secrets),
                    timeout=60,
                )
                assert not (on_disk / name).exists(), protocol
            rss = tree_rss_kib(ctl.pid)  # idle RSS: tests/image/measure.py
        print(f"image controller: Probe-ready {ctl.ready_seconds:.2f} s, RSS after work {rss} KiB")
    assert re.search(r'"level": ?"(error|critical)"', ctl.log.read_text()) is None, (
        ctl.log.read_text()[-3000:]
    )
