"""Fixtures of the fault suite: real servers and the driver as a subprocess."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.harness import driver_process
from tests.servers.ganesha import GaneshaServer
from tests.servers.plugin import SMB_WRITER

#: The Samba user of the load tests (the session's Samba, tests/servers/plugin.py).
SMB_USER = SMB_WRITER


@pytest.fixture
def nfs(ganesha_v4: GaneshaServer) -> GaneshaServer:
    """The session's NFSv4 server (tests/servers/plugin.py)."""
    return ganesha_v4


@dataclass
class Driver:
    proc: subprocess.Popen[str]
    endpoint: str
    log_path: Path

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def processes(self) -> list[psutil.Process]:
        """The driver and its children (the SMB worker process): counted as one."""
        return [self.ps, *self.ps.children(recursive=True)]

    def resources(self) -> dict[str, int]:
        procs = self.processes()
        return {
            "processes": len(procs),
            "fds": sum(p.num_fds() for p in procs),
            "threads": sum(p.num_threads() for p in procs),
            "rss": sum(p.memory_info().rss for p in procs),
        }

    def thread_names(self) -> list[str]:
        """Thread names of the driver and its children (for failure messages)."""
        names = []
        for p in self.processes():
            for task in Path(f"/proc/{p.pid}/task").iterdir():
                try:
                    names.append(f"{p.pid}:{(task / 'comm').read_text().strip()}")
                except OSError:
                    continue
        return sorted(names)

    def connections_to(self, port: int) -> int:
        return sum(
            1
            for p in self.processes()
            for c in p.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Driver]:
    """``csi-smb-nfs serve --mode controller`` with short backend timeouts."""
    with driver_process(
        tmp_path, "--mode", "controller", "--backend-timeout", "3", "-v", "2"
    ) as drv:
        yield Driver(drv.proc, drv.endpoint, drv.log_path)
