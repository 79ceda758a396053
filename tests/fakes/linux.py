"""A fake Linux host for LinuxPlatform: a mount table and a command runner.

``FakeHost`` is a mount table (and statvfs answers per filesystem, so a bind
mount shares its source's health); ``FakeRunner`` understands the commands the
platform runs (``mount -t``, ``mount --bind``, ``mount -o remount,bind,ro``,
``umount [-l -c -i]``), changes the table like the kernel would and records
every call, including what the credentials file held while ``mount`` ran.
Directories are real (tmp_path), so mkdir/rmdir/chmod behaviour is real.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from driver.config import Config, parse_endpoint
from node.dual import HelperFinder
from node.linux import FsStats, LinuxPlatform, mountinfo
from node.linux.mountinfo import MountEntry
from node.runner import CommandResult, CommandTimeout
from node.service import NodeService
from tests.fakes.kdc import FakeKdc
from tests.secret_scan import register_secret

# Registered: the session-wide scan fails the run if it shows up in any log.
PASSWORD = register_secret(' p a,s"s`w0rd $(x) \\ ; ')
LOCAL = FsStats(4096, 1000, 500, 400, 100, 60)
SHARE = FsStats(1024, 262144, 200000, 190000, 0, 0)  # cifs: no inode counts
EXPORT = FsStats(131072, 2048, 1024, 1000, 126998, 126000)


# ---------------------------------------------------------------- fakes


@dataclass
class FsState:
    stats: FsStats
    error: int | None = None  # statvfs and lookups raise OSError(error)
    hang: threading.Event | None = None  # statvfs and lookups block until set
    lookup_error: int | None = None  # only lookups fail (a cifs share restored from a copy)


@dataclass
class FakeHost:
    """A mount table plus statvfs answers per filesystem (major:minor)."""

    entries: list[MountEntry] = field(default_factory=list)
    fs: dict[str, FsState] = field(default_factory=dict)
    statvfs_calls: int = 0
    look_calls: int = 0
    down: set[tuple[str, int]] = field(default_factory=set)  # servers refusing connections
    connects: list[tuple[str, int]] = field(default_factory=list)
    _next: int = 100

    def add(
        self,
        point: str,
        *,
        fstype: str,
        source: str,
        read_only: bool = False,
        super_options: tuple[str, ...] = ("rw",),
        stats: FsStats = SHARE,
        like: MountEntry | None = None,
    ) -> MountEntry:
        self._next += 1
        if like is None:
            dev = f"0:{self._next}"
            self.fs[dev] = FsState(stats)
            root = "/"
        else:
            dev, root = like.major_minor, like.root
            fstype, source, super_options = like.fstype, like.source, like.super_options
            read_only = read_only or like.read_only
        below = mountinfo.top(self.entries, point)
        entry = MountEntry(
            mount_id=self._next,
            parent_id=below.mount_id if below is not None else 1,
            major_minor=dev,
            root=root,
            mount_point=point,
            options=("ro" if read_only else "rw", "relatime"),
            optional_fields=(),
            fstype=fstype,
            source=source,
            super_options=super_options,
        )
        self.entries.append(entry)
        return entry

    def remove_top(self, point: str) -> bool:
        entry = mountinfo.top(self.entries, point)
        if entry is None:
            return False
        self.entries.remove(entry)
        return True

    def state(self, point: str) -> FsState:
        entry = mountinfo.top(self.entries, point)
        assert entry is not None, f"{point} is not mounted"
        return self.fs[entry.major_minor]

    def break_mount(self, point: str, err: int = errno.ESTALE) -> None:
        self.state(point).error = err

    def hang_mount(self, point: str) -> threading.Event:
        event = threading.Event()
        self.state(point).hang = event
        return event

    def release_all(self) -> None:
        for state in self.fs.values():
            if state.hang is not None:
                state.hang.set()

    def at(self, point: str) -> list[MountEntry]:
        return mountinfo.at(self.entries, point)

    # HostView
    def mounts(self) -> list[MountEntry]:
        return list(self.entries)

    def statvfs(self, path: str) -> FsStats:
        self.statvfs_calls += 1
        entry = mountinfo.top(self.entries, path)
        if entry is None:
            if not os.path.lexists(path):
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            return LOCAL
        state = self.fs[entry.major_minor]
        if state.hang is not None:
            state.hang.wait(30)  # bounded: a broken test cannot hang forever
        if state.error is not None:
            raise OSError(state.error, os.strerror(state.error), path)
        return state.stats

    def look(self, path: str) -> None:
        self.look_calls += 1
        entry = mountinfo.top(self.entries, path)
        if entry is None:
            os.stat(path)
            return
        state = self.fs[entry.major_minor]
        if state.hang is not None:
            state.hang.wait(30)  # bounded: a broken test cannot hang forever
        for err in (state.error, state.lookup_error):
            if err is not None:
                raise OSError(err, os.strerror(err), path)

    def connect(self, server: str, port: int, timeout: float) -> None:
        self.connects.append((server, port))
        if (server, port) in self.down:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


@dataclass
class Call:
    argv: tuple[str, ...]
    env: dict[str, str] | None
    stdin: bytes | None
    timeout: float
    # (file mode, dir mode, content) of the credentials file while mount ran
    credentials: tuple[int, int, str] | None = None


@dataclass
class FakeRunner:
    host: FakeHost
    calls: list[Call] = field(default_factory=list)
    mount_results: list[CommandResult] = field(default_factory=list)  # next fs mounts fail
    hang: asyncio.Event | None = None  # next fs mount times out; "exits" when set
    umount_timeouts: int = 0  # next plain umounts time out
    busy: set[str] = field(default_factory=set)  # plain umount says "target is busy"
    fail_remount_ro: bool = False
    finished: list[asyncio.Task[None]] = field(default_factory=list)
    kdc: FakeKdc | None = None  # answers kinit/kvno (Kerberos volumes)

    def commands(self, name: str) -> list[tuple[str, ...]]:
        return [c.argv for c in self.calls if c.argv[0] == name]

    def fs_mounts(self) -> list[tuple[str, ...]]:
        return [a for a in self.commands("mount") if a[1] == "-t"]

    async def run(
        self,
        argv: object,
        *,
        timeout: float,
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        args = tuple(str(a) for a in argv)  # type: ignore[attr-defined]
        call = Call(args, env, stdin, timeout)
        self.calls.append(call)
        if args[0] == "mount":
            return self._mount(args, call)
        if args[0] == "umount":
            return self._umount(args)
        if args[0] in ("kinit", "kvno") and self.kdc is not None:
            return await self.kdc.run(args, timeout=timeout, env=env)
        return CommandResult(args, 127, "", f"{args[0]}: not faked")

    def _fail(self, args: tuple[str, ...], message: str, code: int = 32) -> CommandResult:
        return CommandResult(args, code, "", message)

    def _mount(self, args: tuple[str, ...], call: Call) -> CommandResult:
        ok = CommandResult(args, 0, "", "")
        if args[1] == "--bind":
            src, dst = args[2], args[3]
            source = mountinfo.top(self.host.entries, src)
            if source is None or not os.path.isdir(dst):
                return self._fail(args, f"mount: {dst}: special device {src} does not exist.")
            self.host.add(dst, fstype="", source="", like=source)
            return ok
        if args[1:3] == ("-o", "remount,bind,ro"):
            target = args[3]
            current = mountinfo.top(self.host.entries, target)
            if current is None or self.fail_remount_ro:
                return self._fail(args, f"mount: {target}: mount point not mounted or bad option.")
            index = self.host.entries.index(current)
            self.host.entries[index] = replace(current, options=("ro", "relatime"))
            return ok
        assert args[1] == "-t", args
        fstype, device, point = args[2], args[3], args[4]
        options = args[6].split(",") if len(args) > 5 else []
        for opt in options:
            if opt.startswith("credentials="):
                path = opt.split("=", 1)[1]
                call.credentials = (
                    stat.S_IMODE(os.stat(path).st_mode),
                    stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode),
                    Path(path).read_text(),
                )
        if self.hang is not None:
            gate, self.hang = self.hang, None
            finished = asyncio.ensure_future(gate.wait())
            self.finished.append(finished)  # type: ignore[arg-type]
            raise CommandTimeout(
                "mount did not finish within 5 s and was killed; it has not exited yet",
                finished=finished,
            )
        if self.mount_results:
            result = self.mount_results.pop(0)
            return CommandResult(args, result.returncode, result.stdout, result.stderr)
        if not os.path.isdir(point):
            return self._fail(args, f"mount: {point}: mount point does not exist.")
        if fstype == "nfs":
            v3 = any(o in ("vers=3", "nfsvers=3") for o in options)
            fstype = "nfs" if v3 else "nfs4"
            stats = EXPORT
            device = device.rstrip("/") if not device.endswith(":/") else device
        else:
            stats = SHARE
        kept = tuple(o for o in options if not o.startswith("credentials="))
        self.host.add(
            point,
            fstype=fstype,
            source=device,
            read_only="ro" in options,
            super_options=("rw", *kept),
            stats=stats,
        )
        return ok

    def _umount(self, args: tuple[str, ...]) -> CommandResult:
        flags, path = args[1:-1], args[-1]
        lazy = "-l" in flags
        if not lazy and self.umount_timeouts:
            self.umount_timeouts -= 1
            raise CommandTimeout("umount did not finish within 1 s and was killed", finished=None)
        if not lazy and path in self.busy:
            return self._fail(args, f"umount: {path}: target is busy.")
        if not self.host.remove_top(path):
            return self._fail(args, f"umount: {path}: not mounted.")
        return CommandResult(args, 0, "", "")


def config(mount_timeout: float = 5.0) -> Config:
    return Config(
        endpoint=parse_endpoint("unix:///unused"),
        node_id="n1",
        mount_timeout=mount_timeout,
        krb5_uid=os.geteuid(),  # the cruid owns caches: the test's own uid can chown to it
    )


def make_platform(
    host: FakeHost,
    runner: FakeRunner,
    secrets_dir: Path,
    *,
    krb5_dir: Path | None = None,
    clock: list[float] | None = None,
) -> LinuxPlatform:
    now = clock if clock is not None else [time.time()]
    return LinuxPlatform(
        config(),
        runner=runner,
        host=host,
        secrets_dir=str(secrets_dir),
        probe_timeout=0.2,
        unmount_timeout=1.0,
        krb5_dir=str(krb5_dir if krb5_dir is not None else secrets_dir.parent / "krb5"),
        clock=lambda: now[0],
    )


def all_text(runner: FakeRunner) -> str:
    return "\n".join(" ".join(c.argv) + repr(c.env) + repr(c.stdin) for c in runner.calls)


class World:
    """A node: fake kernel (host, runner), real directories, a NodeService over them."""

    def __init__(self, root: Path, *, helpers: HelperFinder | None = None) -> None:
        self.root = root
        self.host = FakeHost()
        self.clock = [1_800_000_000.0]  # Kerberos ticket times; tests move it
        self.kdc = FakeKdc(self.clock)
        self.runner = FakeRunner(self.host, kdc=self.kdc)
        self.secrets_dir = root / "secrets"
        self.krb5_dir = root / "krb5"
        self.kubelet = root / "kubelet"
        self.kubelet.mkdir()
        self.helpers = helpers  # the node's mount helpers (None: the host's own lookup)
        self.platforms: list[LinuxPlatform] = []
        self.service = self.restart()

    def restart(self) -> NodeService:
        """A new driver process: new service and platform, same kernel."""
        platform = make_platform(
            self.host, self.runner, self.secrets_dir, krb5_dir=self.krb5_dir, clock=self.clock
        )
        self.platforms.append(platform)
        extra = {"helpers": self.helpers} if self.helpers is not None else {}
        self.service = NodeService("n1", platform, kubelet_dir=str(self.kubelet), **extra)
        return self.service

    async def aclose(self) -> None:
        """Release hung fakes, cancel what still waits on them, close the platforms
        (their ticket keepers' tasks)."""
        self.host.release_all()
        for task in self.runner.finished:
            task.cancel()
        for platform in self.platforms:
            await platform.aclose()

    def staging(self, name: str = "vol") -> str:
        csi = self.kubelet / "plugins" / "kubernetes.io" / "csi" / "smb-nfs.csi.io"
        return str(csi / name / "globalmount")

    def target(self, name: str = "pod") -> str:
        return str(self.kubelet / "pods" / name / "volumes" / "mount")


def options_of(argv: tuple[str, ...]) -> list[str]:
    return argv[argv.index("-o") + 1].split(",") if "-o" in argv else []
