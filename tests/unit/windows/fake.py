r"""The Windows node platform against a stateful fake Windows host.

``FakeWindows`` stands behind both seams of ``node.windows``: it is the
``ProcessSpawner`` (it plays PowerShell: it acts on the operation named in
``CSI_OP`` and the ``CSI_*`` inputs, never on the script text, and keeps SMB
global mappings with a Status) and the ``WindowsHost`` (local directories and
directory symlinks; UNC paths resolve only through an OK mapping).  Tests
drive whole sequences and assert on the fake's state and its records.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import ntpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from driver.config import Config, parse_endpoint
from driver.credentials import Credentials
from driver.source import Source
from node.platform import StageRequest
from node.powershell import POWERSHELL_FLAGS, PowerShell
from node.windows import (
    OP_GET_MAPPING,
    OP_NEW_MAPPING,
    OP_REMOVE_MAPPING,
    SCRIPTS,
    DiskSpace,
    WindowsPlatform,
    WindowsSettings,
)

PASSWORD = "Sup3r'S\"ecr3t$`x;pw"
CREDS = Credentials(username="alice", password=PASSWORD, domain="CORP")
CONFIG = Config(endpoint=parse_endpoint("tcp://127.0.0.1:10000"), node_id="win-1")
SHARE = Source("smb", "fileserver", None, "share")
ROOT = r"\\fileserver\share"
GiB = 1 << 30
CMDLET = "New-SmbGlobalMapping"


def key(path: str) -> str:
    text = path.replace("/", "\\")
    if text.lower().startswith("\\\\?\\unc\\"):
        text = "\\\\" + text[8:]
    return text.rstrip("\\").casefold()


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "\\")


@dataclass
class FakeMapping:
    remote: str
    user: str
    privacy: bool
    status: str = "OK"


@dataclass
class Call:
    op: str
    argv: list[str]
    env: dict[str, str]


class FakeProcess:
    def __init__(self, node: FakeWindows, call: Call) -> None:
        self.node = node
        self.call = call
        self.returncode: int | None = None
        self._ended = asyncio.Event()

    def _end(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self.node.alive -= 1
            self._ended.set()

    async def communicate(self) -> tuple[bytes, bytes]:
        node = self.node
        if node.hold is not None:
            await node.hold.wait()
        if self.call.op in node.hang:
            await asyncio.Event().wait()  # until killed (cancelled by the runner's timeout)
        code, out, err = node.answer(self.call)
        self._end(code)
        return out, err

    def kill(self) -> None:
        self.node.killed.append(self.call.op)
        if self.node.slow_kill is None:
            self._end(1)
        else:
            asyncio.get_running_loop().create_task(self._end_later(self.node.slow_kill))

    async def _end_later(self, event: asyncio.Event) -> None:
        await event.wait()
        self._end(1)

    async def wait(self) -> int:
        await self._ended.wait()
        assert self.returncode is not None
        return self.returncode


@dataclass
class FakeWindows:
    """A Windows node: file servers, SMB global mappings, a local filesystem."""

    server_dirs: set[str] = field(default_factory=set)  # keys of directories on shares
    servers_down: set[str] = field(default_factory=set)
    # Server directories the mapping's account may not open (e.g. the share
    # root when it has rights on its own folders only), and ones a network
    # blip makes unreachable for now.
    denied: set[str] = field(default_factory=set)
    unreachable: set[str] = field(default_factory=set)
    accounts: dict[str, str] = field(default_factory=dict)  # user key → password
    mappings: dict[str, FakeMapping] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: {"c:"})
    links: dict[str, str] = field(default_factory=dict)  # link key → target as created
    names: dict[str, str] = field(default_factory=dict)  # key → path as created
    nt_readlink: bool = True  # readlink answers \\?\UNC\..., like os.readlink on Windows
    calls: list[Call] = field(default_factory=list)
    fs_actions: list[tuple[str, ...]] = field(default_factory=list)
    alive: int = 0
    max_alive: int = 0
    hold: asyncio.Event | None = None
    hang: set[str] = field(default_factory=set)
    slow_kill: asyncio.Event | None = None
    killed: list[str] = field(default_factory=list)
    errors: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    raw: dict[str, list[tuple[int, bytes, bytes]]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    space: DiskSpace = field(default_factory=lambda: DiskSpace(100 * GiB, 40 * GiB, 60 * GiB))
    disk_hold: asyncio.Event | None = None
    disk_calls: int = 0
    now: float = 0.0

    # -------------------------------------------------------------- set-up

    def add_share(self, root: str, *subdirs: str) -> None:
        self.server_dirs.add(key(root))
        for sub in subdirs:
            parts = sub.split("/")
            for i in range(1, len(parts) + 1):
                self.server_dirs.add(key(root + "\\" + "\\".join(parts[:i])))

    def mkdir_p(self, path: str) -> None:
        path = path.replace("/", "\\")
        if path.startswith("\\"):
            path = "C:" + path
        parts = path.split("\\")
        for i in range(1, len(parts) + 1):
            sub = "\\".join(parts[:i])
            self.dirs.add(key(sub))
            self.names.setdefault(key(sub), sub)

    def reboot(self, *, persistent: bool) -> None:
        """The node restarts: directories and links stay on disk (the links now
        dangle); SMB global mappings are gone, or, persistent, come back
        Disconnected with their stored credentials lost; no process survives."""
        for remote, mapping in list(self.mappings.items()):
            if persistent:
                mapping.status = "Disconnected"
            else:
                del self.mappings[remote]
        self.alive = 0

    def clock(self) -> float:
        return self.now

    def ops(self, op: str | None = None) -> list[str]:
        return [c.op for c in self.calls if op is None or c.op == op]

    # -------------------------------------------------------------- PowerShell

    async def spawn(self, argv: Sequence[str], *, env: Mapping[str, str]) -> FakeProcess:
        op = env.get("CSI_OP", "")
        call = Call(op, list(argv), dict(env))
        self.calls.append(call)
        # A fixed script per operation, passed as -Command after the fixed flags.
        if not argv[0].lower().endswith("powershell.exe"):
            self.violations.append(f"not PowerShell: {argv[0]}")
        if tuple(argv[1:5]) != POWERSHELL_FLAGS or argv[5] != "-Command" or len(argv) != 7:
            self.violations.append(f"unexpected flags: {argv[1:6]}")
        if op not in SCRIPTS or argv[6] != SCRIPTS[op]:
            self.violations.append(f"script of {op!r} is not its fixed text")
        self.alive += 1
        self.max_alive = max(self.max_alive, self.alive)
        return FakeProcess(self, call)

    def answer(self, call: Call) -> tuple[int, bytes, bytes]:
        if self.raw.get(call.op):
            return self.raw[call.op].pop(0)
        if self.errors.get(call.op):
            return 0, _json({"ok": False, "error": self.errors[call.op].pop(0)}), b""
        try:
            result = self._act(call.op, call.env)
        except WindowsFailure as failure:
            return 0, _json({"ok": False, "error": failure.error}), b""
        return 0, _json({"ok": True, "result": result}), b""

    def _act(self, op: str, env: Mapping[str, str]) -> dict[str, Any]:
        remote = env["CSI_REMOTE_PATH"]
        rk = key(remote)
        server = rk[2:].split("\\")[0]
        mapping = self.mappings.get(rk)
        if op == OP_GET_MAPPING:
            if mapping is None:
                return {"exists": False, "status": "", "privacy": None}
            return {"exists": True, "status": mapping.status, "privacy": mapping.privacy}
        if op == OP_REMOVE_MAPPING:
            return {"removed": self.mappings.pop(rk, None) is not None}
        assert op == OP_NEW_MAPPING, op
        user, password = env["CSI_SMB_USER"], env["CSI_SMB_PASSWORD"]
        if "\\" not in user and "@" not in user:
            raise WindowsFailure(1312, "A specified logon session does not exist.")
        if mapping is not None:
            raise WindowsFailure(85, "The local device name is already in use.")
        if server in self.servers_down:
            raise WindowsFailure(53, "The network path was not found.")
        for other in self.mappings.values():
            if key(other.remote)[2:].split("\\")[0] == server and other.user != user:
                raise WindowsFailure(
                    1219,
                    "Multiple connections to a server or shared resource by the same user, "
                    "using more than one user name, are not allowed.",
                    fqid=True,
                )
        if self.accounts.get(user.casefold()) != password:
            raise WindowsFailure(1326, "The user name or password is incorrect.")
        if rk not in self.server_dirs:
            raise WindowsFailure(67, "The network name cannot be found.")
        privacy = env["CSI_REQUIRE_PRIVACY"]
        assert privacy in ("true", "false")
        self.mappings[rk] = FakeMapping(remote, user, privacy == "true")
        return {"created": True}

    # -------------------------------------------------------------- filesystem

    def _share_ok(self, path_key: str) -> bool:
        parts = path_key[2:].split("\\")
        root = "\\\\" + "\\".join(parts[:2])
        mapping = self.mappings.get(root)
        return (
            mapping is not None
            and mapping.status == "OK"
            and parts[0] not in self.servers_down
            and path_key in self.server_dirs
            and path_key not in self.denied
            and path_key not in self.unreachable
        )

    def _resolve(self, path_key: str) -> str:
        current = path_key
        for _ in range(10):
            for link, target in self.links.items():
                if within(current, link):
                    current = key(target) + current[len(link) :]
                    break
            else:
                return current
        raise OSError(errno.ELOOP, "too many links", path_key)

    def _dir_exists(self, path_key: str) -> bool:
        if path_key.startswith("\\\\"):
            return self._share_ok(path_key)
        return path_key in self.dirs

    def _children(self, path_key: str) -> list[str]:
        entries = self.dirs | set(self.links)
        return [e for e in entries if ntpath.dirname(e) == path_key and e != path_key]

    async def lexists(self, path: str) -> bool:
        k = key(path)
        return k in self.dirs or k in self.links

    async def is_link(self, path: str) -> bool:
        return key(path) in self.links

    async def read_link(self, path: str) -> str:
        k = key(path)
        if k not in self.links:
            raise OSError(errno.EINVAL, "not a symbolic link", path)
        target = self.links[k]
        if self.nt_readlink and target.startswith("\\\\") and not target.startswith("\\\\?\\"):
            return "\\\\?\\UNC\\" + target[2:]
        return target

    async def is_dir(self, path: str) -> bool:
        return self._dir_exists(self._resolve(key(path)))

    async def check_dir(self, path: str) -> None:
        k = self._resolve(key(path))
        if not k.startswith("\\\\"):
            if k not in self.dirs:
                raise win_error(FileNotFoundError, 3, "The path is not found", path)
            return
        parts = k[2:].split("\\")
        mapping = self.mappings.get("\\\\" + "\\".join(parts[:2]))
        if mapping is None:
            raise win_error(PermissionError, 1244, "The user has not been authenticated", path)
        if parts[0] in self.servers_down or mapping.status != "OK" or k in self.unreachable:
            raise win_error(OSError, 64, "The specified network name is no longer available", path)
        if k in self.denied:
            raise win_error(PermissionError, 5, "Access is denied", path)
        if k not in self.server_dirs:
            raise win_error(FileNotFoundError, 2, "The system cannot find the file specified", path)

    async def list_dir(self, path: str) -> list[str]:
        k = key(path)
        if k not in self.dirs:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
        return [ntpath.basename(self.names.get(c, c)) for c in self._children(k)]

    async def make_dirs(self, path: str) -> None:
        self.fs_actions.append(("makedirs", path))
        self.mkdir_p(path)

    async def symlink_dir(self, link: str, target: str) -> None:
        k = key(link)
        if k in self.dirs or k in self.links:
            raise FileExistsError(errno.EEXIST, "exists", link)
        if ntpath.dirname(k) not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, "parent missing", link)
        self.fs_actions.append(("symlink", link, target))
        self.links[k] = target
        self.names[k] = link

    async def remove_link(self, path: str) -> None:
        k = key(path)
        if k not in self.links:
            raise OSError(errno.EINVAL, "not a symbolic link", path)
        self.fs_actions.append(("unlink", path))
        del self.links[k]

    async def remove_empty_dir(self, path: str) -> None:
        k = key(path)
        if k not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", path)
        if self._children(k):
            raise OSError(errno.ENOTEMPTY, "directory not empty", path)
        self.fs_actions.append(("rmdir", path))
        self.dirs.discard(k)

    async def disk_usage(self, path: str) -> DiskSpace:
        self.disk_calls += 1
        if self.disk_hold is not None:
            await self.disk_hold.wait()
        if not self._dir_exists(self._resolve(key(path))):
            raise OSError(errno.EIO, "The specified network name is no longer available", path)
        return self.space


def win_error(kind: type[OSError], code: int, message: str, path: str) -> OSError:
    """An OSError as Python raises it on Windows: with the Win32 code in ``winerror``."""
    exc = kind(errno.EIO, message, path)
    exc.winerror = code  # type: ignore[attr-defined]
    return exc


class WindowsFailure(Exception):
    def __init__(self, code: int, message: str, *, fqid: bool = False) -> None:
        super().__init__(message)
        cmdlet = "New-SmbGlobalMapping"
        self.error: dict[str, Any] = {
            "Code": None if fqid else code,
            "HResult": -2146233088,
            "NativeErrorCode": "Failed",
            "FullyQualifiedErrorId": (
                f"Windows System Error {code},{cmdlet}" if fqid else f"HRESULT 0x80131500,{cmdlet}"
            ),
            "Type": "Microsoft.Management.Infrastructure.CimException",
            "Message": message,
        }


def _json(value: dict[str, Any]) -> bytes:
    # What PowerShell 5.1 writes: a BOM, CRLF line ends.
    return b"\xef\xbb\xbf" + json.dumps(value, separators=(",", ":")).encode() + b"\r\n"


def staging_of(volume: str) -> str:
    """kubelet's staging path, as it sends it (no drive letter)."""
    digest = hashlib.sha256(volume.encode()).hexdigest()
    return rf"\var\lib\kubelet\plugins\kubernetes.io\csi\smb-nfs.csi.io\{digest}\globalmount"


def target_of(pod: str, pv: str) -> str:
    """A pod's target path, as kubelet sends it (lower-case drive)."""
    return rf"c:\var\lib\kubelet\pods\{pod}\volumes\kubernetes.io~csi\{pv}\mount"


def make_platform(node: FakeWindows, **settings: Any) -> WindowsPlatform:
    return WindowsPlatform(
        CONFIG,
        settings=WindowsSettings(**settings),
        host=node,
        spawner=node.spawn,
        clock=node.clock,
    )


def stage_request(
    platform: WindowsPlatform,
    node: FakeWindows,
    volume: str = "pvc-1",
    *,
    source: Source = SHARE,
    subdir: str | None = None,
    options: tuple[str, ...] = (),
    credentials: Credentials | None = CREDS,
    read_only: bool = False,
    precreate: bool = True,
) -> StageRequest:
    staging = platform.check_path(staging_of(volume), what="staging_target_path")
    if precreate:
        node.mkdir_p(staging)  # kubelet creates the staging directory
    return StageRequest(
        volume_id=volume,
        source=source,
        subdir=f"base/{volume}" if subdir is None else subdir,
        staging_path=staging,
        mount_options=options,
        credentials=credentials,
        read_only=read_only,
    )


def runner(node: FakeWindows, **kwargs: Any) -> PowerShell:
    return PowerShell(node.spawn, executable=r"C:\Windows\powershell.exe", base_env={}, **kwargs)
