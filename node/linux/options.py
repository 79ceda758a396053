"""Mount options, device names and credentials files for cifs and nfs: pure.

Everything here turns a :class:`~node.platform.StageRequest` (or the parts of
an inline ephemeral volume) into what ``mount`` is given, and validates the
user's ``mountOptions`` before any side effect.  No I/O.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from driver.credentials import Credentials
from driver.errors import InvalidArgument
from driver.source import Source
from node.linux.mountinfo import MountEntry
from node.platform import StageRequest

CIFS_TYPES = frozenset({"cifs", "smb3"})
NFS_TYPES = frozenset({"nfs", "nfs4"})
# Options that would smuggle credentials past the secret (mount.cifs matches
# option names by prefix: "user..." is the user name, "pass..." the password,
# "cred..." a credentials file), or change what kind of mount this is.
_CIFS_SECRET_PREFIXES = ("user", "pass", "cred")
_CIFS_USER_OK = frozenset({"users", "user_xattr"})
_FORBIDDEN_OPTIONS = frozenset({"remount", "bind", "rbind", "move", "make-shared"})
_SMB_DEFAULT_MODE = "0770"
SMB_PORT = 445
NFS_PORT = 2049  # NFSv4 (and nfsd for v3; its mountd port varies)


def split_option(opt: str) -> tuple[str, str | None]:
    key, sep, value = opt.partition("=")
    return key.strip().lower(), (value if sep else None)


def check_options(options: Sequence[str]) -> list[str]:
    out: list[str] = []
    for opt in options:
        opt = opt.strip()  # noqa: PLW2901 - normalising the loop's own item
        if not opt:
            continue
        if any(ord(c) < 0x20 or c == "\x7f" for c in opt) or "," in opt:
            raise InvalidArgument("mount options: control characters and ',' are not allowed")
        key, _ = split_option(opt)
        if key in _FORBIDDEN_OPTIONS:
            raise InvalidArgument(f"mount option {key!r} is not allowed (the driver decides that)")
        out.append(opt)
    return out


def option_keys(options: Sequence[str]) -> dict[str, str | None]:
    return dict(split_option(o) for o in options)


def port_option(options: list[str], source: Source) -> None:
    if source.port is None:
        return
    given = option_keys(options).get("port")
    if given is None:
        options.append(f"port={source.port}")
    elif given.strip() != str(source.port):
        raise InvalidArgument(
            f"mount option port={given} contradicts the port {source.port} in the source"
        )


def mount_group_id(group: str) -> int:
    if not group.isdigit() or not group.isascii() or int(group) > 0xFFFFFFFE:
        raise InvalidArgument(
            f"volume_mount_group {group!r}: expected a numeric group ID (the pod's fsGroup)"
        )
    return int(group)


def kerberos_options(options: list[str], keys: dict[str, str | None]) -> None:
    """``sec=krb5`` unless the user chose ``krb5i``; the driver owns ``cruid``
    (the uid its per-volume credential cache belongs to)."""
    sec = (keys.get("sec") or "").strip().lower()
    if "sec" in keys and sec not in ("krb5", "krb5i"):
        raise InvalidArgument(
            f"mount option sec={keys['sec']} contradicts the Kerberos secret (use krb5 or krb5i)"
        )
    if "cruid" in keys:
        raise InvalidArgument(
            "mount option 'cruid' is not allowed: the driver sets it (--krb5-uid)"
        )
    if "sec" not in keys:
        options.append("sec=krb5")


def smb_options(request: StageRequest) -> list[str]:
    """cifs mount options for a stage request, without the credentials file."""
    options = check_options(request.mount_options)
    for opt in options:
        key, _ = split_option(opt)
        if key.startswith(_CIFS_SECRET_PREFIXES) and key not in _CIFS_USER_OK:
            raise InvalidArgument(
                f"mount option {key!r} is not allowed: user name and password belong in the "
                "node-stage secret (keys username, password, domain)"
            )
    keys = option_keys(options)
    if request.kerberos is not None:
        kerberos_options(options, keys)
    port_option(options, request.source)
    # Each volume gets its own TCP connection and SMB session: a session that
    # died with its server (or got stuck) cannot take other volumes down with
    # it, and a re-stage really reconnects instead of joining a dead session.
    if "nosharesock" not in keys:
        options.append("nosharesock")
    if request.mount_group:
        gid = mount_group_id(request.mount_group)
        # The pod's fsGroup owns everything and may write; cifs has no real
        # POSIX ownership without unix extensions, so these are what the
        # kernel shows (and enforces locally).
        if "gid" not in keys:
            options.append(f"gid={gid}")
            if "file_mode" not in keys:
                options.append(f"file_mode={_SMB_DEFAULT_MODE}")
            if "dir_mode" not in keys:
                options.append(f"dir_mode={_SMB_DEFAULT_MODE}")
    if request.read_only and "ro" not in keys:
        options.append("ro")
    return options


def nfs_options(request: StageRequest) -> list[str]:
    """nfs mount options for a stage request (the version: the user's
    ``nfsvers=``/``vers=`` or mount.nfs's negotiation, newest first)."""
    options = check_options(request.mount_options)
    if request.mount_group:
        mount_group_id(request.mount_group)
    keys = option_keys(options)
    port_option(options, request.source)
    if request.read_only and "ro" not in keys:
        options.append("ro")
    return options


def smb_device(source: Source, subdir: str) -> str:
    # mount.cifs takes IPv6 literals without brackets (//fd00::1/share).
    return "//" + "/".join(p for p in (source.server, source.share, subdir) if p)


def nfs_device(source: Source, subdir: str) -> str:
    host = f"[{source.server}]" if ":" in source.server else source.server
    path = source.share.rstrip("/")
    if subdir:
        path = f"{path}/{subdir}"
    return f"{host}:{path or '/'}"


def _norm_smb(device: str) -> tuple[str, str, str]:
    parts = [p for p in device.replace("\\", "/").split("/") if p]
    if len(parts) < 2:
        return (device, "", "")
    return (parts[0].lower(), parts[1].lower(), "/".join(parts[2:]))


def _norm_nfs(device: str) -> tuple[str, str]:
    host, _, path = device.rpartition(":/")
    return (host.lower(), posixpath.normpath("/" + path))


@dataclass(frozen=True, slots=True)
class MountSpec:
    protocol: str
    fstype: str
    device: str
    options: tuple[str, ...]
    read_only: bool
    server: str = ""  # host name or address, for the reachability check
    port: int = 0  # the server's TCP port (the given one or the protocol's)

    def matches(self, entry: MountEntry) -> bool:
        """True when ``entry`` is this share directory, however it was mounted."""
        if self.protocol == "smb":
            return entry.fstype in CIFS_TYPES and _norm_smb(entry.source) == _norm_smb(self.device)
        return entry.fstype in NFS_TYPES and _norm_nfs(entry.source) == _norm_nfs(self.device)

    def fresh(self) -> MountSpec:
        """This mount on a new superblock, for a repair.  NFS would otherwise
        join the client's cached superblock of the export and keep answering
        with the same stale root (measured: ~30 s); cifs gets its own session
        from ``nosharesock`` already."""
        if self.protocol != "nfs":
            return self
        kept = tuple(o for o in self.options if split_option(o)[0] != "sharecache")
        if "nosharecache" in option_keys(kept):
            return replace(self, options=kept)
        return replace(self, options=(*kept, "nosharecache"))


def _server_port(options: Sequence[str], default: int) -> int:
    given = option_keys(options).get("port")
    if given is not None and given.strip().isdigit() and 0 < int(given) < 65536:
        return int(given)
    return default


# Per protocol: the kernel file system type, its options, its device, its default port.
_PROTOCOLS: dict[
    str,
    tuple[str, Callable[[StageRequest], list[str]], Callable[[Source, str], str], int],
] = {
    "smb": ("cifs", smb_options, smb_device, SMB_PORT),
    "nfs": ("nfs", nfs_options, nfs_device, NFS_PORT),
}


def mount_spec(request: StageRequest) -> MountSpec:
    protocol = _PROTOCOLS.get(request.source.protocol)
    if protocol is not None:
        fstype, make_options, make_device, default_port = protocol
        options = make_options(request)
        return MountSpec(
            request.source.protocol,
            fstype,
            make_device(request.source, request.subdir),
            tuple(options),
            request.read_only,
            request.source.server,
            _server_port(options, default_port),
        )
    raise InvalidArgument(f"protocol {request.source.protocol!r} is not smb or nfs")


def with_kerberos(spec: MountSpec, cruid: int) -> MountSpec:
    """``spec`` as a cifs Kerberos mount: ``sec=krb5`` unless the user chose
    ``krb5i``, and the driver's ``cruid`` (whose credential cache cifs.upcall
    reads).  A repair needs it too: the publish request carries no secret."""
    options = list(spec.options)
    keys = option_keys(options)
    if keys.get("cruid") == str(cruid):
        return spec  # already one
    kerberos_options(options, keys)
    return replace(spec, options=(*options, f"cruid={cruid}"))


def credentials_text(creds: Credentials) -> str:
    """The mount.cifs credentials file: one ``key=value`` per line, the value
    taken verbatim to the end of the line (so ``,`` ``"`` backticks and
    spaces need no quoting; only line breaks cannot be represented)."""
    for what, value in (("username", creds.username), ("domain", creds.domain)):
        if any(c in value for c in "%/\r\n\x00"):
            # mount.cifs would read "user%pass" and "domain/user" forms.
            raise InvalidArgument(f"node-stage secret: {what} must not contain '%', '/' or breaks")
    if any(c in creds.password for c in "\r\n\x00"):
        raise InvalidArgument("node-stage secret: the password must not contain line breaks")
    lines = [f"username={creds.username}", f"password={creds.password}"]
    if creds.domain:
        lines.append(f"domain={creds.domain}")
    return "\n".join(lines) + "\n"
