"""The driver as real processes inside the guest (``python -m driver serve
--mode node`` on a Unix socket, logs in the shared work dir): start, wait
until it answers, SIGKILL, stop them all.

Imported only inside the UML guest.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from driver.csi import csi_pb2
from tests.harness import ROOT, Client, client_for, stop_process
from tests.secret_scan import watch_log_file

# By name: also type-checks with --platform win32 (where these do not exist).
SIGKILL = signal.Signals["SIGKILL"]


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

    def __init__(self, tmp: Path, *, logs: Path, mount_timeout: float) -> None:
        self.sock = tmp / "csi" / "csi.sock"
        self.kubelet = tmp / "kubelet"
        self.logs = logs  # the shared work dir's: the host scans them too
        self.mount_timeout = mount_timeout
        self.all: list[DriverProc] = []

    def start(self, name: str) -> DriverProc:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = watch_log_file(self.logs / f"{name}.log")
        argv = [
            sys.executable, "-m", "driver", "serve", "--mode", "node",
            "--endpoint", f"unix://{self.sock}", "--node-id", "e2e-faults",
            "--mount-timeout", f"{self.mount_timeout:g}", "--log-format", "json", "-v", "4",
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
            stop_process(d.proc, timeout=15)
