"""NodeStageVolume + NodePublishVolume latency vs a plain ``mount`` (the floor).

Kernel cifs/nfs mounts need the user-mode Linux guest (the host kernel has
neither): on the host, :func:`main` boots one guest with Samba and the kernel
NFS server on its loopback and runs ``python -m tests.bench.node`` inside,
which measures and writes ``node.json`` to the shared work dir; the host
copies it to ``bench-results/``.

For each protocol (SMB, NFS v4.1, NFS v3), alternating so drift hits both
sides alike, RUNS times (after one warm-up):
  * floor: ``mount -t cifs|nfs <same share dir> <dir> -o <same options>``
    then ``umount``, each timed as one subprocess;
  * driver: NodeStageVolume then NodePublishVolume through a real gRPC server
    on a Unix socket (in-process NodePlugin + LinuxPlatform, real runner),
    then NodeUnpublishVolume + NodeUnstageVolume.
Reported: medians (and p90) in ms and the driver/floor ratio.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.common import bench_in_guest, in_guest, percentile, table, write

RUNS = 20
NAME = "node"
ROOT = Path(__file__).resolve().parents[2]


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(values) * 1000,
        "p90_ms": percentile(values, 90) * 1000,
    }


def _timed_run(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t0


async def _measure() -> dict[str, Any]:
    from driver.config import Config, parse_endpoint
    from driver.csi import csi_pb2
    from node.linux import LinuxPlatform
    from node.service import NodePlugin
    from tests.harness import running_driver

    password = os.environ["SMB_PASSWORD"]
    smb_dir = Path(os.environ["SMB_SHARE_DIR"])
    nfs_dir = Path(os.environ["NFS_EXPORT_DIR"])
    share = os.environ["SMB_SHARE"]
    user = os.environ["SMB_USER"]
    am = csi_pb2.VolumeCapability.AccessMode
    work = Path(tempfile.mkdtemp(prefix="bench-node-"))
    creds = work / "floor.cred"
    fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"username={user}\npassword={password}\n")

    # (name, server dir, volume context, mount flags, floor argv without the mount point)
    cases: list[tuple[str, Path, dict[str, str], list[str], list[str]]] = [
        (
            "smb",
            smb_dir / "bench-smb",
            {"protocol": "smb", "source": f"//127.0.0.1/{share}", "subDir": "bench-smb"},
            [],
            ["mount", "-t", "cifs", f"//127.0.0.1/{share}/bench-smb"],
        ),
        (
            "nfs4.1",
            nfs_dir / "bench-nfs4",
            {"protocol": "nfs", "source": "127.0.0.1:/", "subDir": "bench-nfs4"},
            ["vers=4.1"],
            ["mount", "-t", "nfs", "127.0.0.1:/bench-nfs4"],
        ),
        (
            "nfs3",
            nfs_dir / "bench-nfs3",
            {
                "protocol": "nfs",
                "source": f"127.0.0.1:{os.environ['NFS_V3_ROOT']}",
                "subDir": "bench-nfs3",
            },
            ["vers=3"],
            ["mount", "-t", "nfs", f"127.0.0.1:{os.environ['NFS_V3_ROOT']}/bench-nfs3"],
        ),
    ]
    floor_options = {
        "smb": f"nosharesock,credentials={creds}",
        "nfs4.1": "vers=4.1",
        "nfs3": "vers=3",
    }
    kubelet = work / "kubelet"  # the driver's --kubelet-dir: paths go where kubelet puts them
    cfg = Config(
        endpoint=parse_endpoint(f"unix://{work}/csi.sock"),
        node_id="bench",
        kubelet_dir=str(kubelet),
    )
    plugin = NodePlugin(cfg, LinuxPlatform(cfg))
    results: dict[str, Any] = {"runs": RUNS}
    rows: list[dict[str, Any]] = []
    async with running_driver(work / "csi.sock", [plugin], mode="node") as (_, client):
        for name, server_dir, context, flags, floor in cases:
            server_dir.mkdir(exist_ok=True)
            cap = csi_pb2.VolumeCapability(
                mount=csi_pb2.VolumeCapability.MountVolume(mount_flags=flags),
                access_mode=am(mode=am.MULTI_NODE_MULTI_WRITER),
            )
            secrets = {"username": user, "password": password} if name == "smb" else {}
            point = work / f"floor-{name}"
            point.mkdir()
            staging = kubelet / "plugins/kubernetes.io/csi/bench" / name / "globalmount"
            target = kubelet / "pods" / f"pod-{name}" / "mount"
            samples: dict[str, list[float]] = {
                k: [] for k in ("mount", "umount", "stage", "publish", "unpublish", "unstage")
            }
            for i in range(RUNS + 1):
                keep = i > 0  # the first round warms caches and connections up
                t_mount = _timed_run([*floor, str(point), "-o", floor_options[name]])
                t_umount = _timed_run(["umount", str(point)])
                t0 = time.perf_counter()
                await client.node.NodeStageVolume(
                    csi_pb2.NodeStageVolumeRequest(
                        volume_id=f"bench-{name}",
                        staging_target_path=str(staging),
                        volume_capability=cap,
                        volume_context=context,
                        secrets=secrets,
                    )
                )
                t1 = time.perf_counter()
                await client.node.NodePublishVolume(
                    csi_pb2.NodePublishVolumeRequest(
                        volume_id=f"bench-{name}",
                        staging_target_path=str(staging),
                        target_path=str(target),
                        volume_capability=cap,
                        volume_context=context,
                    )
                )
                t2 = time.perf_counter()
                await client.node.NodeUnpublishVolume(
                    csi_pb2.NodeUnpublishVolumeRequest(
                        volume_id=f"bench-{name}", target_path=str(target)
                    )
                )
                t3 = time.perf_counter()
                await client.node.NodeUnstageVolume(
                    csi_pb2.NodeUnstageVolumeRequest(
                        volume_id=f"bench-{name}", staging_target_path=str(staging)
                    )
                )
                t4 = time.perf_counter()
                if keep:
                    for key, value in (
                        ("mount", t_mount),
                        ("umount", t_umount),
                        ("stage", t1 - t0),
                        ("publish", t2 - t1),
                        ("unpublish", t3 - t2),
                        ("unstage", t4 - t3),
                    ):
                        samples[key].append(value)
            both = [a + b for a, b in zip(samples["stage"], samples["publish"], strict=True)]
            down = [a + b for a, b in zip(samples["unpublish"], samples["unstage"], strict=True)]
            entry = {k: _ms(v) for k, v in samples.items()}
            entry["stage_publish"] = _ms(both)
            entry["unpublish_unstage"] = _ms(down)
            ratio = statistics.median(both) / statistics.median(samples["mount"])
            entry["stage_publish_x_mount"] = ratio
            results[name] = entry
            rows.append(
                {
                    "protocol": name,
                    "mount_ms": entry["mount"]["median_ms"],
                    "stage_ms": entry["stage"]["median_ms"],
                    "publish_ms": entry["publish"]["median_ms"],
                    "stage+publish_ms": entry["stage_publish"]["median_ms"],
                    "x_mount": ratio,
                    "umount_ms": entry["umount"]["median_ms"],
                    "unpub+unstage_ms": entry["unpublish_unstage"]["median_ms"],
                }
            )
            shutil.rmtree(server_dir, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    print(f"node stage+publish vs plain mount (UML guest, loopback servers, median of {RUNS})")
    print(
        table(
            rows,
            [
                "protocol",
                "mount_ms",
                "stage_ms",
                "publish_ms",
                "stage+publish_ms",
                "x_mount",
                "umount_ms",
                "unpub+unstage_ms",
            ],
        )
    )
    results["where"] = "user-mode Linux guest (the host kernel has no cifs/nfs)"
    write(NAME, results)
    return results


def main() -> dict[str, Any]:
    if in_guest():
        return asyncio.run(_measure())
    return bench_in_guest(
        NAME,
        "node benchmark",
        table_from="node stage+publish",
        table_lines=2 + 3,
        timeout=900,
        servers=True,
    )


if __name__ == "__main__":
    main()
