"""Dual-protocol CreateVolume next to single-protocol CreateVolume, same run.

One directory is shared by a real Samba and a real nfs-ganesha on loopback
(as in tests/integration/test_dual_controller.py); one driver subprocess
(``serve --mode controller``) serves four StorageClasses on that tree:

* ``nfs``  -- ``source: <nfs name>``
* ``dual via nfs`` -- ``smbSource`` + ``nfsSource``, ``provisionVia: nfs``
* ``smb``  -- ``source: <smb name>``
* ``dual via smb`` -- ``smbSource`` + ``nfsSource``, ``provisionVia: smb``

Each row makes VOLUMES volumes in a new directory of its own (Samba's mkdir
slows as a directory grows), rounds alternate the order, and the report gives
each dual row's median and throughput as a ratio of its single-protocol
twin.  A dual volume costs the same server round trips; the difference is
parameter parsing and the longer ID/context.

    .venv/bin/python -m tests.bench.dual [--volumes N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import grpc

from driver.csi import csi_pb2, csi_pb2_grpc
from tests.bench.common import start_driver, stop_driver, table, timed, write

VOLUMES = 300
CONCURRENCY = (1, 16)
ROUNDS = 2
AM = csi_pb2.VolumeCapability.AccessMode
CAP = csi_pb2.VolumeCapability(
    mount=csi_pb2.VolumeCapability.MountVolume(mount_flags=["nfs:nfsvers=4.1"]),
    access_mode=AM(mode=AM.MULTI_NODE_MULTI_WRITER),
)


def classes(smb: str, nfs: str) -> dict[str, dict[str, str]]:
    return {
        "nfs": {"source": nfs},
        "dual via nfs": {"smbSource": smb, "nfsSource": nfs, "provisionVia": "nfs"},
        "smb": {"source": smb},
        "dual via smb": {"smbSource": smb, "nfsSource": nfs, "provisionVia": "smb"},
    }


async def measure(
    endpoint: str,
    params: dict[str, dict[str, str]],
    creds: dict[str, str],
    volumes: int,
    rounds: int,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    async with grpc.aio.insecure_channel(endpoint) as channel:
        controller = csi_pb2_grpc.ControllerStub(channel)

        def secrets_for(p: dict[str, str]) -> dict[str, str]:
            uses_smb = p.get("provisionVia") == "smb" or p.get("source", "").startswith("//")
            return creds if uses_smb else {}

        for name, p in params.items():  # sessions and pools are warm before measuring
            await controller.CreateVolume(
                csi_pb2.CreateVolumeRequest(
                    name=f"warm-{name}".replace(" ", "-"),
                    volume_capabilities=[CAP],
                    parameters=p,
                    secrets=secrets_for(p),
                )
            )
        for r in range(rounds):
            order = list(params) if r % 2 == 0 else list(reversed(params))
            for c in CONCURRENCY:
                for name in order:
                    p = params[name]
                    row_dir = f"r{r}-c{c}-{name.replace(' ', '-')}"

                    async def create(i: int, p: dict[str, str] = p, row_dir: str = row_dir) -> None:
                        await controller.CreateVolume(
                            csi_pb2.CreateVolumeRequest(
                                name=f"{row_dir}-{i:04d}",
                                volume_capabilities=[CAP],
                                parameters={**p, "subDir": f"{row_dir}/v{i:04d}"},
                                secrets=secrets_for(p),
                            )
                        )

                    rows.append(
                        {
                            "class": name,
                            "round": r,
                            "concurrency": c,
                            **await timed(volumes, c, create, errors=(grpc.aio.AioRpcError,)),
                        }
                    )
    return rows


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def pooled(name: str, c: int, key: str) -> float:
        return statistics.median(
            r[key] for r in rows if r["class"] == name and r["concurrency"] == c
        )

    ratios: dict[str, Any] = {"errors_total": sum(r["errors"] for r in rows)}
    for via in ("nfs", "smb"):
        for c in CONCURRENCY:
            ratios[f"dual_via_{via}_c{c}"] = {
                "median_ms_single": pooled(via, c, "median_ms"),
                "median_ms_dual": pooled(f"dual via {via}", c, "median_ms"),
                "median_dual_over_single": pooled(f"dual via {via}", c, "median_ms")
                / pooled(via, c, "median_ms"),
                "throughput_dual_over_single": pooled(f"dual via {via}", c, "per_second")
                / pooled(via, c, "per_second"),
            }
    print(
        table(
            rows, ["class", "round", "concurrency", "median_ms", "p99_ms", "per_second", "errors"]
        )
    )
    for key, r in ratios.items():
        if isinstance(r, dict):
            print(
                f"  {key}: median {r['median_ms_dual']:.2f} ms dual vs {r['median_ms_single']:.2f}"
                f" ms single ({r['median_dual_over_single']:.2f}x), throughput"
                f" {r['throughput_dual_over_single']:.2f}x"
            )
    write("provision-dual", {"rows": rows, "ratios": ratios})
    return ratios


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--volumes", type=int, default=VOLUMES)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the dual-protocol benchmark needs root (Samba users, ganesha)")
        return
    from tests.servers.ganesha import GaneshaServer
    from tests.servers.samba import SambaServer, Share

    user, password = "csibench", secrets.token_urlsafe(16)
    root = Path(tempfile.mkdtemp(prefix="bench-dual-"))
    samba = SambaServer(root, 0, {user: password}, [Share("export")])
    ganesha = GaneshaServer(root / "shares", versions=("4",))
    proc: subprocess.Popen[bytes] | None = None
    try:
        samba.start()
        ganesha.start()  # exports <root>/shares/export: Samba's share directory
        tree = ganesha.export_path / "vols"
        tree.mkdir()
        tree.chmod(0o777)
        smb = f"//{samba.host}:{samba.port}/export/vols"
        nfs = f"nfs://{ganesha.host}:{ganesha.port}{ganesha.pseudo_path}/vols"
        proc, endpoint = start_driver(root)
        print(f"\ndual-protocol CreateVolume: {args.volumes} volumes per row, {args.rounds} rounds")
        rows = asyncio.run(
            measure(
                endpoint,
                classes(smb, nfs),
                {"username": user, "password": password},
                args.volumes,
                args.rounds,
            )
        )
        report(rows)
    finally:
        if proc is not None:
            stop_driver(proc)
        ganesha.close()
        samba.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
