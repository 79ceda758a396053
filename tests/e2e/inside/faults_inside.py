"""Runs INSIDE the UML guest (tests/e2e/test_node_faults_e2e.py boots it):
node faults with real kernel cifs / nfs mounts and the driver as a real
process (``python -m driver serve --mode node`` on a Unix socket).

* A hung server, with a volume staged and published: Samba frozen with
  SIGSTOP on every ``smbd``; the kernel NFS server made unreachable by a
  ``tc`` filter that drops every TCP segment to or from port 2049 on ``lo``
  (nfsd threads are kernel threads: they cannot be stopped, and a stopped
  ``rpc.mountd`` does not hang NFSv4 data operations).  NodeGetVolumeStats
  and NodeUnpublishVolume must return within their bounds, the driver's
  thread count stays bounded, and the other protocol keeps working.  Then
  the server comes back: healthy again and a re-publish works.
* A driver restart: SIGKILL with SMB and NFS volumes staged and published,
  a new driver process, the mounts still served, idempotent repeats of the
  last RPCs succeed, and unpublish/unstage leave no mount behind.
* The driver logs (written to the shared work dir, which the host scans
  too) never contain the SMB password.

Like node_inside.py, the file name does not match ``test_*.py``: the host
never collects it; the guest runs it by path and writes a junit report.
Figures go to ``faults-node.json`` (tests/bench/common.py) in
``$BENCH_RESULTS``, the shared work dir.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from driver.csi import csi_pb2
from node.linux import PROBE_TIMEOUT, UNMOUNT_TIMEOUT, mountinfo
from tests.bench.common import write
from tests.e2e.inside.common import (
    NFS_DIR,
    SMB_DIR,
    SMB_PASSWORD,
    SMB_SHARE,
    SMB_USER,
    STAGING,
    Volume,
    healthy_again,
    mounts_under,
    write_through,
)
from tests.e2e.inside.driver_processes import DriverProc, Drivers
from tests.e2e.inside.servers import nfs_unreachable, smb_frozen, smbd_pids
from tests.harness import wait_until

pytestmark = pytest.mark.e2e

T = TypeVar("T")
# By name: also type-checks with --platform win32 (where these do not exist).
SIGKILL, SIGSTOP, SIGCONT = (signal.Signals[n] for n in ("SIGKILL", "SIGSTOP", "SIGCONT"))

# Out of our environment at once: the driver processes we start must not
# inherit it (the log scan then proves the driver never writes it).
WORKDIR = Path(os.environ["E2E_WORKDIR"])
LOGS = WORKDIR / "driver-logs"

MOUNT_TIMEOUT = 20.0  # --mount-timeout of the driver processes
UNMOUNT_BOUND = min(MOUNT_TIMEOUT, UNMOUNT_TIMEOUT)  # the node's umount bound
SLACK = 2.5  # UML is slow: scheduling, process start-up
STATS_BOUND = PROBE_TIMEOUT + SLACK
BURST = 12  # concurrent stats calls per path while the server hangs
THREAD_SLACK = 8  # allowed growth of the driver's threads while it hangs
FIGURES: dict[str, Any] = {}


def record(**figures: Any) -> None:
    FIGURES.update(figures)
    write(
        "faults-node",
        {
            "where": "user-mode Linux guest, Samba and kernel nfsd on loopback",
            "probe_timeout_s": PROBE_TIMEOUT,
            "unmount_bound_s": UNMOUNT_BOUND,
            **FIGURES,
        },
    )


# ---------------------------------------------------------------- volumes


@dataclass
class PodVolume(Volume):
    target: Path  # the one pod mount each test publishes to


def smb_volume(tmp: Path, name: str) -> PodVolume:
    (SMB_DIR / name).mkdir()
    os.chmod(SMB_DIR / name, 0o777)  # noqa: S103 - smbd writes as SMB_USER; a throwaway tmpfs
    return PodVolume(
        name,
        {"protocol": "smb", "source": f"//127.0.0.1/{SMB_SHARE}", "subDir": name},
        (),
        {"username": SMB_USER, "password": SMB_PASSWORD},
        staging=tmp / "kubelet" / STAGING / name / "globalmount",
        server_dir=SMB_DIR / name,
        target=tmp / "kubelet" / "pods" / name / "mount",
    )


def nfs_volume(tmp: Path, name: str) -> PodVolume:
    (NFS_DIR / name).mkdir()
    return PodVolume(
        name,
        {"protocol": "nfs", "source": "127.0.0.1:/", "subDir": name},
        ("vers=4.1",),
        {},
        staging=tmp / "kubelet" / STAGING / name / "globalmount",
        server_dir=NFS_DIR / name,
        target=tmp / "kubelet" / "pods" / name / "mount",
    )


def mounted(path: Path) -> int:
    return len(mountinfo.at(mountinfo.read(), str(path)))


@pytest.fixture
async def drivers(tmp: Path) -> AsyncIterator[Drivers]:
    d = Drivers(tmp, logs=LOGS, mount_timeout=MOUNT_TIMEOUT)
    try:
        yield d
    finally:
        await d.aclose()


# ---------------------------------------------------------------- helpers


async def wait(aw: Awaitable[T]) -> T:
    """A coroutine for an awaitable (gRPC calls are not coroutines)."""
    return await aw


async def timed(aw: Awaitable[T]) -> tuple[float, T]:
    start = time.monotonic()
    result = await aw
    return time.monotonic() - start, result


async def healthy(c: Any, vol: Volume, path: Path) -> Any:
    resp = await c.NodeGetVolumeStats(vol.stats(path), timeout=STATS_BOUND + 5)
    assert not resp.volume_condition.abnormal, resp.volume_condition.message
    assert resp.usage[0].total > 0
    return resp


@asynccontextmanager
async def sampling_threads(d: DriverProc) -> AsyncIterator[list[int]]:
    samples: list[int] = []

    async def sample() -> None:
        while True:
            samples.append(d.threads())
            await asyncio.sleep(0.05)

    task = asyncio.create_task(sample())
    try:
        yield samples
    finally:
        task.cancel()
        samples.append(d.threads())


async def hung_server(
    drivers: Drivers,
    tmp: Path,
    protocol: str,
    vol: PodVolume,
    other: PodVolume,
    freeze: Callable[[], AbstractContextManager[None]],
) -> None:
    d = drivers.start(f"hung-{protocol}")
    await drivers.ready(d)
    c = d.node
    await c.NodeStageVolume(vol.stage(), timeout=MOUNT_TIMEOUT + 5)
    await c.NodePublishVolume(vol.publish(vol.target), timeout=MOUNT_TIMEOUT + 5)
    write_through(vol.target, "before.txt", f"{protocol} before the hang")
    await healthy(c, vol, vol.target)
    baseline = d.threads()

    with freeze():
        async with sampling_threads(d) as samples:
            t0 = time.monotonic()
            # kubelet's view: stats of the pod's path, again and again; and
            # of the staging path: one stuck probe per path, no more.
            stats = asyncio.create_task(
                timed(c.NodeGetVolumeStats(vol.stats(vol.target), timeout=STATS_BOUND + 10))
            )
            burst = [
                asyncio.create_task(
                    wait(c.NodeGetVolumeStats(vol.stats(path), timeout=STATS_BOUND + 10))
                )
                for path in (vol.target, vol.staging)
                for _ in range(BURST)
            ]
            # The calls have reached the hung mount: a probe thread is stuck in it.
            await wait_until(lambda: d.threads() > baseline)
            unpublish = asyncio.create_task(
                timed(c.NodeUnpublishVolume(vol.unpublish(vol.target), timeout=UNMOUNT_BOUND + 10))
            )
            # Meanwhile the healthy protocol works: a new volume all the way.
            t_other, _ = await timed(c.NodeStageVolume(other.stage(), timeout=MOUNT_TIMEOUT + 5))
            await c.NodePublishVolume(other.publish(other.target), timeout=MOUNT_TIMEOUT + 5)
            write_through(other.target, "during.txt", f"written while {protocol} hangs")
            await healthy(c, other, other.target)
            caps = await c.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest(), timeout=5)
            assert caps.capabilities
            other_done = time.monotonic() - t0
            hung_stats_pending = not stats.done()

            t_stats, resp = await stats
            t_unpublish, _ = await unpublish
            burst_resps = await asyncio.gather(*burst)
            threads_hung = d.threads()
        peak = max(samples)

    print(
        f"{protocol} hung: stats {t_stats:.2f} s ({resp.volume_condition.message!r}), "
        f"unpublish {t_unpublish:.2f} s, other protocol stage {t_other:.2f} s, "
        f"threads {baseline} -> peak {peak}, {threads_hung} after the burst"
    )
    assert resp.volume_condition.abnormal
    assert "did not answer" in resp.volume_condition.message, resp.volume_condition.message
    assert t_stats < STATS_BOUND, f"NodeGetVolumeStats took {t_stats:.1f} s"
    assert all(r.volume_condition.abnormal for r in burst_resps)
    assert t_unpublish < UNMOUNT_BOUND, f"NodeUnpublishVolume took {t_unpublish:.1f} s"
    assert "detaching lazily" in d.log.read_text(), "unpublish did not detach the hung mount"
    assert mounted(vol.target) == 0
    assert not vol.target.exists()
    assert peak <= baseline + THREAD_SLACK, f"threads {baseline} -> {peak} (samples {samples})"
    # the other volume's RPCs were not queued behind the hung ones
    assert hung_stats_pending, f"the healthy protocol's RPCs took {other_done:.1f} s"

    # The server is back.
    healed, restaged = await healthy_again(
        c, vol, 30, path=vol.staging, every=0.3, stage_timeout=MOUNT_TIMEOUT + 5
    )
    t_republish, _ = await timed(
        c.NodePublishVolume(vol.publish(vol.target), timeout=MOUNT_TIMEOUT + 5)
    )
    assert (vol.target / "before.txt").read_text() == f"{protocol} before the hang"
    write_through(vol.target, "after.txt", "back")
    assert (vol.server_dir / "after.txt").read_text() == "back"
    await healthy(c, vol, vol.target)

    # Stuck probe threads end with the hang.
    deadline = time.monotonic() + 15
    while d.threads() > baseline + 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    threads_after = d.threads()
    assert threads_after <= baseline + 2, f"threads {baseline} -> {threads_after} after the hang"

    for v in (vol, other):
        await c.NodeUnpublishVolume(v.unpublish(v.target), timeout=UNMOUNT_BOUND + 5)
        await c.NodeUnstageVolume(v.unstage(), timeout=UNMOUNT_BOUND + 5)
    assert mounts_under(tmp) == []
    record(
        **{
            f"{protocol}_hung": {
                "stats_s": round(t_stats, 3),
                "unpublish_s": round(t_unpublish, 3),
                "other_protocol_stage_s": round(t_other, 3),
                "healthy_again_s": round(healed, 3),
                "needed_restage": restaged,
                "republish_s": round(t_republish, 3),
                "threads_baseline": baseline,
                "threads_peak": peak,
                "threads_after": threads_after,
                "stats_calls_during_hang": 1 + len(burst),
            }
        }
    )


# ---------------------------------------------------------------- tests


async def test_smb_hung_server(tmp: Path, drivers: Drivers) -> None:
    vol = smb_volume(tmp, "pvc-smb-hung")
    other = nfs_volume(tmp, "pvc-nfs-meanwhile")
    await hung_server(drivers, tmp, "smb", vol, other, smb_frozen)


async def test_nfs_hung_server(tmp: Path, drivers: Drivers) -> None:
    vol = nfs_volume(tmp, "pvc-nfs-hung")
    other = smb_volume(tmp, "pvc-smb-meanwhile")
    await hung_server(drivers, tmp, "nfs", vol, other, nfs_unreachable)


async def test_smb_restage_replaces_a_stuck_session(tmp: Path, drivers: Drivers) -> None:
    """One SMB session hangs (the smbd child serving its connection is
    stopped) while the server still serves new connections: a re-stage
    mounts again with its own session (nosharesock), and that new mount is
    healthy and publishable at once, while the old session still hangs."""
    d = drivers.start("stuck-session")
    await drivers.ready(d)
    c = d.node
    vol = smb_volume(tmp, "pvc-smb-stuck")
    before = set(smbd_pids(sessions_only=True))
    await c.NodeStageVolume(vol.stage(), timeout=MOUNT_TIMEOUT + 5)
    session = set(smbd_pids(sessions_only=True)) - before
    assert len(session) == 1, f"cannot tell the volume's smbd ({session})"
    (pid,) = session
    os.kill(pid, SIGSTOP)
    try:
        t_stats, resp = await timed(
            c.NodeGetVolumeStats(vol.stats(vol.staging), timeout=STATS_BOUND + 10)
        )
        assert resp.volume_condition.abnormal, "the stuck session answered"
        assert t_stats < STATS_BOUND
        t_restage, _ = await timed(c.NodeStageVolume(vol.stage(), timeout=MOUNT_TIMEOUT + 5))
        assert mounted(vol.staging) == 1  # the stuck one is detached
        t_healthy, _ = await timed(healthy(c, vol, vol.staging))
        assert t_healthy < PROBE_TIMEOUT, f"stats of the new mount took {t_healthy:.1f} s"
        await c.NodePublishVolume(vol.publish(vol.target), timeout=MOUNT_TIMEOUT + 5)
        write_through(vol.target, "new-session.txt", "fresh")
        assert (vol.server_dir / "new-session.txt").read_text() == "fresh"
        assert pid in smbd_pids(sessions_only=True)  # the old session still hangs
    finally:
        os.kill(pid, SIGCONT)
    print(
        f"stuck smb session: stats {t_stats:.2f} s, re-stage {t_restage:.2f} s, "
        f"then stats {t_healthy:.2f} s"
    )
    await c.NodeUnpublishVolume(vol.unpublish(vol.target), timeout=UNMOUNT_BOUND + 5)
    await c.NodeUnstageVolume(vol.unstage(), timeout=UNMOUNT_BOUND + 5)
    assert mounts_under(tmp) == []
    record(
        smb_stuck_session={
            "stats_s": round(t_stats, 3),
            "restage_s": round(t_restage, 3),
            "stats_after_restage_s": round(t_healthy, 3),
        }
    )


async def test_driver_restart_keeps_mounts(tmp: Path, drivers: Drivers) -> None:
    first = drivers.start("restart-1")
    await drivers.ready(first)
    vols = [smb_volume(tmp, "pvc-smb-restart"), nfs_volume(tmp, "pvc-nfs-restart")]
    for v in vols:
        await first.node.NodeStageVolume(v.stage(), timeout=MOUNT_TIMEOUT + 5)
        await first.node.NodePublishVolume(v.publish(v.target), timeout=MOUNT_TIMEOUT + 5)
        write_through(v.target, "kept.txt", f"{v.id} survives")
    drivers.kill(first)
    assert first.proc.returncode == -SIGKILL

    second = drivers.start("restart-2")
    t_probe = await drivers.ready(second)
    c = second.node
    await healthy(c, vols[0], vols[0].target)
    t_first_node_rpc = time.monotonic() - second.started
    print(f"restart: Probe after {t_probe:.2f} s, first stats after {t_first_node_rpc:.2f} s")

    for v in vols:
        assert (mounted(v.staging), mounted(v.target)) == (1, 1)
        await healthy(c, v, v.target)
        await healthy(c, v, v.staging)
        assert (v.target / "kept.txt").read_text() == f"{v.id} survives"
        # kubelet repeats its last calls: idempotent, nothing mounted twice
        await c.NodeStageVolume(v.stage(), timeout=MOUNT_TIMEOUT + 5)
        await c.NodePublishVolume(v.publish(v.target), timeout=MOUNT_TIMEOUT + 5)
        assert (mounted(v.staging), mounted(v.target)) == (1, 1)
    for v in vols:
        await c.NodeUnpublishVolume(v.unpublish(v.target), timeout=UNMOUNT_BOUND + 5)
        await c.NodeUnstageVolume(v.unstage(), timeout=UNMOUNT_BOUND + 5)
        assert not v.target.exists()
        assert not v.staging.exists()
        assert (v.server_dir / "kept.txt").exists()  # unmounting never deletes data
    assert mounts_under(tmp) == []
    sources = {f"//127.0.0.1/{SMB_SHARE}/pvc-smb-restart", "127.0.0.1:/pvc-nfs-restart"}
    assert [e for e in mountinfo.read() if e.source in sources] == []
    record(
        restart={
            "probe_ok_s": round(t_probe, 3),
            "first_node_rpc_ok_s": round(t_first_node_rpc, 3),
        }
    )


def test_driver_logs_hold_no_password() -> None:
    logs = sorted(LOGS.glob("*.log"))
    names = {p.stem for p in logs}
    assert {"hung-smb", "hung-nfs", "stuck-session", "restart-1", "restart-2"} <= names, names
    for path in logs:
        text = path.read_text(errors="replace")
        # each driver handled an SMB NodeStageVolume and logged it, redacted
        assert '"password": "***"' in text, f"{path.name}: no SMB stage logged (log level?)"
        assert SMB_PASSWORD not in text, f"{path.name} holds the SMB password"
