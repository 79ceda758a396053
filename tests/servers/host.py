"""What every test server needs from the host: its programs (also under sbin,
which a non-root PATH lacks), a free loopback port, a TCP readiness check, and
a thread's way into another network namespace."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

SBIN = os.pathsep.join(("/usr/sbin", "/sbin", "/usr/bin", "/bin"))
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def find_program(program: str) -> str | None:
    """The path of ``program`` on PATH or in the system bin/sbin directories."""
    return shutil.which(program, path=os.environ.get("PATH", "") + os.pathsep + SBIN)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (IPv6 for ``::1``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


@contextlib.contextmanager
def enter_netns(ns_path: str) -> Iterator[None]:
    """Run the calling thread in the network namespace ``ns_path`` (e.g.
    ``/proc/<pid>/ns/net``) until the block ends.  Sockets created inside
    keep that namespace for their whole life."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def port_open(host: str, port: int, ns_path: str | None = None) -> bool:
    """TCP connect check, from inside ``ns_path`` if given (in a helper
    thread, so the caller's namespace is never touched)."""

    def probe() -> bool:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((host, port)) == 0

    if ns_path is None:
        return probe()
    result: list[bool] = []

    def in_ns() -> None:
        with enter_netns(ns_path):
            result.append(probe())

    t = threading.Thread(target=in_ns, name="netns-probe")
    t.start()
    t.join()
    return bool(result and result[0])


def unread_bytes(port: int, netns_path: str | None = None) -> int:
    """Bytes that arrived for the sockets on the local side ``port`` and that
    nobody has read yet: the requests waiting at a stopped server.  The table
    is read in the network namespace ``netns_path`` (``/proc/<pid>/ns/net``)
    if given, else in this process's."""
    proc = str(Path(netns_path).parent.parent) if netns_path else "/proc/self"
    total = 0
    for table in ("tcp", "tcp6"):
        for line in Path(proc, "net", table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port:
                total += int(fields[4].split(":")[1], 16)  # rx_queue
    return total
