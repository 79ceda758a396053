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
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
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
    mounts_under,
)
from tests.harness import ROOT, Client, client_for
from tests.secret_scan import watch_log_file

pytestmark = pytest.mark.e2e

T = TypeVar("T")
# By name: also type-checks with --platform win32 (where these do not exist).
SIGKILL, SIGSTOP, SIGCONT, SIGTERM = (
    signal.Signals[n] for n in ("SIGKILL", "SIGSTOP", "SIGCONT", "SIGTERM")
)

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
NFS_PORT = 2049
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


def write_through(target: Path, name: str, text: str) -> None:
    with (target / name).open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------- driver processes


@dataclass
class DriverProc:
    name: str
    proc: subprocess.Popen[bytes]
    sock: Path
    log: Path
    started: float  # time.monotonic() at Popen
    client: Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = client_for(f"unix://{self.sock}")

    @property
    def node(self) -> Any:
        """The Node stub (typed Any: the generated stubs declare sync calls)."""
        return self.client.node

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def running(self) -> bool:
        return self.proc.poll() is None


class Drivers:
    """Starts ``python -m driver serve --mode node`` processes; stops them all."""

    def __init__(self, tmp: Path) -> None:
        self.sock = tmp / "csi" / "csi.sock"
        self.kubelet = tmp / "kubelet"
        self.all: list[DriverProc] = []

    def start(self, name: str) -> DriverProc:
        LOGS.mkdir(parents=True, exist_ok=True)
        log_path = watch_log_file(LOGS / f"{name}.log")
        argv = [
            sys.executable, "-m", "driver", "serve", "--mode", "node",
            "--endpoint", f"unix://{self.sock}", "--node-id", "e2e-faults",
            "--mount-timeout", f"{MOUNT_TIMEOUT:g}", "--log-format", "json", "-v", "4",
            "--kubelet-dir", str(self.kubelet),
        ]  # fmt: skip
        assert "SMB_PASSWORD" not in os.environ
        with log_path.open("ab") as log_file:
            started = time.monotonic()
            proc = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT, env=dict(os.environ)
            )
        d = DriverProc(name, proc, self.sock, log_path, started)
        self.all.append(d)
        return d

    async def ready(self, d: DriverProc, timeout: float = 30) -> float:
        """Seconds from the start of ``d`` to its first successful Probe.
        A fresh channel per attempt: no client reconnect backoff is measured."""
        deadline = d.started + timeout
        while True:
            if not d.running():
                raise AssertionError(f"driver {d.name} exited with {d.proc.returncode}")
            c = client_for(f"unix://{d.sock}")
            try:
                identity: Any = c.identity
                await identity.Probe(csi_pb2.ProbeRequest(), timeout=1)
                return time.monotonic() - d.started
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
            finally:
                await c.channel.close()
            await asyncio.sleep(0.02)

    @staticmethod
    def kill(d: DriverProc) -> None:
        d.proc.send_signal(SIGKILL)
        d.proc.wait(timeout=10)

    async def aclose(self) -> None:
        for d in self.all:
            await d.client.channel.close()
            if d.running():
                d.proc.send_signal(SIGTERM)
                try:
                    d.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    d.proc.kill()
                    d.proc.wait()


@pytest.fixture
async def drivers(tmp: Path) -> AsyncIterator[Drivers]:
    d = Drivers(tmp)
    try:
        yield d
    finally:
        await d.aclose()


# ---------------------------------------------------------------- faults


def smbd_pids(*, sessions_only: bool = False) -> list[int]:
    """Every smbd process, or (``sessions_only``) the children that each
    serve one client connection (the parent's helpers have their own names)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0]
            with open(f"/proc/{name}/comm", "rb") as f:
                comm = f.read().strip()
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if not os.path.basename(argv0).startswith(b"smbd"):
            continue
        ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        if not sessions_only or (comm == b"smbd" and ppid != 1):
            pids.append(int(name))
    return pids


@contextmanager
def smb_frozen() -> Iterator[None]:
    """SIGSTOP every smbd (the parent and its per-connection children):
    connections stay open, nothing answers."""
    stopped: set[int] = set()
    try:
        while new := set(smbd_pids()) - stopped:  # until no new child shows up
            for pid in new:
                os.kill(pid, SIGSTOP)
            stopped |= new
        assert stopped, "no smbd process to freeze"
        yield
    finally:
        for pid in stopped:
            with suppress(ProcessLookupError):
                os.kill(pid, SIGCONT)


def _tc(*args: str, check: bool = True) -> None:
    subprocess.run(["tc", *args], check=check, capture_output=True)


@contextmanager
def nfs_unreachable() -> Iterator[None]:
    """Drop every TCP segment to and from port 2049 on lo (the connection
    stays "established"; requests and retransmissions vanish)."""
    _tc("qdisc", "add", "dev", "lo", "clsact")
    try:
        for direction in ("dport", "sport"):
            _tc(
                "filter", "add", "dev", "lo", "egress", "protocol", "ip", "prio", "1",
                "u32", "match", "ip", direction, str(NFS_PORT), "0xffff", "action", "drop",
            )  # fmt: skip
        yield
    finally:
        _tc("qdisc", "del", "dev", "lo", "clsact", check=False)


# ---------------------------------------------------------------- helpers


async def wait(aw: Awaitable[T]) -> T:
    """A coroutine for an awaitable (gRPC calls are not coroutines)."""
    return await aw


async def timed(aw: Awaitable[T]) -> tuple[float, T]:
    start = time.monotonic()
    result = await aw
    return time.monotonic() - start, result


async def until_healthy(c: Any, vol: Volume, path: Path, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        resp = await c.NodeGetVolumeStats(vol.stats(path), timeout=STATS_BOUND + 5)
        if not resp.volume_condition.abnormal:
            return time.monotonic() - start
        await asyncio.sleep(0.3)
    return -1.0


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
            await asyncio.sleep(0.2)
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
    healed = await until_healthy(c, vol, vol.staging, 30)
    restaged = False
    if healed < 0:  # not by itself: a re-stage repairs it
        restaged = True
        await c.NodeStageVolume(vol.stage(), timeout=MOUNT_TIMEOUT + 5)
        healed = await until_healthy(c, vol, vol.staging, 10)
    assert healed >= 0, "still abnormal after the server came back (and a re-stage)"
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
