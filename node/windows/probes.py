"""Calls that reach the file server through a volume's link, bounded in time.

A call stuck on a dead server cannot be stopped, only abandoned: each is
bounded by a timeout from :class:`~node.windows.settings.WindowsSettings`,
and space queries run one per path at a time, so a volume on a dead share
holds at most one stuck thread however often kubelet asks for its stats.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from driver.aio import SingleFlight
from driver.errors import DeadlineExceeded, NotFound
from node.windows.host import DiskSpace, WindowsHost, os_text
from node.windows.paths import path_key
from node.windows.settings import WindowsSettings

T = TypeVar("T")

_MISSING = frozenset({2, 3, 267})  # ERROR_FILE_NOT_FOUND, _PATH_NOT_FOUND, _DIRECTORY


class VolumeProbes:
    """Free space and directory checks of volumes on the share."""

    def __init__(self, host: WindowsHost, settings: WindowsSettings) -> None:
        self.host = host
        self.settings = settings
        self._spaces: SingleFlight[str, DiskSpace] = SingleFlight()  # path key → query

    @property
    def in_flight(self) -> int:
        """Space queries that have not returned (stuck on a dead server, say)."""
        return len(self._spaces)

    async def space(self, path: str) -> tuple[DiskSpace | None, str | None]:
        """Free space through the link: (space, None) or (None, the problem).

        A query still pending for ``path`` is not joined: its volume is
        reported as not answering (a probe stuck on a dead server is not
        joined by more)."""
        key = path_key(path)
        if self._spaces.busy(key):
            return None, "the previous space query of this volume has not returned yet"
        limit = self.settings.stats_timeout
        try:
            space = await self._spaces.run(key, lambda: self.host.disk_usage(path), limit)
        except TimeoutError:
            return None, f"the share did not answer within {limit:g}s"
        except OSError as exc:
            return None, f"cannot reach the volume: {os_text(exc)}"
        return space, None

    async def check_volume_dir(self, target: str) -> None:
        """Probe the volume's own directory (never the share root: the account
        may see only its folders).  A failure fails this stage only; the
        mapping other volumes use stays."""
        try:
            await bounded(
                self.host.check_dir(target), self.settings.fs_timeout, what=f"checking {target}"
            )
        except OSError as exc:
            # Python maps network errors (53, 67) to FileNotFoundError as well:
            # only the Win32 "not found" codes mean the directory is missing.
            code = getattr(exc, "winerror", None)
            missing = code in _MISSING if code is not None else isinstance(exc, FileNotFoundError)
            if missing or isinstance(exc, NotADirectoryError):
                raise NotFound(
                    f"{target} is not a directory on the share (was the volume deleted?)"
                ) from None
            raise

    def close(self) -> None:
        self._spaces.cancel_all()


async def bounded(work: Awaitable[T], limit: float, *, what: str) -> T:
    """``work``'s outcome, DeadlineExceeded after ``limit`` seconds."""
    try:
        return await asyncio.wait_for(work, limit)
    except TimeoutError:
        raise DeadlineExceeded(f"{what}: no answer within {limit:g}s") from None
