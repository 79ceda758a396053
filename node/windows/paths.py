r"""Windows path handling for the node: kubelet paths, link targets, UNC roots.

Pure functions, no host calls: what kubelet sends is checked and normalised
here, and link targets as Windows reports them are brought to one form so
that two paths compare case-insensitively.
"""

from __future__ import annotations

from driver import paths
from driver.credentials import Credentials
from driver.errors import InvalidArgument

MAX_PATH = 260  # characters, the terminating NUL included: paths have at most 259
_RESERVED_CHARS = frozenset('<>"|?*')


def normalize_path(path: str, *, what: str) -> str:
    r"""A kubelet path as ``X:\dir\...``: ``/`` → ``\``, a leading ``\`` → ``C:\``.

    Rejects relative, UNC and device paths, ``.``/``..`` components, the
    reserved characters ``<>"|?*``, a colon anywhere but after the drive
    letter, reserved device names, and paths of MAX_PATH characters or more.
    """
    if not path:
        raise InvalidArgument(f"{what}: required")
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise InvalidArgument(f"{what}: control characters (NUL included) are not allowed")
    text = path.replace("/", "\\")
    if text.startswith("\\\\"):
        raise InvalidArgument(f"{what}: must be a local path, not a UNC or device path")
    if text.startswith("\\"):
        text = "C:" + text
    if len(text) < 3 or not (text[0].isascii() and text[0].isalpha()) or text[1:3] != ":\\":
        raise InvalidArgument(f"{what}: must be absolute (C:\\... or \\...), got {path!r}")
    rest = text[3:]
    if ":" in rest:
        raise InvalidArgument(f"{what}: ':' is only allowed after the drive letter")
    bad = _RESERVED_CHARS.intersection(rest)
    if bad:
        raise InvalidArgument(f"{what}: characters {''.join(sorted(bad))!r} are not allowed")
    parts = [part for part in rest.split("\\") if part]
    if not parts:
        raise InvalidArgument(f"{what}: must not be a drive root")
    for part in parts:
        paths.check_component(part, what=what)
    normal = text[0].upper() + ":\\" + "\\".join(parts)
    if len(normal) >= MAX_PATH:
        raise InvalidArgument(f"{what}: longer than {MAX_PATH - 1} characters (Windows MAX_PATH)")
    return normal


def normalize_link_target(target: str) -> str:
    r"""A link target as Go and PowerShell show it.

    ``os.readlink`` on Windows returns ``\\?\UNC\server\share\dir`` (and raw
    reparse data may say ``\??\UNC\...`` or ``UNC\...``) where the link was
    made to ``\\server\share\dir``; local targets may carry ``\\?\``.
    """
    text = target.replace("/", "\\")
    for prefix in ("\\\\?\\UNC\\", "\\??\\UNC\\", "\\\\.\\UNC\\"):
        if text[: len(prefix)].upper() == prefix.upper():
            text = "\\\\" + text[len(prefix) :]
            break
    else:
        if text[:4].upper() == "UNC\\":
            text = "\\\\" + text[4:]
        elif text.startswith(("\\\\?\\", "\\??\\")) and text[5:6] == ":":
            text = text[4:]
    if len(text) > 3 or not text.endswith(":\\"):
        text = text.rstrip("\\")
    return text


def path_key(path: str) -> str:
    """The form two Windows paths are compared in (case-insensitive)."""
    return normalize_link_target(path).casefold()


def is_within(path: str, root: str) -> bool:
    """``path`` is ``root`` or below it (case-insensitive, normalised)."""
    p, r = path_key(path), path_key(root)
    return p == r or p.startswith(r + "\\")


def unc_root(path: str) -> str | None:
    r"""``\\server\share`` of a UNC path, None for anything else."""
    text = normalize_link_target(path)
    if not text.startswith("\\\\"):
        return None
    parts = text[2:].split("\\")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return None
    return f"\\\\{parts[0]}\\{parts[1]}"


def unc_host(server: str) -> str:
    """The host part of a UNC path; IPv6 literals in the ipv6-literal.net form."""
    if ":" in server:
        return server.replace(":", "-").replace("%", "s") + ".ipv6-literal.net"
    return server


def share_root(server: str, share: str) -> str:
    r"""``\\host\share`` of a share (IPv6 servers in the ipv6-literal.net form)."""
    return f"\\\\{unc_host(server)}\\{share}"


def volume_unc(root: str, subdir: str) -> str:
    r"""The UNC path of a volume: ``subdir`` (``/``-separated) under ``root``."""
    return root + ("\\" + subdir.replace("/", "\\") if subdir else "")


def smb_user(credentials: Credentials, host: str) -> str:
    r"""The user name Windows needs: ``DOMAIN\user``, a UPN, or ``server\user``."""
    if credentials.domain:
        return f"{credentials.domain}\\{credentials.username}"
    if "@" in credentials.username:
        return credentials.username
    return f"{host}\\{credentials.username}"


def parse_bool(value: str, *, what: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on", ""):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise InvalidArgument(f"{what}: {value!r} is not true or false")
