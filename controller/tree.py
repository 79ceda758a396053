"""Walking, guarding, copying and removing directory trees on a share.

Used by snapshots (walk a volume into an archive), restores (admit archive
members one by one) and clones (copy a volume into another directory), and
by the SMB and NFS backends, which remove and replace trees with
:func:`remove_tree` and :func:`replace` over their own small primitives
(:class:`TreeOps`).

:class:`TreeGuard` is the one place that decides what may be created under
a new volume.  It refuses, before anything is written at that path:

* names that are absolute, empty, ``.``/``..`` parts, NUL or backslash;
* anything below a symlink (a write through it would land elsewhere);
* the same path twice with another type (a file replacing a symlink would
  follow it);
* a symlink whose target is absolute, or that leaves the tree when resolved
  the way the kernel would, following the tree's other symlinks (checked
  for all of them once every link is known: ``a -> .`` then ``b -> a/..``
  is caught although each looks harmless alone).

The walker never follows a symlink.  Where the server resolves symlinks
itself (Samba), a directory that shows up inside itself (same file id as
an ancestor) is a loop and is refused instead of being walked forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, Protocol

from controller.share import FileInfo, FileKind, FileShareBackend
from driver import paths
from driver.errors import DriverError, FailedPrecondition, NotFound, first_error
from driver.log import get_logger
from driver.retry import RetryPolicy

log = get_logger(__name__)

#: Files copied at once by a clone (each one is a few RPCs in flight).
COPY_CONCURRENCY: Final = 16
#: Symlinks followed while resolving one target (Linux: 40).
MAX_LINK_DEPTH: Final = 40
#: A directory that is still not empty after being emptied (something keeps
#: writing into it) is emptied again, up to this many times in all.
REFILLED: Final = RetryPolicy(tries=3)


@dataclass(frozen=True, slots=True)
class Node:
    """One entry of a walked tree: ``rel`` is relative to the root ("" = the root)."""

    rel: str
    info: FileInfo
    target: str | None = None  # a symlink's target


@dataclass(slots=True)
class TreeStats:
    files: int = 0
    dirs: int = 0
    links: int = 0
    bytes: int = 0
    skipped: int = 0

    def count(self, node: Node) -> None:
        kind = node.info.kind
        if kind == "file":
            self.files += 1
            self.bytes += node.info.size
        elif kind == "dir":
            self.dirs += 1
        elif kind == "symlink":
            self.links += 1


class TreeGuard:
    """Keeps the shape of a tree being built and refuses escapes.

    ``error`` is the domain error raised for a refusal: InvalidArgument for
    an archive someone handed us, FailedPrecondition for a volume that
    holds something we will not copy.
    """

    def __init__(self, error: type[DriverError], what: str) -> None:
        self._error = error
        self._what = what
        self._kinds: dict[str, FileKind] = {"": "dir"}
        self._links: dict[str, str] = {}

    def refuse(self, message: str) -> DriverError:
        return self._error(f"{self._what}: {message}")

    def member_path(self, name: str) -> str:
        """A tar member name as a clean relative path ("" for the root)."""
        text = name
        while text.startswith("./"):
            text = text[2:]
        text = text.rstrip("/") if text not in ("/", "") else text
        if text in ("", "."):
            return ""
        paths.share_parts(text, what=repr(name), error=self.refuse)
        return text

    def check_name(self, parent: str, name: str) -> str:
        """A listed entry's path; refuses names no path can carry."""
        what = f"entry {name!r} in {parent or '.'!r}"
        if len(paths.share_parts(name or ".", what=what, error=self.refuse)) != 1:
            raise self.refuse(f"{what} has a name we cannot copy")
        return paths.join(parent, name)

    def admit(self, rel: str, kind: FileKind) -> list[str]:
        """Record that ``rel`` is created as ``kind``.  Returns the parent
        directories not seen yet (the caller creates them, deepest last)."""
        if not rel:
            if kind != "dir":
                raise self.refuse("the root of the tree is not a directory")
            return []
        parts = rel.split("/")
        missing: list[str] = []
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            known = self._kinds.get(prefix)
            if known is None:
                missing.append(prefix)
            elif known != "dir":
                raise self.refuse(f"{rel!r} lies below {prefix!r}, which is a {known}")
        old = self._kinds.get(rel)
        if old is not None and not (old == kind and kind in ("dir", "file")):
            raise self.refuse(f"{rel!r} appears twice (as {old} and {kind})")
        for prefix in missing:
            self._kinds[prefix] = "dir"
        self._kinds[rel] = kind
        return missing

    def kind(self, rel: str) -> FileKind | None:
        return self._kinds.get(rel)

    def link(self, rel: str, target: str) -> None:
        """Record symlink ``rel -> target``; refuses a target that is
        absolute or climbs out of the tree on its own."""
        if not target or "\x00" in target:
            raise self.refuse(f"symlink {rel!r} has an empty target")
        if target.startswith("/"):
            raise self.refuse(f"symlink {rel!r} points at an absolute path ({target!r})")
        if "\\" in target:
            raise self.refuse(f"symlink {rel!r} has a backslash in its target")
        self._resolve(rel.split("/")[:-1], target, rel, depth=0, follow=False)
        self._links[rel] = target

    def check_links(self) -> None:
        """Resolve every symlink through the others; refuse any that leaves."""
        for rel, target in self._links.items():
            self._resolve(rel.split("/")[:-1], target, rel, depth=0, follow=True)

    def _resolve(
        self, start: list[str], target: str, rel: str, *, depth: int, follow: bool
    ) -> list[str]:
        stack = list(start)
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    raise self.refuse(f"symlink {rel!r} -> {target!r} leaves the tree")
                stack.pop()
                continue
            stack.append(part)
            inner = self._links.get("/".join(stack)) if follow else None
            if inner is not None:
                if depth >= MAX_LINK_DEPTH:
                    raise self.refuse(f"symlink {rel!r}: too many levels of symlinks")
                stack = self._resolve(stack[:-1], inner, rel, depth=depth + 1, follow=True)
        return stack


async def walk(backend: FileShareBackend, root: str, guard: TreeGuard) -> AsyncIterator[Node]:
    """Every entry under directory ``root``, parents before children, names
    sorted.  Symlinks are read, recorded in ``guard`` and never followed;
    special files (FIFOs, sockets, devices) are skipped with a warning."""
    info = await backend.stat(root)
    if info is None:
        raise NotFound(f"directory {root!r} does not exist on the share")
    if info.kind != "dir":
        raise FailedPrecondition(f"{root!r} is not a directory")
    yield Node("", info)
    # Only where the server follows symlinks can a directory contain itself.
    loops = not backend.features.symlinks
    async for node in _walk_dir(backend, root, "", [info.file_id], guard, loops=loops):
        yield node


async def _walk_dir(
    backend: FileShareBackend,
    root: str,
    rel: str,
    ancestors: list[int],
    guard: TreeGuard,
    *,
    loops: bool,
) -> AsyncIterator[Node]:
    entries = await backend.list_dir(paths.join(root, rel))
    for name, info in sorted(entries, key=lambda e: e[0]):
        child = guard.check_name(rel, name)
        if info.kind == "other":
            log.warning("skipping a special file (FIFO, socket or device)", path=child)
            continue
        if info.kind == "symlink":
            if not backend.features.symlinks:
                raise guard.refuse(f"{child!r} is a symlink or reparse point, not supported here")
            target = await backend.readlink(paths.join(root, child))
            guard.link(child, target)
            yield Node(child, info, target)
            continue
        yield Node(child, info)
        if info.kind == "dir":
            if loops and info.file_id and info.file_id in ancestors:
                raise guard.refuse(
                    f"{child!r} is a loop (a server-side symlink to one of its parents)"
                )
            async for node in _walk_dir(
                backend, root, child, [*ancestors, info.file_id], guard, loops=loops
            ):
                yield node


async def copy_tree(backend: FileShareBackend, src: str, dst: str) -> TreeStats:
    """Copy the tree under directory ``src`` into the existing, empty
    directory ``dst`` on the same share: directories, files (on the server
    where the protocol can), symlinks; then what the protocol keeps of
    modes, owners and times (directories last, deepest first, so their
    times survive the writes into them).

    A symlink that would leave the copy is FailedPrecondition.  On failure
    ``dst`` is left as it is: the caller removes it.
    """
    guard = TreeGuard(FailedPrecondition, "clone")
    stats = TreeStats()
    dirs: list[tuple[str, FileInfo]] = []
    slots = asyncio.Semaphore(COPY_CONCURRENCY)

    async def copy_file(node: Node, target: str) -> None:
        try:
            await backend.copy_file(paths.join(src, node.rel), target)
            await backend.set_attributes(target, node.info)
        finally:
            slots.release()

    async def make_link(node: Node, target: str) -> None:
        assert node.target is not None  # noqa: S101 -- walk sets it for symlinks
        await backend.symlink(node.target, target)
        await backend.set_attributes(target, node.info)

    try:
        async with asyncio.TaskGroup() as tg:
            async for node in walk(backend, src, guard):
                stats.count(node)
                target = paths.join(dst, node.rel) if node.rel else dst
                kind = node.info.kind
                guard.admit(node.rel, kind)
                if kind == "dir":
                    if node.rel:
                        await backend.mkdir(target)
                    dirs.append((target, node.info))
                elif kind == "file":
                    await slots.acquire()
                    tg.create_task(copy_file(node, target))
                else:
                    tg.create_task(make_link(node, target))
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    guard.check_links()
    for path, info in reversed(dirs):
        await backend.set_attributes(path, info)
    return stats


# -- removing and replacing trees --------------------------------------------------


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """What removal needs to know of one entry.

    ``is_dir``: a directory to empty first (a symlink or reparse point is
    not: it is removed as it is).  ``writable``: its permissions let us
    remove its entries (SMB: no read-only attribute; NFS: owner rwx).
    ``raw``: the backend's own facts, handed back to its primitives.
    """

    name: str
    is_dir: bool
    writable: bool = True
    raw: Any = None


class TreeOps(Protocol):
    """The primitives a backend offers for removing trees (paths are share-relative)."""

    @property
    def walkers(self) -> int:
        """Subdirectories emptied side by side (the rest inline)."""
        ...

    @property
    def batch(self) -> int:
        """Entries of one directory removed at once."""
        ...

    async def entry(self, path: str) -> TreeEntry | None:
        """``path`` itself, not following a symlink; None if missing."""
        ...

    async def list(self, path: str) -> list[TreeEntry] | None:
        """Entries of directory ``path``; None if it vanished."""
        ...

    async def make_writable(self, path: str, entry: TreeEntry) -> None: ...

    async def unlink(self, path: str, entry: TreeEntry) -> bool:
        """Remove one non-directory entry; False if it was missing."""
        ...

    async def rmdir(self, path: str) -> bool:
        """Remove an empty directory; False if missing; FailedPrecondition if not empty."""
        ...

    async def rename(self, src: str, dst: str) -> bool:
        """True if renamed, False if ``src`` was missing."""
        ...


async def remove_tree(ops: TreeOps, path: str) -> bool:
    """Remove ``path`` and everything below it, read-only entries included.

    True if something was removed, False if it was missing already.  At most
    ``ops.walkers`` subdirectories are emptied side by side and ``ops.batch``
    entries removed at once, so the number of live coroutines stays bounded
    however large the tree.
    """
    entry = await ops.entry(path)
    if entry is None:
        return False
    if not entry.is_dir:
        return await ops.unlink(path, entry)
    return await _remove_dir(ops, path, entry, asyncio.Semaphore(ops.walkers))


async def replace(ops: TreeOps, src: str, dst: str) -> bool:
    """Rename ``src`` onto ``dst``, removing whatever ``dst`` holds first.

    False, with ``dst`` untouched, when ``src`` is missing.
    """
    if await ops.entry(src) is None:
        return False
    await remove_tree(ops, dst)
    return await ops.rename(src, dst)


async def _remove_dir(
    ops: TreeOps, path: str, entry: TreeEntry, walkers: asyncio.Semaphore
) -> bool:
    for last in REFILLED.attempts():
        if not entry.writable:
            await ops.make_writable(path, entry)
            entry = TreeEntry(entry.name, is_dir=True, writable=True, raw=entry.raw)
        children = await ops.list(path)
        if children is None:
            return False  # removed by someone else meanwhile
        await _remove_children(ops, path, children, walkers)
        try:
            return await ops.rmdir(path)
        except FailedPrecondition:
            if last:  # still not empty: something keeps writing into it
                raise
    return False  # pragma: no cover - the last attempt returns or raises


async def _remove_children(
    ops: TreeOps, path: str, children: list[TreeEntry], walkers: asyncio.Semaphore
) -> None:
    walking: list[asyncio.Task[bool]] = []
    try:
        for child in children:
            if not child.is_dir:
                continue
            child_path = paths.join(path, child.name)
            if walkers.locked():
                await _remove_dir(ops, child_path, child, walkers)
            else:
                await walkers.acquire()
                walking.append(asyncio.create_task(_walk(ops, child_path, child, walkers)))
        leaves = [c for c in children if not c.is_dir]
        for start in range(0, len(leaves), ops.batch):
            results = await asyncio.gather(
                *(
                    ops.unlink(paths.join(path, c.name), c)
                    for c in leaves[start : start + ops.batch]
                ),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        for task in walking:
            await task
    finally:
        for task in walking:
            task.cancel()
        await asyncio.gather(*walking, return_exceptions=True)


async def _walk(ops: TreeOps, path: str, entry: TreeEntry, walkers: asyncio.Semaphore) -> bool:
    try:
        return await _remove_dir(ops, path, entry, walkers)
    finally:
        walkers.release()
