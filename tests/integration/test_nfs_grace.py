"""A real NFS server in its grace period (nfs-ganesha, Graceless = false).

After a restart a server that had clients refuses state-changing calls for
its grace period so they can reclaim their state: NFSv4 answers
NFS4ERR_GRACE (OPEN, RENAME, REMOVE), NFSv3 NFS3ERR_JUKEBOX (SETATTR).  The
driver retries these with backoff inside the call's time budget and answers
UNAVAILABLE when the server is still busy then (never INTERNAL); a budget
longer than the grace period sees the call succeed.  ganesha only holds the
grace period when a client it knew has something to reclaim, so each test
first opens a file over NFSv4 (CreateSnapshot writes one) and then restarts
the server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from controller.nfs.backend import NfsBackend
from driver.csi import csi_pb2
from tests.csi_requests import cap
from tests.harness import running_controller
from tests.servers.ganesha import GaneshaServer
from tests.servers.plugin import require_root

pytestmark = pytest.mark.integration

GRACE = 12  # seconds of grace after each restart


@pytest.fixture(params=["4", "3"], ids=["v4", "v3"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GaneshaServer]:
    require_root("nfs-ganesha tests need root")
    versions = ("4",) if request.param == "4" else ("3", "4")
    with GaneshaServer(tmp_path / "g", versions=versions, grace_seconds=GRACE) as s:
        (s.export_path / "k8s").mkdir()
        with s.client_netns():
            yield s


def _v3(server: GaneshaServer) -> bool:
    return "3" in server.versions


def _create(server: GaneshaServer, name: str) -> csi_pb2.CreateVolumeRequest:
    if _v3(server):
        source, flag = f"{server.host}:{server.export}/k8s", "nfsvers=3"
    else:
        source, flag = f"nfs://{server.host}:{server.port}{server.pseudo_path}/k8s", "nfsvers=4"
    return csi_pb2.CreateVolumeRequest(
        name=name, volume_capabilities=[cap(flag)], parameters={"source": source}
    )


def _backend(server: GaneshaServer, timeout: float) -> NfsBackend:
    if _v3(server):
        return NfsBackend(server.host, None, server.export, "3", timeout)
    return NfsBackend(server.host, server.port, server.pseudo_path, "4", timeout)


async def test_a_server_in_grace_is_unavailable_then_serves(
    tmp_path: Path, server: GaneshaServer
) -> None:
    async with running_controller(tmp_path / "csi.sock", backend_timeout=2) as (_, c):
        vol = (await c.controller.CreateVolume(_create(server, "pvc-g"))).volume.volume_id
        (server.export_path / "k8s" / "pvc-g" / "data.txt").write_text("payload")
        snap = csi_pb2.CreateSnapshotRequest(name="snap-1", source_volume_id=vol)
        await c.controller.CreateSnapshot(snap)  # v4: an OPEN, this client now has state
        if _v3(server):  # v3 keeps no state on the server: a v4 client leaves some
            seed = NfsBackend(server.host, None, server.pseudo_path, "4", 5)
            try:
                await (await seed.open_write("k8s/seed.txt")).aclose()
            finally:
                await seed.aclose()

        server.restart()
        assert "IN GRACE" in server.log_tail(200)
        later = csi_pb2.CreateSnapshotRequest(name="snap-2", source_volume_id=vol)
        begun = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.controller.CreateSnapshot(later)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
        details = info.value.details() or ""
        assert ("NFS3ERR_JUKEBOX" if _v3(server) else "NFS4ERR_GRACE") in details
        assert "tries" in details  # retried before giving up
        assert time.monotonic() - begun < GRACE  # within the 2 s budget, not the grace

    if not _v3(server):
        # The driver's own bound is long: the CO's deadline is what the
        # retries fit in, and the answer comes before it runs out (REMOVE is
        # refused in grace too; DeleteVolume has no background job).
        async with running_controller(tmp_path / "csi2.sock", backend_timeout=60) as (_, c):
            begun = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c.controller.DeleteVolume(
                    csi_pb2.DeleteVolumeRequest(volume_id=vol), timeout=4
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
            assert time.monotonic() - begun < 4
            assert "NFS4ERR_GRACE" in (info.value.details() or "")

    # A budget longer than the grace period: the same kind of call is retried
    # until the server leaves grace, and succeeds.
    backend = _backend(server, timeout=3 * GRACE)
    try:
        writer = await backend.open_write("k8s/after-grace.txt")
        await writer.write(b"ok")
        await writer.aclose()
    finally:
        await backend.aclose()
    assert (server.export_path / "k8s" / "after-grace.txt").read_bytes() == b"ok"
    assert "NOT IN GRACE" in server.log_tail(200)
