"""controller.tree's removal algorithms over a stateful in-memory TreeOps."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from controller import tree
from controller.tree import TreeEntry
from driver.errors import FailedPrecondition


@dataclass
class MemoryTree:
    """Directories (path -> read-only?) and files; records every action."""

    dirs: dict[str, bool] = field(default_factory=dict)
    files: set[str] = field(default_factory=set)
    actions: list[tuple[str, str]] = field(default_factory=list)
    refill: dict[str, int] = field(default_factory=dict)  # dir -> times a writer refills it
    walkers: int = 2
    batch: int = 3

    def _children(self, path: str) -> list[str]:
        prefix = f"{path}/"
        return sorted(
            p[len(prefix) :]
            for p in (*self.dirs, *self.files)
            if p.startswith(prefix) and "/" not in p[len(prefix) :]
        )

    async def entry(self, path: str) -> TreeEntry | None:
        name = path.rpartition("/")[2]
        if path in self.dirs:
            return TreeEntry(name, is_dir=True, writable=not self.dirs[path])
        if path in self.files:
            return TreeEntry(name, is_dir=False)
        return None

    async def list(self, path: str) -> list[TreeEntry] | None:
        if path not in self.dirs:
            return None
        self.actions.append(("list", path))
        out = []
        for name in self._children(path):
            entry = await self.entry(f"{path}/{name}")
            assert entry is not None
            out.append(entry)
        return out

    async def make_writable(self, path: str, entry: TreeEntry) -> None:
        self.actions.append(("make-writable", path))
        self.dirs[path] = False

    async def unlink(self, path: str, entry: TreeEntry) -> bool:
        assert not self.dirs.get(path.rpartition("/")[0], False), "parent still read-only"
        self.actions.append(("unlink", path))
        if path not in self.files:
            return False
        self.files.discard(path)
        return True

    async def rmdir(self, path: str) -> bool:
        if self.refill.get(path, 0) > 0:
            self.refill[path] -= 1
            self.files.add(f"{path}/late-{self.refill[path]}")
        if self._children(path):
            raise FailedPrecondition(f"{path}: directory not empty")
        self.actions.append(("rmdir", path))
        return self.dirs.pop(path, None) is not None

    async def rename(self, src: str, dst: str) -> bool:
        self.actions.append(("rename", f"{src} -> {dst}"))
        if src not in self.files:
            return False
        self.files.discard(src)
        self.files.add(dst)
        return True


def _tree() -> MemoryTree:
    t = MemoryTree(dirs={"v": False, "v/ro": True, "v/a": False, "v/a/b": False})
    t.files = {"v/f1", "v/ro/f2", "v/a/f3", "v/a/b/f4", *(f"v/a/b/n{i}" for i in range(7))}
    return t


async def test_removes_a_tree_opening_read_only_directories() -> None:
    t = _tree()
    assert await tree.remove_tree(t, "v") is True
    assert (t.dirs, t.files) == ({}, set())
    assert ("make-writable", "v/ro") in t.actions
    assert t.actions.index(("make-writable", "v/ro")) < t.actions.index(("unlink", "v/ro/f2"))
    assert t.actions[-1] == ("rmdir", "v")


async def test_missing_path_and_single_file() -> None:
    t = _tree()
    assert await tree.remove_tree(t, "nothing") is False
    assert await tree.remove_tree(t, "v/f1") is True
    assert "v/f1" not in t.files


async def test_a_refilled_directory_is_emptied_again() -> None:
    t = _tree()
    t.refill = {"v/a": 2}  # two late writes, the third try succeeds
    assert await tree.remove_tree(t, "v") is True
    assert t.actions.count(("list", "v/a")) == 3


async def test_a_directory_that_keeps_filling_fails_after_the_last_try() -> None:
    t = _tree()
    t.refill = {"v/a": 10}
    with pytest.raises(FailedPrecondition, match="not empty"):
        await tree.remove_tree(t, "v")
    assert t.actions.count(("list", "v/a")) == tree.REFILLED.tries


async def test_replace_keeps_the_target_when_the_source_is_missing() -> None:
    t = _tree()
    assert await tree.replace(t, "gone", "v") is False
    assert "v" in t.dirs
    t.files.add("new")
    assert await tree.replace(t, "new", "v") is True
    assert "v" not in t.dirs
    assert t.actions[-1] == ("rename", "new -> v")
