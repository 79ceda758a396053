"""1,000 creates and 1,000 deletes under server crashes; a hung server.

The client retries like the Kubernetes csi-provisioner (exponential backoff
on UNAVAILABLE, ABORTED and DEADLINE_EXCEEDED).  Samba is killed and restarted
twice and the NFS server once while the load runs.  Afterwards every volume
exists exactly once, every deleted one is gone, nothing else is on the
shares, and the driver's descriptors, threads and sessions are back to their
idle counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from driver.csi import csi_pb2, csi_pb2_grpc
from tests.bench.common import write
from tests.csi_requests import cap
from tests.faults.conftest import SMB_USER, Driver
from tests.harness import wait_until
from tests.servers.ganesha import GaneshaServer
from tests.servers.samba import SambaServer

pytestmark = [pytest.mark.faults, pytest.mark.integration]

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
PER_PROTOCOL = 500
# The retrying client's own deadline: how long a recovery may take at most.
RECOVERY_BOUND = 180.0
CONCURRENCY = 32
CAP = cap()


@dataclass
class Stats:
    retries: int = 0
    failures: list[str] = field(default_factory=list)
    done: int = 0
    last_ok: dict[str, float] = field(default_factory=dict)


async def retrying(
    call: Callable[..., Awaitable[Any]], request: Any, stats: Stats, protocol: str
) -> Any:
    delay = 0.05
    deadline = time.monotonic() + RECOVERY_BOUND
    while True:
        try:
            result = await call(request, timeout=30)
        except grpc.aio.AioRpcError as err:
            if err.code() not in RETRYABLE or time.monotonic() > deadline:
                stats.failures.append(f"{err.code().name}: {err.details()}")
                raise
            stats.retries += 1
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)
        else:
            stats.done += 1
            stats.last_ok[protocol] = time.monotonic()
            return result


async def crash_and_restart(
    server: SambaServer | GaneshaServer,
    when: Callable[[], bool],
    protocol: str,
    stats: Stats,
    log: list[dict[str, float]],
) -> None:
    """Kill ``server`` once ``when()`` holds, start it again, time the recovery."""
    await wait_until(when, timeout=RECOVERY_BOUND)
    killed = time.monotonic()
    await asyncio.to_thread(server.kill)
    await asyncio.sleep(0.3)  # the outage itself (the fault under test, not a wait)
    await asyncio.to_thread(server.start)
    restarted = time.monotonic()
    # A failure, not a hang, if the protocol never answers again.
    await wait_until(lambda: stats.last_ok.get(protocol, 0) >= restarted, timeout=RECOVERY_BOUND)
    log.append(
        {
            "protocol": protocol,
            "down_s": restarted - killed,
            "recovery_after_restart_s": stats.last_ok[protocol] - restarted,
        }
    )


def _requests(
    samba: SambaServer, nfs: GaneshaServer
) -> list[tuple[str, csi_pb2.CreateVolumeRequest]]:
    smb_secrets = {"username": SMB_USER, "password": samba.password(SMB_USER)}
    out: list[tuple[str, csi_pb2.CreateVolumeRequest]] = []
    for i in range(PER_PROTOCOL):
        out.append(
            (
                "smb",
                csi_pb2.CreateVolumeRequest(
                    name=f"pvc-s{i:04d}",
                    volume_capabilities=[CAP],
                    secrets=smb_secrets,
                    parameters={"source": f"//{samba.host}:{samba.port}/csi/load"},
                ),
            )
        )
        out.append(
            (
                "nfs",
                csi_pb2.CreateVolumeRequest(
                    name=f"pvc-n{i:04d}",
                    volume_capabilities=[CAP],
                    parameters={"source": f"nfs://{nfs.host}:{nfs.port}{nfs.pseudo_path}/load"},
                ),
            )
        )
    return out


async def test_load_with_server_crashes(
    driver: Driver, samba: SambaServer, nfs: GaneshaServer
) -> None:
    smb_dir = samba.share_path("csi") / "load"
    nfs_dir = nfs.export_path / "load"
    smb_dir.mkdir(exist_ok=True)
    nfs_dir.mkdir(exist_ok=True)
    user = pwd.getpwnam(SMB_USER)
    os.chown(smb_dir, user.pw_uid, user.pw_gid)  # the share's user owns its base directory
    smb_secrets = {"username": SMB_USER, "password": samba.password(SMB_USER)}
    requests = _requests(samba, nfs)
    async with grpc.aio.insecure_channel(driver.endpoint) as channel:
        stub = csi_pb2_grpc.ControllerStub(channel)
        # Warm-up at full concurrency: pools reach their steady size; that is "idle".
        warm = Stats()
        sem = asyncio.Semaphore(CONCURRENCY)

        async def bounded(coro: Awaitable[Any]) -> Any:
            async with sem:
                return await coro

        # Warm-up: sessions open, then rounds at full concurrency so that the
        # bounded pools (8 SMB threads per identity) reach their steady size.
        smb_req, nfs_req = requests[0][1], requests[1][1]
        warm_ids = []
        for round_ in range(4):
            warm_ids += await asyncio.gather(
                *(
                    bounded(
                        retrying(
                            stub.CreateVolume,
                            csi_pb2.CreateVolumeRequest(
                                name=f"warm-{round_}-{i}",
                                volume_capabilities=[CAP],
                                parameters=(smb_req if i % 4 else nfs_req).parameters,
                                secrets=(smb_req if i % 4 else nfs_req).secrets,
                            ),
                            warm,
                            "warm",
                        )
                    )
                    for i in range(1 if round_ == 0 else 64)
                )
            )
        await asyncio.gather(
            *(
                bounded(
                    retrying(
                        stub.DeleteVolume,
                        csi_pb2.DeleteVolumeRequest(
                            volume_id=w.volume.volume_id, secrets=smb_secrets
                        ),
                        warm,
                        "x",
                    )
                )
                for w in warm_ids
            )
        )
        idle = driver.resources()
        idle_threads = driver.thread_names()

        stats = Stats()
        faults: list[dict[str, float]] = []
        peak_rss = idle["rss"]
        total = len(requests)

        async def sample_rss() -> None:
            nonlocal peak_rss
            while True:
                peak_rss = max(peak_rss, driver.resources()["rss"])
                await asyncio.sleep(0.2)

        sampler = asyncio.ensure_future(sample_rss())
        t0 = time.monotonic()
        injectors = [
            asyncio.ensure_future(
                crash_and_restart(samba, lambda: stats.done >= total * 0.2, "smb", stats, faults)
            ),
            asyncio.ensure_future(
                crash_and_restart(nfs, lambda: stats.done >= total * 0.5, "nfs", stats, faults)
            ),
            asyncio.ensure_future(
                crash_and_restart(samba, lambda: stats.done >= total * 1.3, "smb", stats, faults)
            ),
        ]
        created = await asyncio.gather(
            *(bounded(retrying(stub.CreateVolume, r, stats, p)) for p, r in requests)
        )
        create_wall = time.monotonic() - t0
        ids = {r.name: c.volume.volume_id for (_, r), c in zip(requests, created, strict=True)}
        assert len(set(ids.values())) == total
        # Every volume exists exactly once, and nothing else is there.
        assert sorted(p.name for p in smb_dir.iterdir()) == sorted(
            n for n in ids if n.startswith("pvc-s")
        )
        assert sorted(p.name for p in nfs_dir.iterdir()) == sorted(
            n for n in ids if n.startswith("pvc-n")
        )

        t1 = time.monotonic()
        await asyncio.gather(
            *(
                bounded(
                    retrying(
                        stub.DeleteVolume,
                        csi_pb2.DeleteVolumeRequest(
                            volume_id=vid, secrets=smb_secrets if name.startswith("pvc-s") else {}
                        ),
                        stats,
                        "smb" if name.startswith("pvc-s") else "nfs",
                    )
                )
                for name, vid in ids.items()
            )
        )
        delete_wall = time.monotonic() - t1
        await asyncio.gather(*injectors)
        sampler.cancel()
    assert stats.failures == []
    assert list(smb_dir.iterdir()) == []
    assert list(nfs_dir.iterdir()) == []
    assert len(faults) == 3

    # Back to idle: a dead session's connection and threads are closed in the
    # background, which takes longer on a loaded machine; wait for the counts
    # to come down (bounded) instead of sampling them once at an arbitrary moment.
    def settled() -> bool:
        now = driver.resources()
        return (
            now["fds"] <= idle["fds"]
            and now["threads"] <= idle["threads"]
            and driver.connections_to(samba.port) <= 1
            and driver.connections_to(nfs.port) <= 1
        )

    with contextlib.suppress(TimeoutError):  # the assertions below say what is left
        await wait_until(settled, timeout=30)
    end = driver.resources()
    figures = {
        "volumes": total,
        "creates_per_s": total / create_wall,
        "deletes_per_s": total / delete_wall,
        "client_retries": stats.retries,
        "faults": faults,
        "idle": idle,
        "end": end,
        "peak_rss_mib": peak_rss / 2**20,
        "end_rss_mib": end["rss"] / 2**20,
    }
    write("faults-load", figures)
    print(json.dumps(figures, indent=2))
    assert end["fds"] <= idle["fds"], figures
    assert end["threads"] <= idle["threads"], "\n".join(
        ["", *idle_threads, "--", *driver.thread_names()]
    )
    assert driver.connections_to(samba.port) <= 1
    assert driver.connections_to(nfs.port) <= 1


async def test_hung_server(
    driver: Driver, samba: SambaServer, nfs: GaneshaServer, tmp_path: Path
) -> None:
    smb_secrets = {"username": SMB_USER, "password": samba.password(SMB_USER)}
    smb_source = f"//{samba.host}:{samba.port}/csi/hung"
    nfs_source = f"nfs://{nfs.host}:{nfs.port}{nfs.pseudo_path}"

    def smb_req(name: str) -> csi_pb2.CreateVolumeRequest:
        return csi_pb2.CreateVolumeRequest(
            name=name,
            volume_capabilities=[CAP],
            secrets=smb_secrets,
            parameters={"source": smb_source},
        )

    async with grpc.aio.insecure_channel(driver.endpoint) as channel:
        stub = csi_pb2_grpc.ControllerStub(channel)
        await stub.CreateVolume(smb_req("hung-warm"))
        before = driver.resources()
        samba.pause()
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                *(stub.CreateVolume(smb_req(f"hung-{i}"), timeout=30) for i in range(20)),
                return_exceptions=True,
            )
            elapsed = time.monotonic() - started
            codes = {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)}
            assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}, results[:3]
            # --backend-timeout 3: every call ends close to its bound, not at the client's 30 s.
            assert elapsed < 3 * 3 + 2
            during = driver.resources()
            # Blocked threads stay bounded by the connection's pool (8).
            assert during["threads"] <= before["threads"] + 8
            # Other shares keep working.
            ok = await stub.CreateVolume(
                csi_pb2.CreateVolumeRequest(
                    name="other-share", volume_capabilities=[CAP], parameters={"source": nfs_source}
                ),
                timeout=10,
            )
            assert ok.volume.volume_id
        finally:
            samba.resume()
        # After SIGCONT the share works again (within a few retries).
        deadline = time.monotonic() + 30
        while True:
            try:
                await stub.CreateVolume(smb_req("hung-after"), timeout=10)
                break
            except grpc.aio.AioRpcError as err:
                assert err.code() in RETRYABLE
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        assert (samba.share_path("csi") / "hung" / "hung-after").is_dir()
