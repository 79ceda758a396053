"""What the Linux node reads from and changes on the host besides commands:
the mount table, ``statvfs(2)``, file ownership.

Linux-only system calls sit behind one platform check so that the package
also type-checks for Windows (``mypy --platform win32``).
"""

from __future__ import annotations

import os
import socket
import stat
import sys
from dataclasses import dataclass
from typing import Protocol

from driver.errors import Unimplemented
from node.linux import mountinfo
from node.linux.mountinfo import MountEntry


@dataclass(frozen=True, slots=True)
class FsStats:
    """The parts of statvfs(2) the node reports."""

    fragment_size: int
    blocks: int
    blocks_free: int
    blocks_available: int
    files: int
    files_free: int


class HostView(Protocol):
    """What the platform reads from the host besides running commands."""

    def mounts(self) -> list[MountEntry]:
        """The mount table (fast, never blocks on a server)."""
        ...

    def statvfs(self, path: str) -> FsStats:
        """statvfs(2); may block on a dead server: called in a probe thread."""
        ...

    def look(self, path: str) -> None:
        """stat(2) and read the first directory entries of a mount root;
        OSError when the mount is broken.  statfs alone is not enough: a cifs
        share restored from a copy still answers statfs while every lookup of
        its root fails with ESTALE (and NFS may answer stat from its cache).
        May block on a dead server: called in a probe thread."""
        ...

    def connect(self, server: str, port: int, timeout: float) -> None:
        """Open and close a TCP connection (OSError when the server does not
        accept one within ``timeout``): does the file server answer again?"""
        ...


# Linux-only system calls, behind one platform check so that this module
# also type-checks for Windows (``mypy --platform win32``).
if sys.platform == "win32":  # type-checked only: this platform never runs there

    def _statvfs(path: str) -> FsStats:
        raise Unimplemented("statvfs is Linux only")

    def owned_by_us(st: os.stat_result) -> bool:
        raise Unimplemented("file ownership is Linux only")

    def chgrp(path: str, gid: int) -> None:
        raise Unimplemented("chown is Linux only")

    O_NOFOLLOW_CLOEXEC = 0

else:

    def _statvfs(path: str) -> FsStats:
        st = os.statvfs(path)
        return FsStats(
            fragment_size=st.f_frsize or st.f_bsize,
            blocks=st.f_blocks,
            blocks_free=st.f_bfree,
            blocks_available=st.f_bavail,
            files=st.f_files,
            files_free=st.f_ffree,
        )

    def owned_by_us(st: os.stat_result) -> bool:
        return st.st_uid == os.geteuid()

    def chgrp(path: str, gid: int) -> None:
        os.chown(path, -1, gid)

    O_NOFOLLOW_CLOEXEC = os.O_NOFOLLOW | os.O_CLOEXEC


class ProcHost:
    """The real host: ``/proc/self/mountinfo``, ``statvfs(2)``, lookups, TCP."""

    def __init__(self, path: str = mountinfo.MOUNTINFO) -> None:
        self._path = path

    def mounts(self) -> list[MountEntry]:
        return mountinfo.read(self._path)

    def statvfs(self, path: str) -> FsStats:
        return _statvfs(path)

    def look(self, path: str) -> None:
        os.stat(path)
        with os.scandir(path) as entries:
            next(entries, None)  # one getdents: the server must answer for the root

    def connect(self, server: str, port: int, timeout: float) -> None:
        socket.create_connection((server, port), timeout=timeout).close()


def share_with_group(path: str, gid: int) -> None:
    """Give the volume root to ``gid``: group rwx and setgid, so new files
    and directories inherit the group (like kubelet's fsGroup handling, but
    not recursive: existing files keep their owners)."""
    st = os.stat(path)
    if st.st_gid != gid:
        chgrp(path, gid)
        st = os.stat(path)  # chown may clear the setgid bit
    wanted = stat.S_IMODE(st.st_mode) | stat.S_ISGID | stat.S_IRWXG
    if stat.S_IMODE(st.st_mode) != wanted:
        os.chmod(path, wanted)
