"""Clone, snapshot and restore throughput vs a raw client copy of the same tree.

For SMB (Samba) and NFSv4 (nfs-ganesha), in one run against the same
server: a tree of ``FILES`` files of ``FILE_SIZE`` bytes (100 MB; half of
the files random, half repetitive text) is

* copied by a raw client: SMB ``smbclient`` server-side ``copyfile`` from 8
  threads (the driver's bound per connection); NFS the driver's own libnfs
  binding, open/read/write/close per file, 16 files at a time, no attributes;
* cloned by the driver (CreateVolume with a volume source), which also keeps
  modes/owners/times and builds in a temporary directory renamed into place;
* snapshotted (CreateSnapshot: tar.gz streamed onto the share);
* restored (CreateVolume with a snapshot source).

The driver is a real ``csi-smb-nfs serve --mode controller`` subprocess
reached through its Unix socket.  Reported: seconds, MB/s and files/s of the
tree's data, and each operation against the raw copy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from driver.csi import csi_pb2, csi_pb2_grpc
from tests.bench.common import driver_running, table, write

FILES = 1000
FILE_SIZE = 100_000
DIRS = 10
AM = csi_pb2.VolumeCapability.AccessMode
RPC_TIMEOUT = 900.0


def make_tree(root: Path, owner: tuple[int, int] | None = None) -> int:
    """``FILES`` files in ``DIRS`` directories; returns the bytes written."""
    text = b"".join(b"line %06d of a fairly repetitive log file\n" % i for i in range(4000))
    total = 0
    for d in range(DIRS):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(FILES // DIRS):
            data = os.urandom(FILE_SIZE) if f % 2 else text[:FILE_SIZE]
            (root / f"d{d}" / f"f{f:03d}").write_bytes(data)
            total += len(data)
    if owner is not None:
        for p in [root, *root.rglob("*")]:
            os.chown(p, *owner)
    return total


def _row(what: str, seconds: float, total: int) -> dict[str, Any]:
    return {
        "operation": what,
        "seconds": seconds,
        "MB_per_s": total / seconds / 1e6,
        "files_per_s": FILES / seconds,
    }


async def _timed(what: str, total: int, work: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    await work()
    return _row(what, time.perf_counter() - started, total)


async def _through_driver(
    endpoint: str, params: dict[str, str], secrets_: dict[str, str], flags: list[str], total: int
) -> tuple[list[dict[str, Any]], int]:
    rows: list[dict[str, Any]] = []
    cap = csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(mount_flags=flags),
        access_mode=AM(mode=AM.MULTI_NODE_MULTI_WRITER),
    )
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = csi_pb2_grpc.ControllerStub(channel)

        def create(name: str) -> csi_pb2.CreateVolumeRequest:
            return csi_pb2.CreateVolumeRequest(
                name=name, volume_capabilities=[cap], parameters=params, secrets=secrets_
            )

        await stub.CreateVolume(create("warm"), timeout=RPC_TIMEOUT)  # session set-up
        # The tree is already there: this only hands out its volume ID.
        src = (await stub.CreateVolume(create("tree"), timeout=RPC_TIMEOUT)).volume.volume_id

        async def clone() -> None:
            req = create("tree-clone")
            req.volume_content_source.volume.volume_id = src
            await stub.CreateVolume(req, timeout=RPC_TIMEOUT)

        snapshot_id = ""

        async def snap() -> None:
            nonlocal snapshot_id
            resp = await stub.CreateSnapshot(
                csi_pb2.CreateSnapshotRequest(name="snap", source_volume_id=src, secrets=secrets_),
                timeout=RPC_TIMEOUT,
            )
            assert resp.snapshot.ready_to_use
            snapshot_id = resp.snapshot.snapshot_id

        async def restore() -> None:
            req = create("tree-restored")
            req.volume_content_source.snapshot.snapshot_id = snapshot_id
            await stub.CreateVolume(req, timeout=RPC_TIMEOUT)

        rows.append(await _timed("clone (CreateVolume from volume)", total, clone))
        rows.append(await _timed("snapshot (CreateSnapshot)", total, snap))
        rows.append(await _timed("restore (CreateVolume from snapshot)", total, restore))
        archive = (
            (
                await stub.ListSnapshots(
                    csi_pb2.ListSnapshotsRequest(snapshot_id=snapshot_id, secrets=secrets_)
                )
            )
            .entries[0]
            .snapshot.size_bytes
        )
    return rows, archive


def _report(name: str, rows: list[dict[str, Any]], total: int, archive: int) -> dict[str, Any]:
    raw = rows[0]
    for row in rows:
        row["vs_raw"] = raw["seconds"] / row["seconds"]
    print(f"\n{name}: {FILES} files, {total / 1e6:.0f} MB (archive {archive / 1e6:.1f} MB)")
    print(table(rows, ["operation", "seconds", "MB_per_s", "files_per_s", "vs_raw"]))
    result = {"rows": rows, "bytes": total, "files": FILES, "archive_bytes": archive}
    write(f"snapshots-{name}", result)
    return result


# -- SMB -------------------------------------------------------------------------------


def _raw_smb_copy(host: str, port: int, user: str, password: str, src: str, dst: str) -> None:
    import smbclient
    import smbclient._os as smbclient_os

    cache: dict[str, Any] = {}
    kw = {"username": user, "password": password, "port": port, "connection_cache": cache}
    root = rf"\\{host}\csi"
    smbclient.mkdir(rf"{root}\{dst}", **kw)
    for d in range(DIRS):
        smbclient.mkdir(rf"{root}\{dst}\d{d}", **kw)

    def one(i: int) -> None:
        rel = rf"d{i % DIRS}\f{i // DIRS:03d}"
        smbclient_os.copyfile(rf"{root}\{src}\{rel}", rf"{root}\{dst}\{rel}", **kw)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(FILES)))
    smbclient.reset_connection_cache(connection_cache=cache)


def bench_smb(tmp: Path) -> dict[str, Any]:
    from tests.servers.samba import SambaServer, Share

    user, password = "csibench", secrets.token_urlsafe(16)
    with SambaServer(tmp / "samba", 0, {user: password}, [Share("csi")]) as samba:
        share = samba.share_path("csi")
        owner = pwd.getpwnam(user)
        (share / "vols").mkdir()
        os.chown(share / "vols", owner.pw_uid, owner.pw_gid)
        total = make_tree(share / "vols" / "tree", (owner.pw_uid, owner.pw_gid))
        started = time.perf_counter()
        _raw_smb_copy(samba.host, samba.port, user, password, r"vols\tree", r"vols\raw-copy")
        rows = [_row("raw smbclient copyfile (server side)", time.perf_counter() - started, total)]
        with driver_running(
            tmp, "--backend-timeout", "60", sock="snap-bench.sock", verbosity="0", stop_timeout=60
        ) as (_, endpoint):
            more, archive = asyncio.run(
                _through_driver(
                    endpoint,
                    {"source": f"//{samba.host}:{samba.port}/csi/vols"},
                    {"username": user, "password": password},
                    [],
                    total,
                )
            )
    return _report("smb", rows + more, total, archive)


# -- NFS ---------------------------------------------------------------------------------


def bench_nfs4(tmp: Path) -> dict[str, Any]:
    from controller.nfs.backend import NfsBackend
    from tests.servers.ganesha import GaneshaServer

    with GaneshaServer(tmp / "nfs4", versions=("4",)) as server:
        vols = server.export_path / "vols"
        vols.mkdir()
        total = make_tree(vols / "tree")
        export = f"{server.pseudo_path}/vols"

        async def raw() -> None:
            backend = NfsBackend(server.host, server.port, export, "4", 60.0)
            slots = asyncio.Semaphore(16)

            async def one(i: int) -> None:
                rel = f"d{i % DIRS}/f{i // DIRS:03d}"
                async with slots:
                    await backend.copy_file(f"tree/{rel}", f"raw-copy/{rel}")

            try:
                for d in range(DIRS):
                    await backend.mkdir(f"raw-copy/d{d}")
                await asyncio.gather(*(one(i) for i in range(FILES)))
            finally:
                await backend.aclose()

        started = time.perf_counter()
        asyncio.run(raw())
        rows = [_row("raw libnfs read+write loop", time.perf_counter() - started, total)]
        with driver_running(
            tmp, "--backend-timeout", "60", sock="snap-bench.sock", verbosity="0", stop_timeout=60
        ) as (_, endpoint):
            more, archive = asyncio.run(
                _through_driver(
                    endpoint,
                    {"source": f"nfs://{server.host}:{server.port}{export}"},
                    {},
                    ["nfsvers=4"],
                    total,
                )
            )
    return _report("nfs-v4", rows + more, total, archive)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=("smb", "nfs4"), action="append")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("snapshot benchmarks need root (Samba users, ganesha)")
        return
    wanted = args.only or ["smb", "nfs4"]
    # Under /tmp (smbd reaches the share as the SMB user: every parent must be
    # traversable); the trees and their copies (~450 MB) go when it ends.
    with tempfile.TemporaryDirectory(prefix="bench-snapshots-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - smbd users must traverse it
        if "smb" in wanted:
            bench_smb(Path(tmp))
        if "nfs4" in wanted:
            bench_nfs4(Path(tmp))


if __name__ == "__main__":
    main()
