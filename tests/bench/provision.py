"""CreateVolume through the driver's gRPC socket vs the raw client (the floor).

For each protocol the same server is used in one run: first the raw client
makes 500 directories at concurrency 1, 16 and 64, then the driver (a real
``csi-smb-nfs serve --mode controller`` subprocess) makes 500 volumes through
its Unix socket at the same concurrencies.  Reported: median and p99
latency, operations per second, errors, and the ratios the issues ask for.

Every SMB row, raw or through the driver, makes its directories in a new
directory of its own: Samba's mkdir slows down as a directory grows (a
name lookup scans it), and an emptied directory stays large on disk.

SMB raw floor: smbprotocol's ``smbclient.mkdir`` on one warmed private
session from a thread pool of ``min(concurrency, 8)`` threads (smbprotocol
has no credit queueing: more in-flight requests on one session fail, so 8 is
the best a raw caller can do).  NFS raw floor: the driver's own libnfs
binding called in-process (``NfsBackend.mkdir``), which is the fastest
user-space NFS client available here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from driver.csi import csi_pb2, csi_pb2_grpc
from tests.bench.common import (
    create_request,
    driver_running,
    find_row,
    table,
    timed,
    timed_in_threads,
    write,
)
from tests.bench.lean_client import LeanChannel

VOLUMES = 500
CONCURRENCY = (1, 16, 64)


class _Calls:
    """The three calls a row needs, through one client library."""

    def __init__(self, create: Any, delete: Any, probe: Any) -> None:
        self.create, self.delete, self.probe = create, delete, probe


@contextlib.asynccontextmanager
async def _grpcio_calls(endpoint: str) -> AsyncIterator[_Calls]:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        controller = csi_pb2_grpc.ControllerStub(channel)
        identity = csi_pb2_grpc.IdentityStub(channel)

        async def create(request: csi_pb2.CreateVolumeRequest) -> str:
            return (await controller.CreateVolume(request)).volume.volume_id

        async def probe() -> None:
            await identity.Probe(csi_pb2.ProbeRequest())

        yield _Calls(create, controller.DeleteVolume, probe)


@contextlib.asynccontextmanager
async def _lean_calls(endpoint: str) -> AsyncIterator[_Calls]:
    async with LeanChannel(endpoint) as channel:

        async def create(request: csi_pb2.CreateVolumeRequest) -> str:
            response = await channel.unary(
                "/csi.v1.Controller/CreateVolume", request, csi_pb2.CreateVolumeResponse
            )
            return response.volume.volume_id

        async def delete(request: csi_pb2.DeleteVolumeRequest) -> None:
            await channel.unary(
                "/csi.v1.Controller/DeleteVolume", request, csi_pb2.DeleteVolumeResponse
            )

        async def probe() -> None:
            await channel.unary(
                "/csi.v1.Identity/Probe", csi_pb2.ProbeRequest(), csi_pb2.ProbeResponse
            )

        yield _Calls(create, delete, probe)


CLIENTS = {"lean": _lean_calls, "grpcio": _grpcio_calls}


async def _through_driver(
    endpoint: str,
    params: dict[str, str],
    secrets_: dict[str, str],
    flags: list[str],
    tag: str,
    *,
    row_dirs: bool = False,
) -> list[dict[str, Any]]:

    def request(name: str, row: str = "") -> csi_pb2.CreateVolumeRequest:
        # row_dirs: each row's volumes go into a new directory (subDir row/name).
        extra = {"subDir": f"{row}/{name}"} if row_dirs and row else {}
        return create_request(name, params | extra, secrets_, flags)

    rows = []
    for client, connect in CLIENTS.items():
        async with connect(endpoint) as calls:
            await calls.create(request(f"warm-{tag}-{client}"))  # session set-up is not measured

            async def probe(_: int, calls: _Calls = calls) -> None:
                await calls.probe()

            # The transport's own limits: an empty Probe through the same socket,
            # alone (latency floor) and at 64 in flight (throughput ceiling).
            for c in (1, 64):
                rows.append(
                    {
                        "client": f"Probe (gRPC floor, {client} client)",
                        "concurrency": c,
                        **await timed(VOLUMES, c, probe),
                    }
                )
            for c in CONCURRENCY:
                ids: dict[int, str] = {}

                async def create(
                    i: int,
                    c: int = c,
                    ids: dict[int, str] = ids,
                    calls: _Calls = calls,
                    prefix: str = f"{tag}-{client}",
                ) -> None:
                    ids[i] = await calls.create(request(f"{prefix}-c{c}-{i:04d}", f"{prefix}-c{c}"))

                rows.append(
                    {
                        "client": f"CreateVolume (gRPC, {client} client)",
                        "concurrency": c,
                        **await timed(VOLUMES, c, create),
                    }
                )
                await asyncio.gather(
                    *(
                        calls.delete(csi_pb2.DeleteVolumeRequest(volume_id=v, secrets=secrets_))
                        for v in ids.values()
                    )
                )
    return rows


# -- SMB -------------------------------------------------------------------------


def _raw_smb(host: str, port: int, share: str, user: str, password: str) -> list[dict[str, Any]]:
    import smbclient
    from smbprotocol.connection import Connection  # noqa: F401 - ensures the package is complete

    cache: dict[str, Any] = {}
    kw = {"username": user, "password": password, "port": port, "connection_cache": cache}
    root = rf"\\{host}\{share}"
    smbclient.mkdir(rf"{root}\raw-warm", **kw)
    rows = []
    for c in CONCURRENCY:
        smbclient.mkdir(rf"{root}\raw-c{c}", **kw)

        def op(i: int, c: int = c) -> None:
            smbclient.mkdir(rf"{root}\raw-c{c}\{i:04d}", **kw)

        rows.append(
            {
                "client": "raw smbclient.mkdir",
                "concurrency": c,
                **timed_in_threads(VOLUMES, c, op),
            }
        )
    smbclient.reset_connection_cache(connection_cache=cache)
    return rows


def bench_smb(tmp: Path) -> dict[str, Any]:
    from tests.servers.samba import SambaServer, Share

    user, password = "csibench", secrets.token_urlsafe(16)
    with SambaServer(
        Path(tempfile.mkdtemp(prefix="bench-samba-")), 0, {user: password}, [Share("csi")]
    ) as samba:
        rows = _raw_smb(samba.host, samba.port, "csi", user, password)
        with driver_running(tmp) as (_, endpoint):
            rows += asyncio.run(
                _through_driver(
                    endpoint,
                    {"source": f"//{samba.host}:{samba.port}/csi/vols"},
                    {"username": user, "password": password},
                    [],
                    "smb",
                    row_dirs=True,
                )
            )
    return _report("smb", rows)


# -- NFS ---------------------------------------------------------------------------


def bench_nfs(tmp: Path, version: str) -> dict[str, Any]:
    from controller.nfs.backend import NfsBackend
    from tests.servers.ganesha import GaneshaServer

    versions = ("3", "4") if version == "3" else ("4",)
    with GaneshaServer(
        Path(tempfile.mkdtemp(prefix=f"bench-nfs{version}-")), versions=versions
    ) as server:
        (server.export_path / "vols").mkdir()
        if version == "3":
            source, port, export = (
                f"{server.host}:{server.export}/vols",
                None,
                f"{server.export}/vols",
            )
        else:
            source = f"nfs://{server.host}:{server.port}{server.pseudo_path}/vols"
            port, export = server.port, f"{server.pseudo_path}/vols"

        async def raw() -> list[dict[str, Any]]:
            backend = NfsBackend(server.host, port, export, version, 30.0)  # type: ignore[arg-type]
            rows = []
            try:
                await backend.mkdir("raw-warm")
                for c in CONCURRENCY:

                    async def op(i: int, c: int = c) -> None:
                        await backend.mkdir(f"raw-c{c}-{i:04d}")

                    rows.append(
                        {
                            "client": "raw libnfs mkdir",
                            "concurrency": c,
                            **await timed(VOLUMES, c, op),
                        }
                    )
            finally:
                await backend.aclose()
            return rows

        with server.client_netns():
            rows = asyncio.run(raw())
        prefix = ["nsenter", f"--net={server.netns_path}"] if server.netns_path else None
        with driver_running(tmp, prefix=prefix or ()) as (_, endpoint):
            rows += asyncio.run(
                _through_driver(
                    endpoint, {"source": source}, {}, [f"nfsvers={version}"], f"nfs{version}"
                )
            )
    return _report(f"nfs-v{version}", rows)


def _report(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    def row(prefix: str, c: int) -> dict[str, Any]:
        return find_row(rows, prefix, c)

    raw1, raw64 = row("raw", 1), row("raw", 64)
    ratios: dict[str, Any] = {"errors_total": sum(r["errors"] for r in rows)}
    for client in CLIENTS:
        drv1, drv64 = (
            row(f"CreateVolume (gRPC, {client}", 1),
            row(f"CreateVolume (gRPC, {client}", 64),
        )
        probe1, probe64 = (
            row(f"Probe (gRPC floor, {client}", 1),
            row(f"Probe (gRPC floor, {client}", 64),
        )
        ratios[client] = {
            "median_c1_driver_over_raw": drv1["median_ms"] / raw1["median_ms"],
            "throughput_c64_driver_over_raw": drv64["per_second"] / raw64["per_second"],
            "probe_c1_over_raw_median": probe1["median_ms"] / raw1["median_ms"],
            "probe_c64_over_raw_throughput": probe64["per_second"] / raw64["per_second"],
        }
    print(f"\n{name}: {VOLUMES} volumes per row")
    print(table(rows, ["client", "concurrency", "median_ms", "p99_ms", "per_second", "errors"]))
    for client in CLIENTS:
        r = ratios[client]
        print(
            f"  {client} client: CreateVolume median at c=1"
            f" {r['median_c1_driver_over_raw']:.2f}x raw"
            f" (target <= 1.3), throughput at c=64 {r['throughput_c64_driver_over_raw']:.2f}x raw"
            f" (target >= 0.8); an empty Probe alone: {r['probe_c1_over_raw_median']:.2f}x the raw"
            f" median, {r['probe_c64_over_raw_throughput']:.2f}x the raw throughput at c=64"
        )
    write(f"provision-{name}", {"rows": rows, "ratios": ratios})
    return ratios


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=("smb", "nfs3", "nfs4"), action="append")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("provisioning benchmarks need root (Samba users, ganesha namespaces)")
        return
    wanted = args.only or ["smb", "nfs4", "nfs3"]
    with tempfile.TemporaryDirectory() as tmp:
        if "smb" in wanted:
            bench_smb(Path(tmp))
        if "nfs4" in wanted:
            bench_nfs(Path(tmp), "4")
        if "nfs3" in wanted:
            bench_nfs(Path(tmp), "3")


if __name__ == "__main__":
    main()
