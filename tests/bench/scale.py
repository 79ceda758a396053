"""10,000 volumes in one burst: CreateVolume, then DeleteVolume, at concurrency 64.

``python -m tests.bench.scale [--volumes N] [--only smb|smb-cs|nfs] [--lan]``

What a cluster does when a namespace with thousands of PVCs comes and goes:
one csi-provisioner (one gRPC connection, like the Go sidecar) keeps 64 calls
in flight and retries ABORTED/UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED
with its exponential back-off (1 s doubling, as ``--retry-interval-start``).
All volumes go into ONE directory of the share (a StorageClass's base).

Each protocol's rows, from one run against one server:

* ``raw``: the raw client creates, then removes, the same number of
  directories in a directory of its own (SMB: smbprotocol's ``mkdir``/``rmdir``
  from 8 threads on one session, the most one session takes; NFS: the
  driver's libnfs binding in-process, ``mkdir``/``rmdir``).  This is the floor
  and it shows the server's own curve: Samba's create slows as the directory
  fills, whoever the client is.
* ``driver``: the same through a ``serve --mode controller`` subprocess.

Reported per row: wall time, the rate in each tenth of the burst (by
completion order: the tenth k is the time between the k*N/10-th and the
(k+1)*N/10-th completion), retries, errors, and the RSS of the driver with its
children (SMB worker), sampled every 0.5 s.  Ratios (targets of issue 18):
creates <= 20 s; each tenth of the driver within 1.2x of the raw tenth (at
the same directory fill); deletes <= 1.2x the creates.

``smb-cs`` repeats the SMB rows against a share with ``case sensitive = yes``
(plus ``preserve case``/``short preserve case``): Samba then looks a new
name up with one stat instead of scanning the directory case-insensitively.

``--tree-files N`` (default 100,000): a volume holding N files in 100
directories (written straight into the share's directory on disk), deleted
through the driver: the DeleteVolume latency, then how long the background
purge takes to empty the trash (files per second).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from driver.csi import csi_pb2
from tests.bench.burst import (
    CONCURRENCY,
    Burst,
    Group,
    RssSampler,
    client_and_server,
    cpu_report,
    run_burst,
)
from tests.bench.common import create_request, start_driver, stop_driver, table, write
from tests.bench.lean_client import LeanChannel

VOLUMES = 10_000
#: Seconds the purge of the large tree is watched for its rate.
PURGE_WINDOW = 120.0
# -- through the driver -----------------------------------------------------------


async def driver_rows(
    endpoint: str,
    pid: int,
    n: int,
    params: dict[str, str],
    secrets_: dict[str, str],
    flags: list[str],
    tag: str,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Creates then deletes ``n`` volumes through the driver; with the driver's RSS."""
    cpu_of: dict[str, Group] = {
        **client_and_server(server_pid),
        "driver": (pid, "process"),
        "worker": (pid, "descendants"),  # the SMB worker process
    }
    ids: dict[int, str] = {}
    async with LeanChannel(endpoint) as channel:

        async def create(i: int) -> None:
            response = await channel.unary(
                "/csi.v1.Controller/CreateVolume",
                create_request(f"pvc-{tag}-{i:05d}", params, secrets_, flags),
                csi_pb2.CreateVolumeResponse,
            )
            ids[i] = response.volume.volume_id

        async def delete(i: int) -> None:
            await channel.unary(
                "/csi.v1.Controller/DeleteVolume",
                csi_pb2.DeleteVolumeRequest(volume_id=ids[i], secrets=secrets_),
                csi_pb2.DeleteVolumeResponse,
            )

        # Session set-up is not measured (its volume lies beside the burst's).
        warm = create_request(f"warm-{tag}", params | {"subDir": f"warm-{tag}"}, secrets_, flags)
        await channel.unary("/csi.v1.Controller/CreateVolume", warm, csi_pb2.CreateVolumeResponse)
        # The gRPC floor: an empty Probe, as many and as concurrent as the creates.
        probes = await run_burst(
            n,
            CONCURRENCY,
            lambda _i: channel.unary(
                "/csi.v1.Identity/Probe", csi_pb2.ProbeRequest(), csi_pb2.ProbeResponse
            ),
            cpu_of,
        )
        with RssSampler(pid) as rss:
            creates = await run_burst(n, CONCURRENCY, create, cpu_of)
            created = sorted(ids)
            deletes = await run_burst(
                len(created), CONCURRENCY, lambda k: delete(created[k]), cpu_of
            )
    return {
        "probe": probes.summary(),
        "create": creates.summary(),
        "delete": deletes.summary(),
        **rss.summary(),
    }


# -- SMB ----------------------------------------------------------------------------


def _smb_raw(
    host: str, port: int, user: str, password: str, n: int, server_pid: int | None
) -> dict[str, Any]:
    import smbclient

    cpu_of = client_and_server(server_pid)
    cache: dict[str, Any] = {}
    kw = {"username": user, "password": password, "port": port, "connection_cache": cache}
    base = rf"\\{host}\csi\raw"
    smbclient.mkdir(base, **kw)  # also opens the session: not measured

    async def bursts() -> tuple[Burst, Burst]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(8) as pool:

            async def mkdir(i: int) -> None:
                await loop.run_in_executor(pool, lambda: smbclient.mkdir(rf"{base}\{i:05d}", **kw))

            async def rmdir(i: int) -> None:
                await loop.run_in_executor(pool, lambda: smbclient.rmdir(rf"{base}\{i:05d}", **kw))

            return (
                await run_burst(n, CONCURRENCY, mkdir, cpu_of),
                await run_burst(n, CONCURRENCY, rmdir, cpu_of),
            )

    try:
        creates, deletes = asyncio.run(bursts())
    finally:
        smbclient.reset_connection_cache(connection_cache=cache)
    return {"create": creates.summary(), "delete": deletes.summary()}


@contextlib.contextmanager
def _samba(case_sensitive: bool, netns: Any = None) -> Iterator[tuple[Any, str, str]]:
    from tests.servers.samba import SambaServer, Share

    user, password = "csibench", secrets.token_urlsafe(16)
    options = {}
    if case_sensitive:
        # Share defaults in [global]: every share of this instance.
        options = {"case sensitive": "yes", "preserve case": "yes", "short preserve case": "yes"}
    if netns is not None:
        options["interfaces"] = f"127.0.0.1 {netns.server_addr}"
    root = Path(tempfile.mkdtemp(prefix="bench-scale-samba-"))
    server = SambaServer(root, 0, {user: password}, [Share("csi")], options=options)
    try:
        with netns.server() if netns is not None else contextlib.nullcontext():
            server.start()
        yield server, user, password
    finally:
        server.stop()
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def bench_smb(n: int, tmp: Path, *, case_sensitive: bool, tree_files: int) -> dict[str, Any]:
    name = "smb-case-sensitive" if case_sensitive else "smb"
    with _samba(case_sensitive) as (samba, user, password):
        raw = _smb_raw(samba.host, samba.port, user, password, n, samba.pid)
        proc, endpoint = start_driver(tmp)
        try:
            params = {"source": f"//{samba.host}:{samba.port}/csi/vols"}
            secrets_ = {"username": user, "password": password}
            drv = asyncio.run(
                driver_rows(endpoint, proc.pid, n, params, secrets_, [], name, samba.pid)
            )
            tree = {}
            if tree_files:
                tree = asyncio.run(
                    tree_delete(
                        endpoint, samba.share_path("csi"), "vols", params, secrets_, [], tree_files
                    )
                )
        finally:
            stop_driver(proc)
    return report(name, n, raw, drv, tree)


# -- NFS ------------------------------------------------------------------------------


def bench_nfs(n: int, tmp: Path, *, tree_files: int) -> dict[str, Any]:
    from controller.nfs.backend import NfsBackend
    from tests.servers.ganesha import GaneshaServer

    with GaneshaServer(
        Path(tempfile.mkdtemp(prefix="bench-scale-nfs-")), versions=("4",)
    ) as server:
        (server.export_path / "vols").mkdir()
        (server.export_path / "raw").mkdir()
        export = f"{server.pseudo_path}"

        async def raw_bursts() -> dict[str, Any]:
            backend = NfsBackend(server.host, server.port, export, "4", 30.0)
            try:
                await backend.mkdir("raw/warm")

                async def mkdir(i: int) -> None:
                    await backend.mkdir(f"raw/{i:05d}")

                async def rmdir(i: int) -> None:
                    await backend.remove_empty_dir(f"raw/{i:05d}")  # one RMDIR

                cpu_of = client_and_server(server.pid)
                creates = await run_burst(n, CONCURRENCY, mkdir, cpu_of)
                deletes = await run_burst(n, CONCURRENCY, rmdir, cpu_of)
            finally:
                await backend.aclose()
            return {"create": creates.summary(), "delete": deletes.summary()}

        raw = asyncio.run(raw_bursts())
        proc, endpoint = start_driver(tmp)
        try:
            params = {"source": f"nfs://{server.host}:{server.port}{server.pseudo_path}/vols"}
            drv = asyncio.run(
                driver_rows(endpoint, proc.pid, n, params, {}, ["nfsvers=4"], "nfs", server.pid)
            )
            tree = {}
            if tree_files:
                tree = asyncio.run(
                    tree_delete(
                        endpoint, server.export_path, "vols", params, {}, ["nfsvers=4"], tree_files
                    )
                )
        finally:
            stop_driver(proc)
    return report("nfs-v4", n, raw, drv, tree)


# -- a large tree -----------------------------------------------------------------------


def _fill(root: Path, files: int) -> None:
    """``files`` empty files in 100 directories, written on the server's disk."""
    per_dir = max(1, files // 100)
    made = 0
    d = 0
    while made < files:
        sub = root / f"d{d:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        for j in range(min(per_dir, files - made)):
            (sub / f"f{j:05d}").touch()
        made += min(per_dir, files - made)
        d += 1
    # The share's users (smbd runs as the connecting user) must be able to delete.
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o777)  # noqa: S103 - a benchmark's own scratch tree
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666)  # noqa: S103 - as above
        del dirnames


async def tree_delete(
    endpoint: str,
    share_dir: Path,
    base: str,
    params: dict[str, str],
    secrets_: dict[str, str],
    flags: list[str],
    files: int,
) -> dict[str, Any]:
    """DeleteVolume of a volume holding ``files`` files; then the purge's pace."""
    async with LeanChannel(endpoint) as channel:
        request = create_request("pvc-big-tree", params, secrets_, flags)
        created = await channel.unary(
            "/csi.v1.Controller/CreateVolume", request, csi_pb2.CreateVolumeResponse
        )
        volume_dir = share_dir / base / "pvc-big-tree"
        t0 = time.perf_counter()
        await asyncio.to_thread(_fill, volume_dir, files)
        fill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        await channel.unary(
            "/csi.v1.Controller/DeleteVolume",
            csi_pb2.DeleteVolumeRequest(volume_id=created.volume.volume_id, secrets=secrets_),
            csi_pb2.DeleteVolumeResponse,
        )
        delete_s = time.perf_counter() - t0
    # The purge: until nothing of the tree is left anywhere under the base,
    # or PURGE_WINDOW seconds (the rate is what counts; the rest is dropped).
    t0 = time.perf_counter()
    deadline = t0 + PURGE_WINDOW
    left = files
    while time.perf_counter() < deadline:
        left = await asyncio.to_thread(_count_files, share_dir / base)
        if left == 0:
            break
        await asyncio.sleep(0.5)
    purge_s = time.perf_counter() - t0
    return {
        "files": files,
        "fill_s": fill_s,
        "delete_volume_s": delete_s,
        "purge_s": purge_s,
        "purge_files_left": left,
        "purge_files_per_second": (files - left) / purge_s,
        "in_name_still_there": volume_dir.exists(),
    }


def _count_files(root: Path) -> int:
    return sum(len(files) for _dirpath, _dirs, files in os.walk(root))


# -- the report --------------------------------------------------------------------------


def report(
    name: str, n: int, raw: dict[str, Any], drv: dict[str, Any], tree: dict[str, Any]
) -> dict[str, Any]:
    rows = []
    for who, data in (("raw", raw), ("driver", drv)):
        for what in ("create", "delete"):
            s = data[what]
            rows.append(
                {
                    "row": f"{who} {what}",
                    "wall_s": s["wall_s"],
                    "per_s": s["per_second"],
                    "tenths_per_s": " ".join(f"{r:.0f}" for r in s["tenths_per_second"]),
                    "retries": s["retries"],
                    "errors": s["errors"],
                }
            )
    per_tenth = [
        r / d
        for r, d in zip(
            raw["create"]["tenths_per_second"], drv["create"]["tenths_per_second"], strict=True
        )
    ]
    ratios = {
        "create_wall_s": drv["create"]["wall_s"],
        "create_wall_over_20s": drv["create"]["wall_s"] / 20.0,
        "create_raw_tenth_over_driver_tenth_max": max(per_tenth),
        "create_raw_tenth_over_driver_tenth": per_tenth,
        "delete_wall_over_create_wall": drv["delete"]["wall_s"] / drv["create"]["wall_s"],
        "raw_delete_wall_over_raw_create_wall": raw["delete"]["wall_s"] / raw["create"]["wall_s"],
        "driver_create_over_raw_create_wall": drv["create"]["wall_s"] / raw["create"]["wall_s"],
        "driver_delete_over_raw_delete_wall": drv["delete"]["wall_s"] / raw["delete"]["wall_s"],
        "errors_total": sum(d[w]["errors"] for d in (raw, drv) for w in ("create", "delete")),
    }
    load = os.getloadavg()
    print(f"\n{name}: {n} volumes in one directory, concurrency {CONCURRENCY}")
    print(table(rows, ["row", "wall_s", "per_s", "tenths_per_s", "retries", "errors"]))
    print(
        f"  driver RSS with children: {drv['rss_start_mib']:.0f} -> max"
        f" {drv['rss_max_mib']:.0f} -> {drv['rss_end_mib']:.0f} MiB"
    )
    print(
        f"  creates {ratios['create_wall_s']:.1f} s (target <= 20 s:"
        f" {ratios['create_wall_over_20s']:.2f}x of it); driver tenth vs raw tenth: worst"
        f" {ratios['create_raw_tenth_over_driver_tenth_max']:.2f}x slower (target <= 1.2x);"
        f" deletes {ratios['delete_wall_over_create_wall']:.2f}x the creates (target <= 1.2x;"
        f" raw client: {ratios['raw_delete_wall_over_raw_create_wall']:.2f}x)"
    )
    if tree:
        print(
            f"  a {tree['files']}-file volume: DeleteVolume returned in"
            f" {tree['delete_volume_s']:.3f} s (target < 1 s); the purge removed"
            f" {tree['purge_files_per_second']:.0f} files/s ({tree['purge_files_left']} left"
            f" after {tree['purge_s']:.0f} s)"
        )
    cpu = cpu_report(raw, drv)
    ratios.update(cpu)
    print(
        f"  CPU per create (ms): raw client {cpu['raw_client_ms']:.2f} + server"
        f" {cpu['raw_server_ms']:.2f}; through the driver: client {cpu['driver_client_ms']:.2f}"
        f" + driver {cpu['driver_ms']:.2f} (its SMB worker {cpu['driver_worker_ms']:.2f}) + server"
        f" {cpu['driver_server_ms']:.2f}."
        f" On {cpu['cores']} cores a CPU-bound burst tops out at"
        f" {cpu['raw_ceiling_per_s']:.0f}/s raw vs {cpu['driver_ceiling_per_s']:.0f}/s through"
        f" the driver ({cpu['ceiling_ratio']:.2f}x). An empty Probe costs the driver"
        f" {cpu['probe_driver_ms']:.2f} ms (the gRPC server's own floor; client"
        f" {cpu['probe_client_ms']:.2f} ms)"
    )
    print(f"  load average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    result = {
        "volumes": n,
        "concurrency": CONCURRENCY,
        "raw": raw,
        "driver": drv,
        "tree": tree,
        "ratios": ratios,
        "loadavg": load,
    }
    write(f"scale-{name}", result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.scale")
    parser.add_argument("--volumes", type=int, default=VOLUMES)
    parser.add_argument("--tree-files", type=int, default=100_000)
    parser.add_argument("--only", choices=("smb", "smb-cs", "nfs"), action="append")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the scale benchmark needs root (Samba users, ganesha)")
        return
    wanted = args.only or ["smb", "smb-cs", "nfs"]
    with tempfile.TemporaryDirectory() as tmp:
        if "smb" in wanted:
            bench_smb(args.volumes, Path(tmp), case_sensitive=False, tree_files=args.tree_files)
        if "smb-cs" in wanted:
            bench_smb(args.volumes, Path(tmp), case_sensitive=True, tree_files=0)
        if "nfs" in wanted:
            bench_nfs(args.volumes, Path(tmp), tree_files=args.tree_files)


if __name__ == "__main__":
    main()
