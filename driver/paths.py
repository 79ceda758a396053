"""Validation of paths relative to a share root.

Every directory the driver creates, renames or removes is named by a path
relative to the root of a share.  Whatever the source (a volume ID, a template,
a parameter), it passes through :func:`safe_relpath` first, so nothing can
climb out of the share or play tricks on the server's path parser.

:func:`share_parts` is the looser last line of defence that the share
backends and the tree walker apply to every path they are handed (names
found on a share, inside an archive, may be anything the server allows).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from driver.errors import DriverError, InvalidArgument

MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 1024

# Names Windows (and so many SMB servers) refuse or treat as devices.
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$", re.IGNORECASE)
# Characters that are separators, wildcards or stream markers on some server.
_FORBIDDEN_CHARS = set('/\\:*?"<>|')


def check_component(part: str, *, what: str = "path") -> str:
    """Validate one directory name; return it unchanged."""
    if part in ("", ".", ".."):
        raise InvalidArgument(f"{what}: empty, '.' or '..' components are not allowed")
    if any(ord(c) < 0x20 or c == "\x7f" for c in part):
        raise InvalidArgument(f"{what}: control characters (NUL included) are not allowed")
    bad = _FORBIDDEN_CHARS.intersection(part)
    if bad:
        raise InvalidArgument(f"{what}: characters {''.join(sorted(bad))!r} are not allowed")
    if part != part.strip() or part.endswith("."):
        raise InvalidArgument(f"{what}: names may not start/end with spaces or end with '.'")
    if _WINDOWS_RESERVED.match(part):
        raise InvalidArgument(f"{what}: {part!r} is a reserved device name")
    if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
        raise InvalidArgument(f"{what}: a component is longer than {MAX_COMPONENT_BYTES} bytes")
    try:
        part.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"{what}: not valid UTF-8") from exc
    return part


def safe_relpath(path: str, *, what: str = "path", allow_empty: bool = False) -> str:
    """Return ``path`` if it is a clean relative path inside a share.

    Clean means: ``/``-separated, not absolute, no empty/``.``/``..`` parts,
    no backslash, colon, wildcard, control character or reserved device name.
    ``""`` (the share root itself) is accepted only with ``allow_empty``.
    """
    if path == "":
        if allow_empty:
            return path
        raise InvalidArgument(f"{what}: must not be empty")
    if path.startswith("/"):
        raise InvalidArgument(f"{what}: must be relative, not start with '/'")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidArgument(f"{what}: longer than {MAX_PATH_BYTES} bytes")
    for part in path.split("/"):
        check_component(part, what=what)
    return path


_CHAR_NAMES = {"\\": "backslash", "\x00": "NUL", ":": "colon"}


def share_parts(
    path: str,
    *,
    what: str = "path",
    forbid: str = "\\\x00",
    error: Callable[[str], DriverError] = InvalidArgument,
) -> tuple[str, ...]:
    """Split a ``/`` path relative to a share root into its parts, or refuse it.

    Refuses (``error``, InvalidArgument by default): anything but a non-empty
    string, a leading ``/``, empty/``.``/``..`` parts (``a//b``, ``a/``), and
    the characters in ``forbid`` (backslash and NUL; SMB adds ``:``, the
    alternate data stream marker).
    """
    if not isinstance(path, str) or not path:
        raise error(f"{what}: must be a non-empty relative path")
    if path.startswith("/"):
        raise error(f"{what}: must be relative, not start with '/'")
    bad = set(forbid).intersection(path)
    if bad:
        names = ", ".join(_CHAR_NAMES.get(c, repr(c)) for c in sorted(bad))
        raise error(f"{what}: {names} not allowed")
    parts = tuple(path.split("/"))
    if any(part in ("", ".", "..") for part in parts):
        raise error(f"{what}: empty, '.' or '..' components are not allowed")
    return parts


def join(*parts: str) -> str:
    """Join already validated relative paths, skipping empty ones."""
    return "/".join(p for p in parts if p)


def parent_and_leaf(path: str) -> tuple[str, str]:
    """Split a validated relative path into (parent, leaf); parent may be ''."""
    parent, _, leaf = path.rpartition("/")
    return parent, leaf
