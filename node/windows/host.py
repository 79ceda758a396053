"""The filesystem calls of the Windows node, behind a narrow Protocol.

:class:`RealWindowsHost` is the real thing (it also runs on Linux, with
``statvfs`` in place of ``GetDiskFreeSpaceExW``, so it can be exercised
there); tests use a stateful fake.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from driver.errors import DriverError
from driver.redact import scrub
from node.powershell import map_windows_code

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DiskSpace:
    total: int
    available: int  # to the caller (quota-aware)
    free: int  # on the whole volume


class WindowsHost(Protocol):
    """The filesystem calls of the Windows platform.  Methods raise OSError.

    ``is_dir`` and ``disk_usage`` follow links and may reach the file server:
    the platform bounds them in time.  The others work on the local path
    itself and never follow the last link.
    """

    async def lexists(self, path: str) -> bool: ...

    async def is_link(self, path: str) -> bool: ...

    async def read_link(self, path: str) -> str: ...

    async def is_dir(self, path: str) -> bool: ...

    async def check_dir(self, path: str) -> None:
        """Succeed when ``path`` (through links) is a directory; raise the
        OSError that says why not (missing, access denied, network down)."""
        ...

    async def list_dir(self, path: str) -> list[str]: ...

    async def make_dirs(self, path: str) -> None: ...

    async def symlink_dir(self, link: str, target: str) -> None: ...

    async def remove_link(self, path: str) -> None: ...

    async def remove_empty_dir(self, path: str) -> None: ...

    async def disk_usage(self, path: str) -> DiskSpace: ...


if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _GetDiskFreeSpaceExW = _kernel32.GetDiskFreeSpaceExW
    _GetDiskFreeSpaceExW.argtypes = [
        wintypes.LPCWSTR,
        ctypes.POINTER(ctypes.c_ulonglong),
        ctypes.POINTER(ctypes.c_ulonglong),
        ctypes.POINTER(ctypes.c_ulonglong),
    ]
    _GetDiskFreeSpaceExW.restype = wintypes.BOOL

    def disk_space(path: str) -> DiskSpace:
        """GetDiskFreeSpaceExW of a directory (through links, UNC included)."""
        available, total, free = ctypes.c_ulonglong(), ctypes.c_ulonglong(), ctypes.c_ulonglong()
        directory = path if path.endswith("\\") else path + "\\"
        ok = _GetDiskFreeSpaceExW(
            directory, ctypes.byref(available), ctypes.byref(total), ctypes.byref(free)
        )
        if not ok:
            raise ctypes.WinError(ctypes.get_last_error())
        return DiskSpace(total=total.value, available=available.value, free=free.value)

    def _remove_link(path: str) -> None:
        # RemoveDirectoryW removes a directory symlink itself, never its target.
        try:
            os.rmdir(path)
        except NotADirectoryError:
            os.unlink(path)

else:

    def disk_space(path: str) -> DiskSpace:
        """statvfs stand-in, so the real host can be exercised on Linux."""
        st = os.statvfs(path)
        return DiskSpace(
            total=st.f_blocks * st.f_frsize,
            available=st.f_bavail * st.f_frsize,
            free=st.f_bfree * st.f_frsize,
        )

    def _remove_link(path: str) -> None:
        os.unlink(path)


class RealWindowsHost:
    """:class:`WindowsHost` on the real filesystem.

    Local calls run in the default executor; calls that may reach a file
    server (``is_dir``, ``disk_usage``) run in a small pool of their own, so
    threads stuck on a dead server cannot starve the local ones.
    """

    def __init__(self, network_workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=network_workers, thread_name_prefix="csi-win-net"
        )

    async def _network(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def lexists(self, path: str) -> bool:
        return await asyncio.to_thread(os.path.lexists, path)

    async def is_link(self, path: str) -> bool:
        return await asyncio.to_thread(os.path.islink, path)

    async def read_link(self, path: str) -> str:
        return await asyncio.to_thread(os.readlink, path)

    async def is_dir(self, path: str) -> bool:
        return await self._network(lambda: os.path.isdir(path))

    async def check_dir(self, path: str) -> None:
        def check() -> None:
            if not stat.S_ISDIR(os.stat(path).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)

        await self._network(check)

    async def list_dir(self, path: str) -> list[str]:
        return await asyncio.to_thread(os.listdir, path)

    async def make_dirs(self, path: str) -> None:
        await asyncio.to_thread(os.makedirs, path, exist_ok=True)

    async def symlink_dir(self, link: str, target: str) -> None:
        await asyncio.to_thread(os.symlink, target, link, target_is_directory=True)

    async def remove_link(self, path: str) -> None:
        def remove() -> None:
            if not os.path.islink(path):  # never delete anything that is not a link
                raise OSError(errno.EINVAL, "not a symbolic link", path)
            _remove_link(path)

        await asyncio.to_thread(remove)

    async def remove_empty_dir(self, path: str) -> None:
        def remove() -> None:
            if os.path.islink(path):
                raise OSError(errno.EINVAL, "is a symbolic link, not a directory", path)
            os.rmdir(path)  # fails on a non-empty directory: never recursive

        await asyncio.to_thread(remove)

    async def disk_usage(self, path: str) -> DiskSpace:
        return await self._network(lambda: disk_space(path))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def os_text(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return f"{text}: {exc.filename}" if exc.filename else text


def os_error(exc: OSError, *, what: str, secrets: Iterable[str] = ()) -> DriverError:
    """A domain error for a failed filesystem call (Win32 code where known)."""
    message = scrub(os_text(exc), secrets)
    code = getattr(exc, "winerror", None)
    if isinstance(code, int):
        return map_windows_code(code, message, what=what)
    by_errno = {errno.ENOENT: 2, errno.EACCES: 5, errno.EPERM: 5}
    return map_windows_code(by_errno.get(exc.errno or 0), message, what=what, unknown="OSError")
