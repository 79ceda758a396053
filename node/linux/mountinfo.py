"""``/proc/self/mountinfo``: the mount table, parsed.

Each line (proc(5)):

    36 35 98:0 /mnt1 /mnt/parent\\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2)(3)   (4)   (5)                (6)      (7)      (8) (9)   (10)      (11)

mount ID, parent ID, major:minor, root of the mount inside its filesystem,
mount point, per-mount options, zero or more optional fields ended by ``-``,
filesystem type, source, super-block options.  The kernel escapes space, tab,
newline and backslash as octal (``\\040 \\011 \\012 \\134``) in the path-like
fields and the source; super options may also contain escaped commas.

Everything here is pure except :func:`read`.  The mount table is the only
truth the node uses about what is mounted: a restarted driver sees exactly
what the previous one left.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"

_ESCAPE = re.compile(r"\\([0-7]{3})")
_MUST_ESCAPE = frozenset(" \t\n\\")


class MountinfoError(ValueError):
    """A line that is not in mountinfo format."""


@dataclass(frozen=True, slots=True)
class MountEntry:
    mount_id: int
    parent_id: int
    major_minor: str
    root: str  # the directory of the filesystem that is mounted here
    mount_point: str
    options: tuple[str, ...]  # per-mount: rw/ro, nosuid, relatime...
    optional_fields: tuple[str, ...]  # shared:N, master:N, propagate_from:N, unbindable
    fstype: str
    source: str
    super_options: tuple[str, ...]  # per-filesystem: vers=, addr=, username=...

    @property
    def read_only(self) -> bool:
        return "ro" in self.options

    def super_option(self, key: str) -> str | None:
        """The value of ``key=value`` among the super options (None if absent)."""
        prefix = key + "="
        for opt in self.super_options:
            if opt.startswith(prefix):
                return opt[len(prefix) :]
            if opt == key:
                return ""
        return None

    def same_filesystem_view(self, other: MountEntry) -> bool:
        """True when both show the same directory of the same filesystem
        (e.g. a bind mount of the other)."""
        return self.major_minor == other.major_minor and self.root == other.root


def unescape(text: str) -> str:
    """Undo the kernel's octal escapes (``\\040`` → space)."""
    if "\\" not in text:
        return text
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def escape(text: str) -> str:
    """Escape like the kernel does for mountinfo path fields (for tests, fakes)."""
    return "".join(f"\\{ord(c):03o}" if c in _MUST_ESCAPE else c for c in text)


def _split_options(text: str) -> tuple[str, ...]:
    # Escaped commas (\054) stay inside one option: split first, then unescape.
    return tuple(unescape(part) for part in text.split(",") if part)


def parse_line(line: str) -> MountEntry:
    fields = line.rstrip("\n").split(" ")
    try:
        sep = fields.index("-", 6)
    except ValueError:
        raise MountinfoError(f"no '-' separator in mountinfo line: {line!r}") from None
    if len(fields) < sep + 3 or sep < 6:
        raise MountinfoError(f"too few fields in mountinfo line: {line!r}")
    try:
        mount_id, parent_id = int(fields[0]), int(fields[1])
    except ValueError:
        raise MountinfoError(f"bad mount IDs in mountinfo line: {line!r}") from None
    return MountEntry(
        mount_id=mount_id,
        parent_id=parent_id,
        major_minor=fields[2],
        root=unescape(fields[3]),
        mount_point=unescape(fields[4]),
        options=_split_options(fields[5]),
        optional_fields=tuple(fields[6:sep]),
        fstype=unescape(fields[sep + 1]),
        source=unescape(fields[sep + 2]),
        super_options=_split_options(" ".join(fields[sep + 3 :])),
    )


def format_line(entry: MountEntry) -> str:
    """The inverse of :func:`parse_line` (for fakes and tests)."""
    fields = [
        str(entry.mount_id),
        str(entry.parent_id),
        entry.major_minor,
        escape(entry.root),
        escape(entry.mount_point),
        ",".join(escape(o) for o in entry.options),
        *entry.optional_fields,
        "-",
        escape(entry.fstype),
        escape(entry.source),
        ",".join(escape(o).replace(",", "\\054") for o in entry.super_options),
    ]
    return " ".join(fields)


def parse(text: str) -> list[MountEntry]:
    return [parse_line(line) for line in text.splitlines() if line.strip()]


def at(entries: Sequence[MountEntry], mount_point: str) -> list[MountEntry]:
    """All mounts at ``mount_point``, bottom first (the last one is visible)."""
    return [e for e in entries if e.mount_point == mount_point]


def top(entries: Sequence[MountEntry], mount_point: str) -> MountEntry | None:
    """The visible mount at ``mount_point``, if any: the one no other mount
    at the same point sits on.  (Stacked mounts are chained by parent ID; the
    kernel may list a layer added later before an older one, e.g. after a
    repair stacked a new mount on a target.)"""
    found = at(entries, mount_point)
    if not found:
        return None
    below = {e.parent_id for e in found}
    covering = [e for e in found if e.mount_id not in below]
    return covering[-1] if covering else found[-1]


def by_source(entries: Iterable[MountEntry], fstype: str, source: str) -> list[MountEntry]:
    return [e for e in entries if e.fstype == fstype and e.source == source]


def read(path: str = MOUNTINFO) -> list[MountEntry]:
    """The current mount table of this process's mount namespace."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse(f.read())
