"""Real gRPC servers for tests: in-process on a Unix socket, or a subprocess."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from driver.config import Config, parse_endpoint
from driver.csi import csi_pb2, csi_pb2_grpc
from driver.plugin import ServicePlugin
from driver.server import DriverServer
from tests.secret_scan import watch_log_file

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Client:
    channel: grpc.aio.Channel
    identity: csi_pb2_grpc.IdentityStub
    controller: csi_pb2_grpc.ControllerStub
    node: csi_pb2_grpc.NodeStub


def client_for(target: str) -> Client:
    channel = grpc.aio.insecure_channel(target)
    return Client(
        channel,
        csi_pb2_grpc.IdentityStub(channel),
        csi_pb2_grpc.ControllerStub(channel),
        csi_pb2_grpc.NodeStub(channel),
    )


@asynccontextmanager
async def running_driver(
    socket_path: Path,
    plugins: Sequence[ServicePlugin] | None = None,
    *,
    mode: str = "all",
    metrics: bool = False,
    grace: float = 5.0,
) -> AsyncIterator[tuple[DriverServer, Client]]:
    """An in-process driver on ``unix://socket_path`` and a client for it."""
    config = Config(
        endpoint=parse_endpoint(f"unix://{socket_path}"),
        mode=mode,  # type: ignore[arg-type]
        node_id="test-node",
        metrics_address=("127.0.0.1", 0) if metrics else None,
        grace_period=grace,
    )
    server = DriverServer(config, plugins)
    await server.start()
    client = client_for(config.endpoint.grpc_target)
    try:
        yield server, client
    finally:
        await client.channel.close()
        await server.stop(grace)


def running_controller(
    socket_path: Path, *, metrics: bool = False, **settings: Any
) -> AbstractAsyncContextManager[tuple[DriverServer, Client]]:
    """:func:`running_driver` with the controller service alone, built as
    ``serve --mode controller`` builds it from ``settings`` (Config fields,
    e.g. ``backend_timeout``)."""
    from controller.service import build  # the node's tests need no controller

    config = Config(endpoint=parse_endpoint("unix:///unused"), **settings)
    return running_driver(socket_path, [build(config)], mode="controller", metrics=metrics)


@dataclass
class DriverProcess:
    proc: subprocess.Popen[str]
    endpoint: str
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for_socket(
    path: Path, proc: subprocess.Popen[Any] | None = None, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                with grpc.insecure_channel(f"unix://{path}") as ch:
                    csi_pb2_grpc.IdentityStub(ch).Probe(csi_pb2.ProbeRequest(), timeout=1)
                return
            except grpc.RpcError:
                pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"driver exited early with {proc.returncode}")
        time.sleep(0.02)
    raise TimeoutError(f"driver did not serve on {path}")


@contextmanager
def driver_process(
    tmp: Path, *extra: str, env: dict[str, str] | None = None
) -> Iterator[DriverProcess]:
    """``csi-smb-nfs serve`` as a real subprocess; logs go to a file."""
    sock = tmp / "csi.sock"
    log_path = watch_log_file(tmp / "driver.log")
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "driver",
                "serve",
                "--endpoint",
                f"unix://{sock}",
                "--node-id",
                "n1",
                *extra,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
    try:
        wait_for_socket(sock, proc)
        yield DriverProcess(proc, f"unix://{sock}", log_path)
    finally:
        stop_process(proc)


def run_ctl(endpoint: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driver", "ctl", "--endpoint", endpoint, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll ``predicate`` (a function, sync or async) until it is true; the
    deadline is generous because it only matters when the test fails."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout:g} s: {predicate!r}")
        await asyncio.sleep(0.01)


async def expect_code(call: Any, *codes: grpc.StatusCode) -> str:
    """Await an RPC that must fail with one of ``codes``; its details."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() in codes, err.value.details()
    return err.value.details() or ""


async def scrape_metrics(port: int | None) -> str:
    """The driver's Prometheus page, as a scraper reads it."""
    url = f"http://127.0.0.1:{port}/metrics"
    return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM (a graceful drain), SIGKILL if it takes longer than ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
