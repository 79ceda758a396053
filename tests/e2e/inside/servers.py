"""The guest's Samba, kernel NFS server and Samba AD DC, as the inside tests
act on them: stopped and started again (the scripts in tests/e2e/uml that
also start them at boot), frozen (SIGSTOP on smbd), made unreachable (a
``tc`` filter), or their files restored from a copy.

Imported only inside the UML guest.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

from tests.e2e.inside.common import SMB_PASSWORD

UML = Path(__file__).resolve().parents[1] / "uml"
NFS_PORT = 2049
# By name: also type-checks with --platform win32 (where these do not exist).
SIGSTOP, SIGCONT = (signal.Signals[n] for n in ("SIGSTOP", "SIGCONT"))
# "addc": the Samba AD DC of the Kerberos guest (KDC and file server in one process).
Server = Literal["smb", "nfs", "addc"]
_SCRIPTS = {"smb": "samba", "nfs": "nfs", "addc": "addc"}


def run_script(action: Literal["start", "stop"], server: Server) -> None:
    """``start-samba.sh`` / ``stop-nfs.sh`` and the like, the scripts the guest
    boots with.  start-samba.sh (re)sets the user's password from SMB_PASSWORD,
    which the test process keeps out of its own environment."""
    env = {**os.environ, "SMB_PASSWORD": SMB_PASSWORD} if SMB_PASSWORD else None
    script = UML / f"{action}-{_SCRIPTS[server]}.sh"
    subprocess.run(["bash", str(script)], check=True, capture_output=True, env=env)


@contextmanager
def server_down(server: Server) -> Iterator[None]:
    """The server stopped for the block (contents kept), started again after it."""
    run_script("stop", server)
    try:
        yield
    finally:
        run_script("start", server)


def replace_with_copy(directory: Path) -> None:
    """The same files in a new directory (new inode, new file handles): an
    export re-created, a share restored from a copy."""
    copy = directory.with_name(directory.name + ".copy")
    subprocess.run(["cp", "-a", str(directory), str(copy)], check=True)  # owners kept
    shutil.rmtree(directory)
    copy.rename(directory)


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
    """Drop every TCP segment to and from port 2049 on lo: the connection
    stays "established", requests and retransmissions vanish, mount.nfs hangs
    (nfsd threads are kernel threads: they cannot be stopped instead)."""
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


@contextmanager
def nfs_exports(replace: str, by: str) -> Iterator[None]:
    """The export's options with ``replace`` changed to ``by`` for the block
    (``exportfs -ra``), the boot's exports again after it."""
    exports = Path("/etc/exports")
    original = exports.read_text()
    assert replace in original, f"{replace!r} not in the exports: {original!r}"
    exports.write_text(original.replace(replace, by))
    subprocess.run(["exportfs", "-ra"], check=True)
    try:
        yield
    finally:
        exports.write_text(original)
        subprocess.run(["exportfs", "-ra"], check=False)
