"""The narrow interface the controller uses to change a share.

A backend is bound to one share (SMB share or NFS export) and one identity.
Every ``path`` is relative to the share root, ``/``-separated, already
validated by ``driver.paths`` (no ``..``, no empty or absolute parts, no NUL or
backslash); backends still refuse anything else as a last line of defence.

All operations are idempotent because a timed-out call's outcome is unknown:
creating an existing directory and removing a missing one are not errors.
Failures are raised as ``driver.errors`` domain errors, never library
exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Capacity:
    total_bytes: int
    available_bytes: int


class ShareBackend(Protocol):
    async def mkdir(self, path: str, *, mode: int | None = None) -> bool:
        """Create ``path`` (parents too). True if created, False if it existed.

        ``mode`` (e.g. 0o2770) is applied to the leaf when given and the
        protocol supports it.  An existing non-directory is AlreadyExists.
        """
        ...

    async def rename(self, src: str, dst: str, *, replace: bool = False) -> None:
        """Rename ``src`` to ``dst``.  With ``replace`` an existing ``dst``
        tree is removed first.  Missing ``src`` is NotFound."""
        ...

    async def remove_tree(self, path: str) -> bool:
        """Remove ``path`` and everything below it, including read-only
        entries.  True if something was removed, False if it was missing."""
        ...

    async def exists(self, path: str) -> bool:
        """True when ``path`` exists (file or directory)."""
        ...

    async def capacity(self) -> Capacity:
        """Total and available bytes of the share."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads; the backend may be reused after."""
        ...
