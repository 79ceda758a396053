"""Controller RPCs through a real gRPC socket against a real Samba server."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psutil
import pytest

from controller.service import ControllerPlugin
from driver import log as driver_log
from driver.csi import csi_pb2
from driver.server import DriverServer
from tests.csi_requests import cap
from tests.harness import (
    Client,
    expect_code,
    running_controller,
    scrape_metrics,
    wait_until,
)
from tests.servers.plugin import SMB_READER, SMB_WRITER, SMB_WRITER2
from tests.servers.samba import SambaServer

pytestmark = pytest.mark.integration

CAP = cap()


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[tuple[DriverServer, Client]]:
    async with running_controller(tmp_path / "csi.sock", backend_timeout=10, metrics=True) as pair:
        yield pair


def secrets_for(samba: SambaServer, user: str = SMB_WRITER) -> dict[str, str]:
    return {"username": user, "password": samba.password(user)}


def create(
    samba: SambaServer, name: str, *, user: str = SMB_WRITER, share: str = "csi", **params: str
) -> csi_pb2.CreateVolumeRequest:
    return csi_pb2.CreateVolumeRequest(
        name=name,
        volume_capabilities=[CAP],
        parameters={"source": f"//{samba.host}:{samba.port}/{share}/k8s", **params},
        secrets=secrets_for(samba, user),
    )


async def test_create_delete_roundtrip(
    driver: tuple[DriverServer, Client], samba: SambaServer
) -> None:
    _, c = driver
    root = samba.share_path("csi")
    resp = await c.controller.CreateVolume(create(samba, "pvc-rt"))
    vol = resp.volume
    assert vol.volume_id == f"v1#smb#127.0.0.1:{samba.port}#csi#k8s/pvc-rt#delete"
    assert (root / "k8s" / "pvc-rt").is_dir()
    assert dict(vol.volume_context)["subDir"] == "k8s/pvc-rt"
    again = await c.controller.CreateVolume(create(samba, "pvc-rt"))
    assert again.volume == vol
    await expect_code(
        c.controller.CreateVolume(create(samba, "pvc-rt", onDelete="retain")),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    (root / "k8s" / "pvc-rt" / "data.txt").write_text("hello")
    await c.controller.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=vol.volume_id, secrets=secrets_for(samba))
    )
    assert not (root / "k8s" / "pvc-rt").exists()
    assert (root / "k8s").is_dir()
    await c.controller.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=vol.volume_id, secrets=secrets_for(samba))
    )


async def test_rpc_log_line_reports_the_outcome(
    driver: tuple[DriverServer, Client], samba: SambaServer
) -> None:
    """One line per RPC carries the request and what came of it (no second line)."""
    _, c = driver
    stream = io.StringIO()
    driver_log.configure("json", 2, stream=stream)
    try:
        first = await c.controller.CreateVolume(create(samba, "pvc-log"))
        await c.controller.CreateVolume(create(samba, "pvc-log"))
    finally:
        driver_log.configure("json", 2)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    creates = [line for line in lines if line.get("method") == "CreateVolume"]
    assert [line["event"] for line in creates] == ["rpc", "rpc"]
    assert [line["created"] for line in creates] == [True, False]
    assert {line["volume_id"] for line in creates} == {first.volume.volume_id}
    assert all(line["request"]["secrets"]["password"] == "***" for line in creates)


async def test_delete_read_only_tree(
    driver: tuple[DriverServer, Client], samba: SambaServer
) -> None:
    _, c = driver
    root = samba.share_path("csi")
    vid = (await c.controller.CreateVolume(create(samba, "pvc-ro"))).volume.volume_id
    vol = root / "k8s" / "pvc-ro"
    (vol / "sub" / "deeper").mkdir(parents=True)
    # As pods would leave it: owned by the share's user, read-only bits set.
    import pwd

    owner = pwd.getpwnam(SMB_WRITER)
    for f in (vol / "a.txt", vol / "sub" / "b.txt", vol / "sub" / "deeper" / "c.txt"):
        f.write_text("x")
    for p in [vol, *vol.rglob("*")]:
        os.chown(p, owner.pw_uid, owner.pw_gid)
        p.chmod(0o555 if p.is_dir() else 0o444)
    vol.chmod(0o755)
    await c.controller.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=vid, secrets=secrets_for(samba))
    )
    assert not vol.exists()


async def test_archive_replaces_older_archive(
    driver: tuple[DriverServer, Client], samba: SambaServer
) -> None:
    _, c = driver
    root = samba.share_path("csi") / "k8s"
    for round_ in (1, 2):
        vid = (
            await c.controller.CreateVolume(create(samba, "pvc-ar", onDelete="archive"))
        ).volume.volume_id
        (root / "pvc-ar" / f"round{round_}.txt").write_text(str(round_))
        await c.controller.DeleteVolume(
            csi_pb2.DeleteVolumeRequest(volume_id=vid, secrets=secrets_for(samba))
        )
        assert not (root / "pvc-ar").exists()
        assert sorted(p.name for p in (root / "archived-pvc-ar").iterdir()) == [
            f"round{round_}.txt"
        ]


async def test_retain_keeps_directory(
    driver: tuple[DriverServer, Client], samba: SambaServer
) -> None:
    _, c = driver
    vid = (
        await c.controller.CreateVolume(create(samba, "pvc-keep", onDelete="retain"))
    ).volume.volume_id
    await c.controller.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=vid, secrets=secrets_for(samba))
    )
    assert (samba.share_path("csi") / "k8s" / "pvc-keep").is_dir()


async def test_templates_and_traversal(
    driver: tuple[DriverServer, Client], samba: SambaServer
) -> None:
    _, c = driver
    root = samba.share_path("csi")
    req = create(
        samba,
        "pvc-t",
        subDir="${pvc.metadata.namespace}/${pvc.metadata.name}",
        **{"csi.storage.k8s.io/pvc/namespace": "team", "csi.storage.k8s.io/pvc/name": "db"},
    )
    await c.controller.CreateVolume(req)
    assert (root / "k8s" / "team" / "db").is_dir()
    before = sorted(str(p) for p in samba.root_dir.rglob("*"))
    for bad in ("../escape", "a/../../escape", "..\\escape", "x\x00y", "CON", "a//b"):
        await expect_code(
            c.controller.CreateVolume(create(samba, "pvc-bad", subDir=bad)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    evil = create(
        samba, "pvc-evil", subDir="${pvc.metadata.name}", **{"csi.storage.k8s.io/pvc/name": ".."}
    )
    await expect_code(c.controller.CreateVolume(evil), grpc.StatusCode.INVALID_ARGUMENT)
    assert sorted(str(p) for p in samba.root_dir.rglob("*")) == before


async def test_bad_requests(driver: tuple[DriverServer, Client], samba: SambaServer) -> None:
    _, c = driver
    details = await expect_code(
        c.controller.CreateVolume(create(samba, "v", colour="red")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "colour" in details
    no_secret = create(samba, "v")
    no_secret.secrets.clear()
    details = await expect_code(
        c.controller.CreateVolume(no_secret), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "username" in details
    block = create(samba, "v")
    block.volume_capabilities[0].block.SetInParent()
    await expect_code(c.controller.CreateVolume(block), grpc.StatusCode.INVALID_ARGUMENT)
    bad_range = create(samba, "v")
    bad_range.capacity_range.required_bytes = 10
    bad_range.capacity_range.limit_bytes = 1
    await expect_code(c.controller.CreateVolume(bad_range), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_code(
        c.controller.CreateVolume(create(samba, "v", share="nosuchshare")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


async def test_wrong_password_and_read_only_user(
    driver: tuple[DriverServer, Client], samba: SambaServer
) -> None:
    _, c = driver
    good = await c.controller.CreateVolume(create(samba, "pvc-pw1"))
    assert good.volume.volume_id
    wrong = create(samba, "pvc-pw2")
    wrong.secrets["password"] = "definitely-Wrong-pw"
    details = await expect_code(c.controller.CreateVolume(wrong), grpc.StatusCode.UNAUTHENTICATED)
    assert "definitely-Wrong-pw" not in details
    assert not (samba.share_path("csi") / "k8s" / "pvc-pw2").exists()
    await expect_code(
        c.controller.CreateVolume(create(samba, "pvc-pw3", user=SMB_READER)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # The good identity still works after the failures.
    await c.controller.CreateVolume(create(samba, "pvc-pw4"))


async def test_validate_expand_capacity(
    driver: tuple[DriverServer, Client], samba: SambaServer
) -> None:
    _, c = driver
    vid = (await c.controller.CreateVolume(create(samba, "pvc-v"))).volume.volume_id
    ok = await c.controller.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=vid, volume_capabilities=[CAP], secrets=secrets_for(samba)
        )
    )
    assert ok.HasField("confirmed")
    missing = vid.replace("pvc-v", "pvc-missing")
    await expect_code(
        c.controller.ValidateVolumeCapabilities(
            csi_pb2.ValidateVolumeCapabilitiesRequest(
                volume_id=missing, volume_capabilities=[CAP], secrets=secrets_for(samba)
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    exp = await c.controller.ControllerExpandVolume(
        csi_pb2.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=csi_pb2.CapacityRange(required_bytes=1 << 30)
        )
    )
    assert exp.capacity_bytes == 1 << 30
    cap = await c.controller.GetCapacity(
        csi_pb2.GetCapacityRequest(parameters={"source": f"//{samba.host}:{samba.port}/csi"})
    )
    st = os.statvfs(samba.share_path("csi"))
    expected = st.f_bavail * st.f_frsize
    assert abs(cap.available_capacity - expected) < max(expected // 20, 64 << 20)


async def test_server_down_then_restarted(
    driver: tuple[DriverServer, Client], samba: SambaServer
) -> None:
    _, c = driver
    await c.controller.CreateVolume(create(samba, "pvc-up1"))
    samba.stop()
    try:
        await expect_code(
            c.controller.CreateVolume(create(samba, "pvc-down")), grpc.StatusCode.UNAVAILABLE
        )
    finally:
        samba.start()
    resp = await c.controller.CreateVolume(create(samba, "pvc-down"))
    assert resp.volume.volume_id
    assert (samba.share_path("csi") / "k8s" / "pvc-down").is_dir()


def _smb_workers() -> list[psutil.Process]:
    """The SMB worker processes started by this (test) process's driver."""
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "controller.smb.worker" in " ".join(p.cmdline())
    ]


def _smb_connections(port: int) -> int:
    """Established connections to ``port`` from this process and its SMB worker."""
    return sum(
        1
        for proc in (psutil.Process(), *_smb_workers())
        for conn in proc.net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    )


async def test_smb_steps_run_in_one_worker_process(
    driver: tuple[DriverServer, Client], samba: SambaServer
) -> None:
    _, c = driver
    await c.controller.CreateVolume(create(samba, "pvc-w1"))
    await c.controller.CreateVolume(create(samba, "pvc-w2", user=SMB_WRITER2))
    (worker,) = _smb_workers()  # one for every identity
    here = [
        conn
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == samba.port
    ]
    assert here == []  # the gRPC process holds no SMB connection
    assert _smb_connections(samba.port) == 2
    # The password reached the worker through its socket only.
    for user in (SMB_WRITER, SMB_WRITER2):
        password = samba.password(user)
        assert password not in " ".join(worker.cmdline())
        assert all(password not in value for value in worker.environ().values())


async def test_smb_worker_killed_fails_steps_in_flight_then_is_replaced(
    driver: tuple[DriverServer, Client], samba: SambaServer
) -> None:
    server, c = driver
    await c.controller.CreateVolume(create(samba, "pvc-k1"))
    (worker,) = _smb_workers()
    # The create started the trash's background listing: let it end, so that the
    # only request that can reach the server from now on is the one under test.
    (plugin,) = server.plugins
    assert isinstance(plugin, ControllerPlugin)
    await plugin.service.trash.drain()
    assert samba.unread_bytes() == 0
    samba.pause()  # the next step hangs in the worker
    try:
        in_flight = asyncio.ensure_future(c.controller.CreateVolume(create(samba, "pvc-k2")))
        # The request has left the worker: it waits, unread, at the stopped server.
        await wait_until(lambda: samba.unread_bytes() > 0)
        assert not in_flight.done()
        worker.kill()
        # UNAVAILABLE at once, not DEADLINE_EXCEEDED after the 10 s backend timeout.
        details = await asyncio.wait_for(
            expect_code(in_flight, grpc.StatusCode.UNAVAILABLE), timeout=5
        )
        assert "worker process exited" in details
    finally:
        samba.resume()
    await c.controller.CreateVolume(create(samba, "pvc-k3"))
    (replacement,) = _smb_workers()
    assert replacement.pid != worker.pid
    assert (samba.share_path("csi") / "k8s" / "pvc-k3").is_dir()


async def test_200_concurrent_creates_two_identities(
    driver: tuple[DriverServer, Client], samba: SambaServer
) -> None:
    _, c = driver
    names = [f"pvc-c{i:03d}" for i in range(200)]
    users = [SMB_WRITER if i % 2 == 0 else SMB_WRITER2 for i in range(200)]
    results = await asyncio.gather(
        *(
            c.controller.CreateVolume(create(samba, n, user=u))
            for n, u in zip(names, users, strict=True)
        ),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    root = samba.share_path("csi") / "k8s"
    assert all((root / n).is_dir() for n in names)
    # One connection per identity, never shared between the two.
    assert _smb_connections(samba.port) <= 2
    sessions = [s["username"] for s in samba.sessions()]
    assert sorted(set(sessions)) == sorted({SMB_WRITER, SMB_WRITER2})
    assert sessions.count(SMB_WRITER) == 1
    assert sessions.count(SMB_WRITER2) == 1
    await asyncio.gather(
        *(
            c.controller.DeleteVolume(
                csi_pb2.DeleteVolumeRequest(
                    volume_id=r.volume.volume_id, secrets=secrets_for(samba, u)
                )
            )
            for r, u in zip(results, users, strict=True)
        )
    )
    assert not any((root / n).exists() for n in names)


async def test_no_secret_in_metrics(
    driver: tuple[DriverServer, Client], samba: SambaServer
) -> None:
    srv, c = driver
    await c.controller.CreateVolume(create(samba, "pvc-m"))
    wrong = create(samba, "pvc-m2")
    wrong.secrets["password"] = "Metrics-Leak-Check-pw"
    await expect_code(c.controller.CreateVolume(wrong), grpc.StatusCode.UNAUTHENTICATED)
    body = await scrape_metrics(srv.metrics_port)
    assert 'method="CreateVolume",protocol="smb"' in body
    assert "Metrics-Leak-Check-pw" not in body
    assert samba.password(SMB_WRITER) not in body


async def test_a_slow_worker_start_is_not_the_first_steps_time(
    tmp_path: Path, samba: SambaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cold interpreter on a loaded node can take seconds to import the SMB
    # stack.  That must not turn the first step into DEADLINE_EXCEEDED ("the
    # server may be hung"): the step's bound starts when the worker serves.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import time\ntime.sleep(4)\n")
    monkeypatch.setenv("PYTHONPATH", str(hook))  # only the worker starts after this
    async with running_controller(tmp_path / "csi.sock", backend_timeout=2) as (_, c):
        await c.controller.CreateVolume(create(samba, "pvc-slow-start"))
    assert (samba.share_path("csi") / "k8s" / "pvc-slow-start").is_dir()
