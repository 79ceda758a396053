"""The Linux node platform: kernel cifs/nfs mounts and bind mounts.

State lives in the kernel's mount table (``/proc/self/mountinfo``), never in
memory, so a restarted driver keeps serving what the previous one staged and
published, and every call is idempotent by looking before acting.

Stage    ``mount -t cifs //server/share/dir <staging> -o ...`` (credentials in a
         0600 file that exists only while ``mount`` runs) or
         ``mount -t nfs server:/export/dir <staging> -o ...``.
Publish  ``mount --bind <staging> <target>`` (+ ``mount -o remount,bind,ro``).
Undo     ``umount`` bounded in time, ``umount -l`` as the last resort; then
         ``rmdir`` (never a recursive delete: it could reach through a mount).
Stats    ``statvfs`` in a daemon thread bounded in time: a dead server makes
         the volume *abnormal*, it never hangs the RPC.

Operator-facing notes (defaults, health, troubleshooting): docs/node-linux.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import posixpath
import re
import secrets
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from driver.config import Config
from driver.credentials import Credentials
from driver.errors import (
    AlreadyExists,
    DriverError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    Unimplemented,
)
from driver.log import get_logger
from driver.source import Source
from node import mountinfo
from node.mountinfo import MountEntry
from node.platform import PublishRequest, StageRequest, VolumeHealth, VolumeUsage
from node.runner import AsyncioRunner, CommandResult, CommandRunner, CommandTimeout

log = get_logger("node.linux")

T = TypeVar("T")

CAPABILITIES = frozenset(
    {
        "STAGE_UNSTAGE_VOLUME",
        "GET_VOLUME_STATS",
        "VOLUME_CONDITION",
        "VOLUME_MOUNT_GROUP",
        "SINGLE_NODE_MULTI_WRITER",
    }
)
# Credentials files live here for the duration of one ``mount``: /run is a
# tmpfs on every systemd host and in the node DaemonSet, so a password never
# touches a disk.  0700, owned by the driver (root).
SECRETS_DIR = "/run/csi-smb-nfs"
# Bound of one statvfs/chmod on a mounted share (NodeGetVolumeStats answers
# "abnormal" after it) and of the health check before reusing a mount.
PROBE_TIMEOUT = 5.0
# Upper bound of one ``umount`` before falling back to ``umount -l``.
UNMOUNT_TIMEOUT = 30.0
# At most this many probe threads may be stuck on dead servers at once.
MAX_PROBES = 64
# Mounts stacked on one path that unstage/unpublish will peel off.
_MAX_STACKED = 8
_CIFS_TYPES = frozenset({"cifs", "smb3"})
_NFS_TYPES = frozenset({"nfs", "nfs4"})
# Options that would smuggle credentials past the secret (mount.cifs matches
# option names by prefix: "user..." is the user name, "pass..." the password,
# "cred..." a credentials file), or change what kind of mount this is.
_CIFS_SECRET_PREFIXES = ("user", "pass", "cred")
_CIFS_USER_OK = frozenset({"users", "user_xattr"})
_FORBIDDEN_OPTIONS = frozenset({"remount", "bind", "rbind", "move", "make-shared"})
_MOUNT_ERROR = re.compile(r"mount error\((\d+)\)")
_SMB_DEFAULT_MODE = "0770"
_EKEYREJECTED = 129  # Linux errno (not in every platform's errno module)


# ---------------------------------------------------------------- host view


@dataclass(frozen=True, slots=True)
class FsStats:
    """The parts of statvfs(2) the node reports."""

    fragment_size: int
    blocks: int
    blocks_free: int
    blocks_available: int
    files: int
    files_free: int


class HostView(Protocol):
    """What the platform reads from the host besides running commands."""

    def mounts(self) -> list[MountEntry]:
        """The mount table (fast, never blocks on a server)."""
        ...

    def statvfs(self, path: str) -> FsStats:
        """statvfs(2); may block on a dead server: called in a probe thread."""
        ...


# Linux-only system calls, behind one platform check so that this module
# also type-checks for Windows (``mypy --platform win32``).
if sys.platform == "win32":  # type-checked only: this platform never runs there

    def _statvfs(path: str) -> FsStats:
        raise Unimplemented("statvfs is Linux only")

    def _owned_by_us(st: os.stat_result) -> bool:
        raise Unimplemented("file ownership is Linux only")

    def _chgrp(path: str, gid: int) -> None:
        raise Unimplemented("chown is Linux only")

    _O_NOFOLLOW_CLOEXEC = 0

else:

    def _statvfs(path: str) -> FsStats:
        st = os.statvfs(path)
        return FsStats(
            fragment_size=st.f_frsize or st.f_bsize,
            blocks=st.f_blocks,
            blocks_free=st.f_bfree,
            blocks_available=st.f_bavail,
            files=st.f_files,
            files_free=st.f_ffree,
        )

    def _owned_by_us(st: os.stat_result) -> bool:
        return st.st_uid == os.geteuid()

    def _chgrp(path: str, gid: int) -> None:
        os.chown(path, -1, gid)

    _O_NOFOLLOW_CLOEXEC = os.O_NOFOLLOW | os.O_CLOEXEC


class ProcHost:
    """The real host: ``/proc/self/mountinfo`` and ``statvfs(2)``."""

    def __init__(self, path: str = mountinfo.MOUNTINFO) -> None:
        self._path = path

    def mounts(self) -> list[MountEntry]:
        return mountinfo.read(self._path)

    def statvfs(self, path: str) -> FsStats:
        return _statvfs(path)


# ---------------------------------------------------------------- probes


class ProbeTimeout(Exception):
    """A probe did not answer within its bound (its thread is abandoned)."""


class ProbesExhausted(ProbeTimeout):
    """Too many earlier probes are stuck to start another one: the answer is
    unknown (not evidence that this path is broken)."""


class Prober:
    """Blocking filesystem calls with a time bound.

    Each call runs in its own daemon thread: a thread stuck on a dead server
    cannot be cancelled, only abandoned, and a daemon thread does not keep the
    process from exiting (executor threads would be joined at shutdown).  At
    most one call per key is in flight: a second caller waits for the first
    call's answer instead of starting another thread, so the number of stuck
    threads is bounded by the number of paths (and by ``limit``).
    """

    def __init__(self, limit: int = MAX_PROBES) -> None:
        self._limit = limit
        self._pending: dict[str, asyncio.Future[Any]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def call(
        self,
        key: str,
        fn: Callable[[], T],
        timeout: float,  # noqa: ASYNC109 - bounds the wait; the thread itself cannot be stopped
    ) -> T:
        fut = self._pending.get(key)
        if fut is None:
            if len(self._pending) >= self._limit:
                raise ProbesExhausted(f"{len(self._pending)} earlier probes are still stuck")
            fut = self._start(key, fn)
        try:
            result: T = await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise ProbeTimeout(f"no answer within {timeout:g} s") from None
        return result

    def _start(self, key: str, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if fut.done():
                return
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

        def work() -> None:
            try:
                value, ok = fn(), True
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                value, ok = exc, False
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, ok, value)

        def forget(done: asyncio.Future[Any]) -> None:
            if self._pending.get(key) is done:
                del self._pending[key]
            if not done.cancelled():
                done.exception()  # retrieved: an abandoned probe's error is not "lost"

        fut.add_done_callback(forget)
        self._pending[key] = fut
        threading.Thread(target=work, name=f"probe {key}", daemon=True).start()
        return fut


# ---------------------------------------------------------------- options


def _split_option(opt: str) -> tuple[str, str | None]:
    key, sep, value = opt.partition("=")
    return key.strip().lower(), (value if sep else None)


def _check_options(options: Sequence[str]) -> list[str]:
    out: list[str] = []
    for opt in options:
        opt = opt.strip()  # noqa: PLW2901 - normalising the loop's own item
        if not opt:
            continue
        if any(ord(c) < 0x20 or c == "\x7f" for c in opt) or "," in opt:
            raise InvalidArgument("mount options: control characters and ',' are not allowed")
        key, _ = _split_option(opt)
        if key in _FORBIDDEN_OPTIONS:
            raise InvalidArgument(f"mount option {key!r} is not allowed (the driver decides that)")
        out.append(opt)
    return out


def _keys(options: Sequence[str]) -> dict[str, str | None]:
    return dict(_split_option(o) for o in options)


def _port_option(options: list[str], source: Source) -> None:
    if source.port is None:
        return
    given = _keys(options).get("port")
    if given is None:
        options.append(f"port={source.port}")
    elif given.strip() != str(source.port):
        raise InvalidArgument(
            f"mount option port={given} contradicts the port {source.port} in the source"
        )


def _mount_group(group: str) -> int:
    if not group.isdigit() or not group.isascii() or int(group) > 0xFFFFFFFE:
        raise InvalidArgument(
            f"volume_mount_group {group!r}: expected a numeric group ID (the pod's fsGroup)"
        )
    return int(group)


def smb_options(request: StageRequest) -> list[str]:
    """cifs mount options for a stage request, without the credentials file."""
    options = _check_options(request.mount_options)
    for opt in options:
        key, _ = _split_option(opt)
        if key.startswith(_CIFS_SECRET_PREFIXES) and key not in _CIFS_USER_OK:
            raise InvalidArgument(
                f"mount option {key!r} is not allowed: user name and password belong in the "
                "node-stage secret (keys username, password, domain)"
            )
    keys = _keys(options)
    _port_option(options, request.source)
    # Each volume gets its own TCP connection and SMB session: a session that
    # died with its server (or got stuck) cannot take other volumes down with
    # it, and a re-stage really reconnects instead of joining a dead session.
    if "nosharesock" not in keys:
        options.append("nosharesock")
    if request.mount_group:
        gid = _mount_group(request.mount_group)
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
    options = _check_options(request.mount_options)
    if request.mount_group:
        _mount_group(request.mount_group)
    keys = _keys(options)
    _port_option(options, request.source)
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

    def matches(self, entry: MountEntry) -> bool:
        """True when ``entry`` is this share directory, however it was mounted."""
        if self.protocol == "smb":
            return entry.fstype in _CIFS_TYPES and _norm_smb(entry.source) == _norm_smb(self.device)
        return entry.fstype in _NFS_TYPES and _norm_nfs(entry.source) == _norm_nfs(self.device)


def mount_spec(request: StageRequest) -> MountSpec:
    if request.source.protocol == "smb":
        return MountSpec(
            "smb",
            "cifs",
            smb_device(request.source, request.subdir),
            tuple(smb_options(request)),
            request.read_only,
        )
    if request.source.protocol == "nfs":
        return MountSpec(
            "nfs",
            "nfs",
            nfs_device(request.source, request.subdir),
            tuple(nfs_options(request)),
            request.read_only,
        )
    raise InvalidArgument(f"protocol {request.source.protocol!r} is not smb or nfs")


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


# ---------------------------------------------------------------- errors


def _errno_name(code: int | None) -> str:
    return errno.errorcode.get(code or 0, str(code))


def _cifs_error(errnum: int, message: str) -> DriverError:
    if errnum in (errno.EACCES, errno.EPERM, _EKEYREJECTED):
        return PermissionDenied(message + " (check the node-stage secret)")
    if errnum == errno.ENOENT:
        return NotFound(message)
    if errnum in (
        errno.ECONNREFUSED,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
        errno.ENOTCONN,
        errno.ECONNRESET,
    ):
        return Unavailable(message)
    return Internal(message)


def _scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return " ".join(text.split())[-600:]


# ---------------------------------------------------------------- platform


class LinuxPlatform:
    name = "linux"
    capabilities = CAPABILITIES

    def __init__(
        self,
        config: Config,
        *,
        runner: CommandRunner | None = None,
        host: HostView | None = None,
        secrets_dir: str = SECRETS_DIR,
        probe_timeout: float | None = None,
        unmount_timeout: float | None = None,
    ) -> None:
        self._runner: CommandRunner = runner if runner is not None else AsyncioRunner()
        self._host: HostView = host if host is not None else ProcHost()
        self._secrets_dir = secrets_dir
        self._mount_timeout = config.mount_timeout
        self._unmount_timeout = (
            unmount_timeout
            if unmount_timeout is not None
            else min(config.mount_timeout, UNMOUNT_TIMEOUT)
        )
        self._probe_timeout = probe_timeout if probe_timeout is not None else config.health_timeout
        self._probes = Prober()

    # -- paths -----------------------------------------------------------

    def check_path(self, path: str, *, what: str) -> str:
        if "\x00" in path:
            raise InvalidArgument(f"{what}: NUL is not allowed")
        if not path.startswith("/"):
            raise InvalidArgument(f"{what}: must be an absolute path")
        if ".." in path.split("/"):
            raise InvalidArgument(f"{what}: '..' is not allowed")
        norm = posixpath.normpath("/" + path.lstrip("/"))
        if norm == "/":
            raise InvalidArgument(f"{what}: must not be /")
        if len(norm.encode("utf-8", "surrogateescape")) >= 4096:
            raise InvalidArgument(f"{what}: longer than 4095 bytes")
        return norm

    @staticmethod
    def _real(path: str) -> str:
        """Resolve symlinks in the parent only: the mount table shows real
        paths, and resolving the last component would stat a possibly dead
        mount."""
        parent, leaf = posixpath.split(path)
        return posixpath.join(os.path.realpath(parent), leaf)

    @staticmethod
    def _prepare_dir(path: str, *, what: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            try:
                os.makedirs(path, mode=0o750, exist_ok=True)
            except OSError as exc:
                raise Internal(f"{what} {path}: cannot create it: {exc.strerror}") from None
            return
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f"{what} {path} exists and is not a directory")

    @staticmethod
    def _remove_dir(path: str, *, what: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            log.warning("left alone: not a directory", path=path, what=what)
            return
        try:
            os.rmdir(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                # Data written below an unmounted path: never delete through.
                log.warning("left alone: directory is not empty", path=path, what=what)
                return
            raise Internal(f"{what} {path}: cannot remove it: {exc.strerror}") from None

    # -- probes ------------------------------------------------------------

    def _probe_key(self, kind: str, path: str) -> str:
        """One probe in flight per path *and mount*: a probe stuck on a mount
        that was since detached (``umount -l``) and mounted again must not
        answer for the new mount at the same path (e.g. a re-stage that got a
        fresh SMB session while the old one still hangs)."""
        top = mountinfo.top(self._host.mounts(), path)
        return f"{kind}:{path}@{top.mount_id if top is not None else '-'}"

    async def _statvfs(self, path: str) -> FsStats:
        return await self._probes.call(
            self._probe_key("statvfs", path),
            lambda: self._host.statvfs(path),
            self._probe_timeout,
        )

    async def _problem(self, path: str) -> str | None:
        """None when the mount at ``path`` answers; otherwise what is wrong."""
        try:
            await self._statvfs(path)
        except ProbesExhausted as exc:
            # Other servers' dead mounts hold every probe slot: no evidence
            # against this mount, so do not tear it down.
            log.warning("cannot check the mount", path=path, reason=str(exc))
            return None
        except ProbeTimeout as exc:
            return f"statfs: {exc} (server down or unreachable?)"
        except OSError as exc:
            return f"statfs: {exc.strerror} ({_errno_name(exc.errno)})"
        return None

    # -- commands ----------------------------------------------------------

    async def _run(
        self,
        argv: list[str],
        *,
        timeout: float,  # noqa: ASYNC109 - passed to the runner, which kills the command
    ) -> CommandResult:
        log.debug("running", argv=argv)
        return await self._runner.run(argv, timeout=timeout)

    async def _unmount(self, path: str, *, what: str, broken: bool = False) -> None:
        """Unmount everything stacked on ``path``; never hangs for long.

        A mount that answers gets a plain ``umount`` (bounded); a dead one,
        or one whose ``umount`` fails or times out, is detached with
        ``umount -l``.  ``-c`` (no canonicalisation) keeps umount from
        stat()ing a dead mount; our paths are already canonical.  No ``-f``:
        NFS shares one superblock between mounts of the same export, and a
        forced unmount would abort other volumes' requests too.
        """
        for _ in range(_MAX_STACKED):
            if mountinfo.top(self._host.mounts(), path) is None:
                return
            # ``broken``: the caller just found the top mount dead; don't wait again.
            problem = "found broken" if broken else await self._problem(path)
            broken = False
            if problem is None:
                try:
                    result = await self._run(["umount", "-c", path], timeout=self._unmount_timeout)
                except CommandTimeout as exc:
                    # Not handed over: the lazy unmount below finishes the job.
                    log.warning("umount timed out; detaching lazily", path=path, error=exc.message)
                else:
                    if result.ok:
                        continue
                    log.warning(
                        "umount failed; detaching lazily",
                        path=path,
                        error=_scrub(result.stderr, None),
                    )
            else:
                log.warning("mount is not healthy; detaching lazily", path=path, problem=problem)
            result = await self._run(
                ["umount", "-l", "-c", "-i", path], timeout=self._unmount_timeout
            )
            if not result.ok and mountinfo.top(self._host.mounts(), path) is not None:
                raise Internal(f"{what} {path}: umount -l failed: {_scrub(result.stderr, None)}")
        if mountinfo.top(self._host.mounts(), path) is not None:
            raise Internal(f"{what} {path}: still mounted after {_MAX_STACKED} unmounts")

    @contextlib.contextmanager
    def _credentials_file(self, creds: Credentials) -> Iterator[str]:
        """A 0600 file in a 0700 directory, removed when the block ends."""
        text = credentials_text(creds)
        directory = self._secrets_dir
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            st = os.lstat(directory)
            if not stat.S_ISDIR(st.st_mode) or not _owned_by_us(st):
                raise Internal(f"{directory} is not a directory owned by the driver")
            if stat.S_IMODE(st.st_mode) != 0o700:
                os.chmod(directory, 0o700)
            path = os.path.join(directory, f"cifs-{secrets.token_hex(8)}.cred")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW_CLOEXEC, 0o600)
        except OSError as exc:
            raise Internal(
                f"cannot write a credentials file in {directory}: {exc.strerror}"
            ) from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def _mount(self, spec: MountSpec, staging: str, creds: Credentials | None) -> None:
        options = list(spec.options)
        argv_base = ["mount", "-t", spec.fstype, spec.device, staging]
        secret = creds.password if creds is not None else None
        with contextlib.ExitStack() as stack:
            if spec.protocol == "smb" and creds is not None:
                options.append(f"credentials={stack.enter_context(self._credentials_file(creds))}")
            argv = argv_base + (["-o", ",".join(options)] if options else [])
            log.info("mounting", device=spec.device, path=staging, options=options)
            result = await self._run(argv, timeout=self._mount_timeout)
        if result.ok:
            return
        message = (
            f"mount -t {spec.fstype} {spec.device} {staging} failed (exit {result.returncode}): "
            f"{_scrub(result.stderr or result.stdout, secret)}"
        )
        found = _MOUNT_ERROR.search(result.stderr) if spec.protocol == "smb" else None
        if found:
            raise _cifs_error(int(found.group(1)), message)
        raise Internal(message)

    # -- NodePlatform ----------------------------------------------------------

    async def stage(self, request: StageRequest) -> None:
        spec = mount_spec(request)  # validates options before any side effect
        if spec.protocol == "smb" and request.credentials is not None:
            credentials_text(request.credentials)  # same: refuse unusable secrets early
        staging = self._real(request.staging_path)
        current = mountinfo.top(self._host.mounts(), staging)
        if current is not None:
            if not spec.matches(current):
                raise FailedPrecondition(
                    f"staging_target_path {staging} already has another mount "
                    f"({current.fstype} {current.source}); unstage that volume first"
                )
            problem = await self._problem(staging)
            if problem is None:
                if current.read_only != spec.read_only:
                    raise AlreadyExists(
                        f"volume is staged at {staging} "
                        f"{'read-only' if current.read_only else 'read-write'}, "
                        "which is incompatible with the requested access mode"
                    )
                log.info("already staged", path=staging, device=spec.device)
                return
            log.warning("staged mount is broken; mounting again", path=staging, problem=problem)
            await self._unmount(staging, what="staging_target_path", broken=True)
        self._prepare_dir(staging, what="staging_target_path")
        await self._mount(spec, staging, request.credentials)
        if spec.protocol == "nfs":
            await self._after_nfs_mount(request, staging)
        log.info("staged", path=staging, device=spec.device)

    async def _after_nfs_mount(self, request: StageRequest, staging: str) -> None:
        if request.mount_permissions is not None and not request.read_only:
            mode = request.mount_permissions
            try:
                await self._probes.call(
                    self._probe_key("chmod", staging),
                    lambda: os.chmod(staging, mode),
                    self._probe_timeout,
                )
            except (OSError, ProbeTimeout) as exc:
                # Leave nothing half done: a retry mounts and chmods again.
                await self._unmount(staging, what="staging_target_path")
                raise Internal(f"chmod {mode:04o} {staging} failed: {exc}") from None
        if request.mount_group and not request.read_only:
            gid = _mount_group(request.mount_group)
            try:
                await self._probes.call(
                    self._probe_key("group", staging),
                    lambda: _share_with_group(staging, gid),
                    self._probe_timeout,
                )
            except (OSError, ProbeTimeout) as exc:
                # root_squash servers refuse it: their ownership rules apply.
                log.warning("could not give the volume to the mount group", gid=gid, error=str(exc))

    async def unstage(self, volume_id: str, staging_path: str) -> None:
        staging = self._real(staging_path)
        await self._unmount(staging, what="staging_target_path")
        self._remove_dir(staging, what="staging_target_path")
        log.info("unstaged", path=staging)

    async def publish(self, request: PublishRequest) -> None:
        staging = self._real(request.staging_path)
        target = self._real(request.target_path)
        mounts = self._host.mounts()
        source = mountinfo.top(mounts, staging)
        if source is None:
            raise FailedPrecondition(
                f"staging_target_path {staging} is not mounted: NodeStageVolume first"
            )
        current = mountinfo.top(mounts, target)
        if current is not None:
            if not current.same_filesystem_view(source):
                raise FailedPrecondition(
                    f"target_path {target} already has another mount "
                    f"({current.fstype} {current.source})"
                )
            if current.read_only != request.read_only:
                raise AlreadyExists(
                    f"volume is published at {target} "
                    f"{'read-only' if current.read_only else 'read-write'}, "
                    "which contradicts the requested readonly flag"
                )
            log.info("already published", path=target)
            return
        problem = await self._problem(staging)
        if problem is not None:
            raise Unavailable(f"the staged mount at {staging} does not answer: {problem}")
        self._prepare_dir(target, what="target_path")
        result = await self._run(["mount", "--bind", staging, target], timeout=self._mount_timeout)
        if not result.ok:
            raise Internal(
                f"bind mount of {staging} at {target} failed: {_scrub(result.stderr, None)}"
            )
        if request.read_only:
            result = await self._run(
                ["mount", "-o", "remount,bind,ro", target], timeout=self._mount_timeout
            )
            if not result.ok:
                # Never leave a writable mount behind a read-only request.
                await self._unmount(target, what="target_path")
                raise Internal(
                    f"read-only remount of {target} failed: {_scrub(result.stderr, None)}"
                )
        log.info("published", path=target, read_only=request.read_only)

    async def unpublish(self, volume_id: str, target_path: str) -> None:
        target = self._real(target_path)
        await self._unmount(target, what="target_path")
        self._remove_dir(target, what="target_path")
        log.info("unpublished", path=target)

    async def usage(self, volume_id: str, path: str) -> VolumeUsage:
        path = self._real(path)
        entry = mountinfo.top(self._host.mounts(), path)
        try:
            st = await self._statvfs(path)
        except FileNotFoundError:
            raise NotFound(f"volume_path {path} does not exist") from None
        except ProbeTimeout as exc:
            return _unknown(f"the share did not answer statfs: {exc} (server down or unreachable?)")
        except OSError as exc:
            return _unknown(
                f"the mount is not usable: {exc.strerror} ({_errno_name(exc.errno)}); "
                "the server may have restarted or be unreachable"
            )
        if entry is None:
            return _unknown(f"{path} is not a mount point: the volume is not mounted here")
        total = st.blocks * st.fragment_size
        available = st.blocks_available * st.fragment_size
        used = max(0, (st.blocks - st.blocks_free) * st.fragment_size)
        has_inodes = st.files > 0  # cifs reports 0: no inode counts
        return VolumeUsage(
            total_bytes=total,
            available_bytes=available,
            used_bytes=used,
            total_inodes=st.files if has_inodes else None,
            free_inodes=st.files_free if has_inodes else None,
            used_inodes=max(0, st.files - st.files_free) if has_inodes else None,
            health=VolumeHealth(abnormal=False, message="mounted and answering"),
        )

    async def aclose(self) -> None:
        # Stuck probe threads are daemons and killed mounts are reaped by the
        # runner; neither may delay shutdown.
        return None


def _share_with_group(path: str, gid: int) -> None:
    """Give the volume root to ``gid``: group rwx and setgid, so new files
    and directories inherit the group (like kubelet's fsGroup handling, but
    not recursive: existing files keep their owners)."""
    st = os.stat(path)
    if st.st_gid != gid:
        _chgrp(path, gid)
        st = os.stat(path)  # chown may clear the setgid bit
    wanted = stat.S_IMODE(st.st_mode) | stat.S_ISGID | stat.S_IRWXG
    if stat.S_IMODE(st.st_mode) != wanted:
        os.chmod(path, wanted)


def _unknown(message: str) -> VolumeUsage:
    return VolumeUsage(
        total_bytes=0,
        available_bytes=0,
        used_bytes=0,
        total_inodes=None,
        free_inodes=None,
        used_inodes=None,
        health=VolumeHealth(abnormal=True, message=message),
    )
