r"""The Windows node: SMB global mappings and directory symlinks.

The driver runs as a HostProcess container (``NT AUTHORITY\SYSTEM`` on the
host), so it does the work itself, without csi-proxy:

* **Stage** maps the share ROOT ``\\server\share`` once with
  ``New-SmbGlobalMapping`` (one mapping per share, whatever the number of
  volumes on it: mapping subdirectories separately fails with Windows error
  1219), then replaces kubelet's pre-created staging directory by a directory
  symlink to ``\\server\share\subdir``.  A mapping whose Status is not ``OK``
  or whose share does not answer ``Test-Path`` is removed and re-created; a
  dangling or wrong staging link is replaced.
* **Publish** replaces the pre-created target directory by a symlink to the
  staging path.
* **Unpublish / unstage** remove links, never anything through a link (no
  recursive delete).  The mapping of a share is removed at the unstage of its
  last volume: when no staging link under kubelet's CSI plugin directory
  (``<kubelet>\plugins\kubernetes.io\csi\<driver>\<sha256>\globalmount``,
  and the older ``...\csi\pv\<pv>\globalmount``) still points into the share.
  Links of every driver are counted, so a mapping another driver relies on
  is never pulled away.
* **Stats** ask ``GetDiskFreeSpaceExW`` through the link, in a thread and
  bounded in time (no PowerShell per call); no inode counts on Windows.

Decisions an operator should know about:

* **Read-only** volumes are refused (InvalidArgument) by default.  Windows
  cannot make a directory symlink read-only, and the global mapping is shared
  by every volume of the share, so nothing on the node can enforce it; a
  pod that asked for read-only would silently get write access.  Real
  read-only access on Windows comes from the server: use an SMB account that
  has read-only rights on the share and request read-write access.  Where that
  is known and accepted, ``WindowsSettings.read_only="warn"`` accepts such
  requests with a warning in the log.
* **Stats** cost no PowerShell while the share answers and its mapping was
  seen OK within ``status_ttl``; a volume whose share does not answer (or
  whose link dangles) is abnormal, with the mapping's status in the message.
* **Encryption**: ``-RequirePrivacy`` is ``$true`` unless the StorageClass
  mount options say ``requirePrivacy=false`` (``seal`` turns it on where the
  settings default is off).  A mapping that already exists is reused as it
  is; a warning is logged when it does not require privacy but a volume asks.
* **One identity per share** (per server, in fact): the mapping is made with
  the credentials of the first volume staged on the node and serves every
  later volume of that share; Windows refuses a second user for the same
  server (error 1219), which is reported as FailedPrecondition.
* **User names** need a domain: ``DOMAIN\user`` from the secret's ``domain``
  key (or ``DOMAIN\user`` written in ``username``), a ``user@domain`` UPN as
  it is, else ``server\user`` (a local account of the file server) — a bare
  user name fails with "A specified logon session does not exist".
* **Ports**: the mapping always uses port 445; a source or ``port=`` mount
  option with another port is a FailedPrecondition.
* **NFS** volumes are a FailedPrecondition on Windows nodes.
"""

from __future__ import annotations

import asyncio
import errno
import ntpath
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from driver import paths
from driver.config import Config
from driver.credentials import Credentials
from driver.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DriverError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from driver.log import get_logger
from driver.redact import scrub
from driver.source import Source
from node.platform import PublishRequest, StageRequest, VolumeHealth, VolumeUsage
from node.powershell import PowerShell, ProcessSpawner, map_windows_code, wrap_script

log = get_logger("node.windows")

T = TypeVar("T")

MAX_PATH = 260  # characters, the terminating NUL included: paths have at most 259
SMB_PORT = 445
_RESERVED_CHARS = frozenset('<>"|?*')
_HEALTHY = "volume is reachable"

# --------------------------------------------------------------------------- scripts

# Inputs of the scripts (environment variables of the PowerShell process).
ENV_REMOTE_PATH = "CSI_REMOTE_PATH"
ENV_USER = "CSI_SMB_USER"
ENV_PASSWORD = "CSI_SMB_PASSWORD"  # noqa: S105 - the variable's name, not a password
ENV_REQUIRE_PRIVACY = "CSI_REQUIRE_PRIVACY"

OP_GET_MAPPING = "get-mapping"
OP_NEW_MAPPING = "new-mapping"
OP_REMOVE_MAPPING = "remove-mapping"

_GET_MAPPING = """
$found = Get-SmbGlobalMapping -RemotePath $Env:CSI_REMOTE_PATH -ErrorAction SilentlyContinue
$mapping = $found | Select-Object -First 1
if ($null -eq $mapping) {
    $result = @{ exists = $false; status = ''; reachable = $false; privacy = $null }
} else {
    $result = @{
        exists = $true
        status = [string]$mapping.Status
        reachable = [bool](Test-Path -LiteralPath $Env:CSI_REMOTE_PATH)
        privacy = $mapping.RequirePrivacy
    }
}
"""

# The password exists only as $Env:CSI_SMB_PASSWORD (removed from the process
# environment once read) and inside the SecureString / PSCredential.
_NEW_MAPPING = """
$secure = ConvertTo-SecureString -String $Env:CSI_SMB_PASSWORD -AsPlainText -Force
Remove-Item -LiteralPath Env:CSI_SMB_PASSWORD
$user = $Env:CSI_SMB_USER
$credentialType = 'System.Management.Automation.PSCredential'
$credential = New-Object -TypeName $credentialType -ArgumentList $user, $secure
$privacy = $Env:CSI_REQUIRE_PRIVACY -eq 'true'
$remote = $Env:CSI_REMOTE_PATH
$null = New-SmbGlobalMapping -RemotePath $remote -Credential $credential -RequirePrivacy $privacy
$result = @{ created = $true }
"""

_REMOVE_MAPPING = """
$found = Get-SmbGlobalMapping -RemotePath $Env:CSI_REMOTE_PATH -ErrorAction SilentlyContinue
$mapping = $found | Select-Object -First 1
$removed = $false
if ($null -ne $mapping) {
    $null = Remove-SmbGlobalMapping -RemotePath $Env:CSI_REMOTE_PATH -Force
    $removed = $true
}
$result = @{ removed = $removed }
"""

# Every PowerShell script this platform runs, by operation name (CSI_OP).
SCRIPTS: dict[str, str] = {
    OP_GET_MAPPING: wrap_script(_GET_MAPPING),
    OP_NEW_MAPPING: wrap_script(_NEW_MAPPING),
    OP_REMOVE_MAPPING: wrap_script(_REMOVE_MAPPING),
}

# --------------------------------------------------------------------------- paths


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


def smb_user(credentials: Credentials, host: str) -> str:
    r"""The user name Windows needs: ``DOMAIN\user``, a UPN, or ``server\user``."""
    if credentials.domain:
        return f"{credentials.domain}\\{credentials.username}"
    if "@" in credentials.username:
        return credentials.username
    return f"{host}\\{credentials.username}"


def _parse_bool(value: str, *, what: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on", ""):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise InvalidArgument(f"{what}: {value!r} is not true or false")


# --------------------------------------------------------------------------- host


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


# --------------------------------------------------------------------------- platform


@dataclass(frozen=True, slots=True)
class WindowsSettings:
    kubelet_dir: str = "C:\\var\\lib\\kubelet"
    require_privacy: bool = True  # New-SmbGlobalMapping -RequirePrivacy default
    read_only: Literal["refuse", "warn"] = "refuse"  # see the module doc
    max_powershell: int = 3  # PowerShell processes at once
    map_timeout: float = 110.0  # New-/Remove-SmbGlobalMapping, Test-Path of a share
    fs_timeout: float = 30.0  # is_dir of a directory on the share
    stats_timeout: float = 10.0  # GetDiskFreeSpaceExW for NodeGetVolumeStats
    status_timeout: float = 20.0  # mapping status looked up for NodeGetVolumeStats
    status_ttl: float = 60.0  # an OK mapping status is trusted this long by stats
    status_retry: float = 15.0  # a bad one is looked up again after this long

    @classmethod
    def from_config(cls, config: Config) -> WindowsSettings:
        return cls(
            map_timeout=config.mount_timeout,
            require_privacy=config.windows_require_privacy,
            read_only=config.windows_read_only,
        )


@dataclass(frozen=True, slots=True)
class MappingState:
    exists: bool
    status: str
    reachable: bool
    privacy: bool | None

    @property
    def healthy(self) -> bool:
        return self.exists and self.status == "OK" and self.reachable


class WindowsPlatform:
    """NodePlatform for SMB volumes on a Windows node (HostProcess)."""

    name = "windows"
    capabilities = frozenset(
        {"STAGE_UNSTAGE_VOLUME", "GET_VOLUME_STATS", "VOLUME_CONDITION", "SINGLE_NODE_MULTI_WRITER"}
    )

    def __init__(
        self,
        config: Config,
        *,
        settings: WindowsSettings | None = None,
        host: WindowsHost | None = None,
        spawner: ProcessSpawner | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.settings = settings or WindowsSettings.from_config(config)
        self._own_host: RealWindowsHost | None = None
        if host is None:
            host = self._own_host = RealWindowsHost()
        self.host: WindowsHost = host
        self.powershell = PowerShell(
            spawner,
            max_concurrent=self.settings.max_powershell,
            timeout=self.settings.map_timeout,
        )
        self._clock = clock
        self._share_locks: dict[str, asyncio.Lock] = {}
        # Mapping status for stats, per share root key: (when, problem or None).
        self._status: dict[str, tuple[float, str | None]] = {}
        self._status_queries: dict[str, asyncio.Task[str | None]] = {}
        self._probes: dict[str, asyncio.Task[DiskSpace]] = {}  # path key → pending probe

    # ---------------------------------------------------------------- NodePlatform

    def check_path(self, path: str, *, what: str) -> str:
        return normalize_path(path, what=what)

    async def stage(self, request: StageRequest) -> None:
        source = request.source
        if source.protocol != "smb":
            raise FailedPrecondition(
                f"{source.protocol.upper()} volumes are not supported on Windows nodes: run pods "
                "that use them on Linux nodes (nodeSelector kubernetes.io/os: linux) or use SMB"
            )
        privacy = self._options(source, request.mount_options)
        self._check_read_only(request.read_only, request.volume_id, what="NodeStageVolume")
        if request.credentials is None:
            raise InvalidArgument("node-stage secret: SMB needs username and password")
        host = unc_host(source.server)
        root = f"\\\\{host}\\{source.share}"
        target = root + ("\\" + request.subdir.replace("/", "\\") if request.subdir else "")
        staging = request.staging_path
        secrets = [request.credentials.password]
        async with self._share_lock(root):
            try:
                await self._ensure_mapping(root, request.credentials, host, privacy)
                if not await self._bounded(
                    self.host.is_dir(target), self.settings.fs_timeout, what=f"checking {target}"
                ):
                    raise NotFound(
                        f"{target} is not a directory on the share (was the volume deleted?)"
                    )
                await self._ensure_link(staging, target, what="staging_target_path")
            except OSError as exc:
                raise _os_error(exc, what="NodeStageVolume", secrets=secrets) from None
        log.info("staged", volume_id=request.volume_id, target=target, staging=staging)

    async def unstage(self, volume_id: str, staging_path: str) -> None:
        try:
            if not await self.host.lexists(staging_path):
                return
            if not await self.host.is_link(staging_path):
                # Not ours (or a stage that never got as far as the link): leave it.
                log.info("staging path is not a link; nothing to undo", staging=staging_path)
                return
            target = normalize_link_target(await self.host.read_link(staging_path))
            root = unc_root(target)
            if root is None:
                await self.host.remove_link(staging_path)
                return
            async with self._share_lock(root):
                users = await self._links_into(root, exclude=staging_path)
                if users:
                    log.info(
                        "share still in use; keeping its mapping", share=root, links=len(users)
                    )
                else:
                    # Mapping first, link second: when the removal fails, the link
                    # is still there for kubelet's retry to find the share by.
                    await self._run(OP_REMOVE_MAPPING, {ENV_REMOTE_PATH: root}, what="unmap")
                    self._status.pop(path_key(root), None)
                    log.info("removed the share's global mapping", share=root)
                await self.host.remove_link(staging_path)
        except OSError as exc:
            raise _os_error(exc, what="NodeUnstageVolume") from None
        log.info("unstaged", volume_id=volume_id, staging=staging_path)

    async def publish(self, request: PublishRequest) -> None:
        self._check_read_only(request.read_only, request.volume_id, what="NodePublishVolume")
        try:
            if not await self.host.lexists(request.staging_path):
                raise FailedPrecondition(
                    f"staging_target_path {request.staging_path} does not exist: stage first"
                )
            await self._ensure_link(request.target_path, request.staging_path, what="target_path")
        except OSError as exc:
            raise _os_error(exc, what="NodePublishVolume") from None
        log.info("published", volume_id=request.volume_id, target=request.target_path)

    async def unpublish(self, volume_id: str, target_path: str) -> None:
        try:
            if not await self.host.lexists(target_path):
                return
            if await self.host.is_link(target_path):
                await self.host.remove_link(target_path)
            elif await self.host.is_dir(target_path) and not await self.host.list_dir(target_path):
                await self.host.remove_empty_dir(target_path)
            else:
                # Data written into the pod's directory itself: never delete it.
                log.warning("target is not a link and not empty; left alone", target=target_path)
        except OSError as exc:
            raise _os_error(exc, what="NodeUnpublishVolume") from None

    async def usage(self, volume_id: str, path: str) -> VolumeUsage:
        try:
            if not await self.host.lexists(path):
                raise NotFound(f"volume_path {path} does not exist")
            final, broken = await self._resolve(path)
        except OSError as exc:
            raise _os_error(exc, what="NodeGetVolumeStats") from None
        root = unc_root(final) if final else None
        space: DiskSpace | None = None
        problem = broken
        if problem is None:
            space, problem = await self._probe(path)
        if root is not None:
            if problem is None:
                status = await self._share_problem(root)
                if status is not None:
                    problem = f"SMB global mapping {root}: {status}"
            else:
                status = await self._share_problem(root, recheck_ok=True)
                if status is not None:
                    problem += f"; SMB global mapping {root}: {status}"
        if space is None:
            space = DiskSpace(0, 0, 0)
        return VolumeUsage(
            total_bytes=space.total,
            available_bytes=space.available,
            used_bytes=max(space.total - space.free, 0),
            total_inodes=None,
            free_inodes=None,
            used_inodes=None,
            health=VolumeHealth(abnormal=problem is not None, message=problem or _HEALTHY),
        )

    async def aclose(self) -> None:
        for task in [*self._probes.values(), *self._status_queries.values()]:
            task.cancel()
        if self._own_host is not None:
            self._own_host.close()

    # ---------------------------------------------------------------- stage parts

    def _options(self, source: Source, options: Iterable[str]) -> bool:
        """RequirePrivacy from the mount options; refuse ports other than 445."""
        if source.port is not None and source.port != SMB_PORT:
            raise FailedPrecondition(_port_message(source.port))
        privacy = self.settings.require_privacy
        for option in options:
            key, has_value, value = option.partition("=")
            key = key.strip().lower()
            if key == "requireprivacy":
                privacy = _parse_bool(value, what="mount option requirePrivacy")
            elif key == "seal" and not has_value:
                privacy = True
            elif key == "port":
                if not value.strip().isdigit():
                    raise InvalidArgument(f"mount option port: {value!r} is not a number")
                if int(value) != SMB_PORT:
                    raise FailedPrecondition(_port_message(int(value)))
            else:
                log.debug("mount option has no meaning on Windows; ignored", option=key)
        return privacy

    def _check_read_only(self, read_only: bool, volume_id: str, *, what: str) -> None:
        if not read_only:
            return
        if self.settings.read_only == "warn":
            log.warning(
                "read-only requested but not enforceable on Windows; the volume is writable "
                "unless the SMB account is read-only on the server",
                volume_id=volume_id,
            )
            return
        raise InvalidArgument(
            f"{what}: read-only access cannot be enforced on Windows nodes (a directory symlink "
            "cannot be read-only and the SMB mapping is shared by all volumes of the share); use "
            "an SMB account with read-only rights on the share and request read-write access"
        )

    async def _ensure_mapping(
        self, root: str, credentials: Credentials, host: str, privacy: bool
    ) -> None:
        state = await self._mapping_state(root, time_limit=self.settings.map_timeout)
        if state.healthy:
            if privacy and state.privacy is False:
                log.warning(
                    "the share's existing global mapping does not require privacy (encryption); "
                    "it is re-created without that gap once its last volume is unstaged",
                    share=root,
                )
            self._status[path_key(root)] = (self._clock(), None)
            return
        if state.exists:
            log.warning(
                "re-creating an unhealthy SMB global mapping",
                share=root,
                status=state.status,
                reachable=state.reachable,
            )
            await self._run(OP_REMOVE_MAPPING, {ENV_REMOTE_PATH: root}, what="unmap")
        inputs = {
            ENV_REMOTE_PATH: root,
            ENV_USER: smb_user(credentials, host),
            ENV_PASSWORD: credentials.password,
            ENV_REQUIRE_PRIVACY: "true" if privacy else "false",
        }
        try:
            await self._run(
                OP_NEW_MAPPING, inputs, what=f"mapping {root}", secrets=[credentials.password]
            )
        except AlreadyExists:
            # Someone else mapped it in between: fine if it works.
            if not (await self._mapping_state(root, time_limit=self.settings.map_timeout)).healthy:
                raise
        self._status[path_key(root)] = (self._clock(), None)
        log.info("mapped share", share=root, user=smb_user(credentials, host), privacy=privacy)

    async def _ensure_link(self, link: str, target: str, *, what: str) -> None:
        """Make ``link`` a directory symlink to ``target``, replacing only an
        empty directory or another link."""
        if await self.host.is_link(link):
            current = await self.host.read_link(link)
            if path_key(current) == path_key(target):
                return
            log.info("replacing a wrong link", link=link, was=current, target=target)
            await self.host.remove_link(link)
        elif await self.host.lexists(link):
            if not await self.host.is_dir(link):
                raise FailedPrecondition(f"{what} {link} exists and is not a directory")
            if await self.host.list_dir(link):
                raise FailedPrecondition(
                    f"{what} {link} is a non-empty directory; refusing to replace it"
                )
            await self.host.remove_empty_dir(link)
        else:
            parent = ntpath.dirname(link)
            if not await self.host.lexists(parent):
                await self.host.make_dirs(parent)
        await self.host.symlink_dir(link, target)

    # ---------------------------------------------------------------- unstage parts

    def _scan_roots(self, staging_path: str) -> list[str]:
        r"""The ``...\plugins\kubernetes.io\csi`` directories to scan."""
        roots = [ntpath.join(self.settings.kubelet_dir, "plugins", "kubernetes.io", "csi")]
        # kubelet's layout: <csi dir>\<driver>\<sha256 of the handle>\globalmount
        csi_dir = ntpath.dirname(ntpath.dirname(ntpath.dirname(staging_path)))
        if (
            ntpath.basename(staging_path).lower() == "globalmount"
            and ntpath.basename(csi_dir).lower() == "csi"
            and path_key(csi_dir) not in {path_key(r) for r in roots}
        ):
            roots.insert(0, csi_dir)
        return roots

    async def _links_into(self, root: str, *, exclude: str) -> list[str]:
        """Staging links (of any CSI driver) that point into ``root``."""
        found: list[str] = []
        skip = path_key(exclude)
        for csi_dir in self._scan_roots(exclude):
            if not await self.host.lexists(csi_dir):
                continue
            for driver in await self.host.list_dir(csi_dir):
                driver_dir = ntpath.join(csi_dir, driver)
                try:
                    volumes = await self.host.list_dir(driver_dir)
                except OSError:
                    continue  # a file, or gone meanwhile
                for volume in volumes:
                    link = ntpath.join(driver_dir, volume, "globalmount")
                    if path_key(link) == skip or not await self.host.is_link(link):
                        continue
                    try:
                        target = await self.host.read_link(link)
                    except OSError:
                        continue
                    if is_within(target, root):
                        found.append(link)
        return found

    # ---------------------------------------------------------------- stats parts

    async def _resolve(self, path: str) -> tuple[str, str | None]:
        """Follow links from ``path``: (final target, problem or None)."""
        current = path
        for _ in range(8):
            if not await self.host.is_link(current):
                return current, None
            target = normalize_link_target(await self.host.read_link(current))
            if not target.startswith("\\\\") and not await self.host.lexists(target):
                return target, f"{current} points to {target}, which does not exist"
            current = target
        return current, f"{path}: too many levels of links"

    async def _probe(self, path: str) -> tuple[DiskSpace | None, str | None]:
        """Free space through the link, bounded in time; one probe per path at
        a time (a probe stuck on a dead server is not joined by more)."""
        key = path_key(path)
        pending = self._probes.get(key)
        if pending is not None:
            return None, "the previous space query of this volume has not returned yet"
        task = asyncio.ensure_future(self.host.disk_usage(path))
        self._probes[key] = task
        task.add_done_callback(lambda _t: self._probes.pop(key, None))
        task.add_done_callback(_consume_result)
        try:
            space = await asyncio.wait_for(asyncio.shield(task), self.settings.stats_timeout)
        except TimeoutError:
            return None, f"the share did not answer within {self.settings.stats_timeout:g}s"
        except OSError as exc:
            return None, f"cannot reach the volume: {_os_text(exc)}"
        return space, None

    async def _share_problem(self, root: str, *, recheck_ok: bool = False) -> str | None:
        """What is wrong with the share's mapping (None: nothing), for stats.

        Bounded in PowerShell: a result is reused (OK for ``status_ttl``, a
        problem for ``status_retry``; ``recheck_ok`` distrusts a cached OK),
        and one lookup per share at a time serves every caller, so many
        volumes on a dead share cannot fill the PowerShell slots that stage
        and unstage need.
        """
        key = path_key(root)
        cached = self._status.get(key)
        if cached is not None:
            when, problem = cached
            ttl = self.settings.status_ttl if problem is None else self.settings.status_retry
            if self._clock() - when < ttl and not (recheck_ok and problem is None):
                return problem
        query = self._status_queries.get(key)
        if query is None:
            query = asyncio.ensure_future(self._query_status(root))
            self._status_queries[key] = query
            query.add_done_callback(lambda _q: self._status_queries.pop(key, None))
        return await asyncio.shield(query)

    async def _query_status(self, root: str) -> str | None:
        try:
            state = await self._mapping_state(root, time_limit=self.settings.status_timeout)
        except DriverError as exc:
            problem: str | None = f"status unknown ({exc.message})"
        else:
            if state.healthy:
                problem = None
            elif not state.exists:
                problem = "no mapping (stage the volume again)"
            elif state.status != "OK":
                problem = f"status {state.status}"
            else:
                problem = "status OK but the share does not answer"
        self._status[path_key(root)] = (self._clock(), problem)
        return problem

    # ---------------------------------------------------------------- helpers

    def _share_lock(self, root: str) -> asyncio.Lock:
        return self._share_locks.setdefault(path_key(root), asyncio.Lock())

    async def _mapping_state(self, root: str, *, time_limit: float) -> MappingState:
        result = await self._run(
            OP_GET_MAPPING, {ENV_REMOTE_PATH: root}, what=f"checking {root}", time_limit=time_limit
        )
        privacy = result.get("privacy")
        return MappingState(
            exists=bool(result.get("exists")),
            status=str(result.get("status") or ""),
            reachable=bool(result.get("reachable")),
            privacy=privacy if isinstance(privacy, bool) else None,
        )

    async def _run(
        self,
        op: str,
        inputs: dict[str, str],
        *,
        what: str,
        secrets: Iterable[str] = (),
        time_limit: float | None = None,
    ) -> dict[str, object]:
        return await self.powershell.run(
            op, SCRIPTS[op], env=inputs, secrets=secrets, time_limit=time_limit, what=what
        )

    @staticmethod
    async def _bounded(work: Awaitable[T], limit: float, *, what: str) -> T:
        try:
            return await asyncio.wait_for(work, limit)
        except TimeoutError:
            raise DeadlineExceeded(f"{what}: no answer within {limit:g}s") from None


def _port_message(port: int) -> str:
    return (
        f"SMB port {port}: Windows maps SMB shares (New-SmbGlobalMapping) on port {SMB_PORT} "
        "only; serve the share on 445 for Windows nodes"
    )


def _consume_result(task: asyncio.Task[DiskSpace]) -> None:
    # A probe that outlived its caller must not log "exception never retrieved".
    if not task.cancelled():
        task.exception()


def _os_text(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return f"{text}: {exc.filename}" if exc.filename else text


def _os_error(exc: OSError, *, what: str, secrets: Iterable[str] = ()) -> DriverError:
    """A domain error for a failed filesystem call (Win32 code where known)."""
    message = scrub(_os_text(exc), secrets)
    code = getattr(exc, "winerror", None)
    if isinstance(code, int):
        return map_windows_code(code, message, what=what)
    by_errno = {errno.ENOENT: 2, errno.EACCES: 5, errno.EPERM: 5}
    return map_windows_code(by_errno.get(exc.errno or 0), message, what=what, unknown="OSError")
