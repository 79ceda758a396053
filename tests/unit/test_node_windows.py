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
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from driver.config import Config, parse_endpoint
from driver.credentials import Credentials
from driver.csi import csi_pb2
from driver.errors import (
    DeadlineExceeded,
    DriverError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from driver.source import Source
from node.platform import PublishRequest, StageRequest
from node.powershell import (
    POWERSHELL_FLAGS,
    PowerShell,
    map_windows_error,
    parse_output,
    windows_error_code,
)
from node.service import NodeService
from node.windows import (
    OP_GET_MAPPING,
    OP_NEW_MAPPING,
    OP_REMOVE_MAPPING,
    SCRIPTS,
    DiskSpace,
    RealWindowsHost,
    WindowsPlatform,
    WindowsSettings,
    is_within,
    normalize_link_target,
    normalize_path,
    smb_user,
    unc_host,
    unc_root,
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
                return {"exists": False, "status": "", "reachable": False, "privacy": None}
            return {
                "exists": True,
                "status": mapping.status,
                "reachable": self._share_ok(rk),
                "privacy": mapping.privacy,
            }
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


@pytest.fixture
def node() -> FakeWindows:
    fake = FakeWindows()
    fake.add_share(ROOT, "base/pvc-1", "base/pvc-2", "base/pvc-3")
    fake.add_share(r"\\fileserver\other", "x")
    fake.accounts["corp\\alice"] = PASSWORD
    fake.accounts["corp\\bob"] = "bobs-password"
    return fake


def make_platform(node: FakeWindows, **settings: Any) -> WindowsPlatform:
    return WindowsPlatform(
        CONFIG,
        settings=WindowsSettings(**settings),
        host=node,
        spawner=node.spawn,
        clock=node.clock,
    )


@pytest.fixture
def platform(node: FakeWindows) -> WindowsPlatform:
    return make_platform(node)


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


# ------------------------------------------------------------------ paths


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (r"\var\lib\kubelet\plugins\x\globalmount", r"C:\var\lib\kubelet\plugins\x\globalmount"),
        ("/var/lib/kubelet/pods/p/mount", r"C:\var\lib\kubelet\pods\p\mount"),
        (r"c:\var\lib\kubelet\pods\p\volumes\kubernetes.io~csi\pv\mount", None),
        ("D:\\k\\\\x\\", r"D:\k\x"),
    ],
)
def test_paths_are_normalised(given: str, expected: str | None) -> None:
    want = expected or "C" + given[1:]
    assert normalize_path(given, what="p") == want


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("", "required"),
        (r"\var\lib\..\kubelet", "'..'"),
        (r"C:\var\.\x", "'.'"),
        (r"C:\var\a<b", "not allowed"),
        (r"C:\var\a>b", "not allowed"),
        ('C:\\var\\a"b', "not allowed"),
        (r"C:\var\a|b", "not allowed"),
        (r"C:\var\a?b", "not allowed"),
        (r"C:\var\a*b", "not allowed"),
        (r"C:\var\a:b", "':' is only allowed"),
        ("C:\\var\\a\x00b", "control characters"),
        (r"\\server\share\x", "not a UNC"),
        (r"\\?\C:\var\x", "not a UNC"),
        (r"var\lib", "absolute"),
        (r"C:var", "absolute"),
        ("1:\\x", "absolute"),
        ("C:\\", "drive root"),
        (r"C:\var\con", "reserved device name"),
        ("C:\\" + "\\".join(["a" * 200] * 2), "MAX_PATH"),
    ],
)
def test_bad_paths_are_rejected(platform: WindowsPlatform, given: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match="staging") as info:
        platform.check_path(given, what="staging_target_path")
    assert complaint in info.value.message


def test_path_length_limit_is_max_path() -> None:
    ok = "C:\\" + "a" * 200 + "\\" + "b" * 55  # 259 characters: the longest Windows path
    assert normalize_path(ok, what="p") == ok
    with pytest.raises(InvalidArgument):
        normalize_path(ok + "b", what="p")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (r"\\?\UNC\fileserver\share\base", r"\\fileserver\share\base"),
        (r"\??\UNC\fileserver\share\base", r"\\fileserver\share\base"),
        (r"UNC\fileserver\share\base", r"\\fileserver\share\base"),
        ("\\\\?\\unc\\fileserver\\share\\", r"\\fileserver\share"),
        ("\\\\fileserver\\share\\base\\\\", r"\\fileserver\share\base"),
        (r"\\?\C:\var\lib\x", r"C:\var\lib\x"),
        (r"\??\C:\var\lib\x", r"C:\var\lib\x"),
        ("C:/var/lib/x", r"C:\var\lib\x"),
        ("C:\\", "C:\\"),
    ],
)
def test_link_targets_are_normalised(target: str, expected: str) -> None:
    assert normalize_link_target(target) == expected


def test_share_roots_and_hosts() -> None:
    assert unc_root(r"\\?\UNC\FileServer\Share\a\b") == r"\\FileServer\Share"
    assert unc_root(r"\\fileserver") is None
    assert unc_root(r"C:\x") is None
    assert is_within(r"\\?\UNC\FILESERVER\share\base", r"\\fileserver\SHARE")
    assert not is_within(r"\\fileserver\share2\x", r"\\fileserver\share")
    assert unc_host("fd00::1") == "fd00--1.ipv6-literal.net"
    assert unc_host("fe80::1%4") == "fe80--1s4.ipv6-literal.net"
    assert unc_host("10.0.0.5") == "10.0.0.5"


def test_user_names_carry_a_domain() -> None:
    assert smb_user(CREDS, "fileserver") == "CORP\\alice"
    assert smb_user(Credentials("alice", "pw"), "fileserver") == "fileserver\\alice"
    assert smb_user(Credentials("alice@corp.example", "pw"), "fs") == "alice@corp.example"


def test_capabilities(platform: WindowsPlatform) -> None:
    assert platform.capabilities == {
        "STAGE_UNSTAGE_VOLUME",
        "GET_VOLUME_STATS",
        "VOLUME_CONDITION",
        "SINGLE_NODE_MULTI_WRITER",
    }
    assert platform.name == "windows"


# ------------------------------------------------------------------ stage / unstage


async def test_two_volumes_share_one_mapping_until_the_last_unstage(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    first = stage_request(platform, node, "pvc-1")
    second = stage_request(platform, node, "pvc-2")
    await platform.stage(first)
    await platform.stage(second)
    assert node.ops(OP_NEW_MAPPING) == [OP_NEW_MAPPING]  # one mapping for the share
    assert list(node.mappings) == [key(ROOT)]
    mapping = node.mappings[key(ROOT)]
    assert (mapping.remote, mapping.user, mapping.privacy) == (ROOT, "CORP\\alice", True)
    # The pre-created staging directories were replaced by links to the subdirectories.
    assert node.links[key(first.staging_path)] == ROOT + r"\base\pvc-1"
    assert node.links[key(second.staging_path)] == ROOT + r"\base\pvc-2"
    assert await node.is_dir(first.staging_path)
    assert ("rmdir", first.staging_path) in node.fs_actions

    await platform.unstage("pvc-1", first.staging_path)
    assert key(first.staging_path) not in node.links
    assert key(ROOT) in node.mappings  # pvc-2 still uses it
    assert node.ops(OP_REMOVE_MAPPING) == []

    await platform.unstage("pvc-2", second.staging_path)
    assert node.links == {}
    assert node.mappings == {}
    assert node.ops(OP_REMOVE_MAPPING) == [OP_REMOVE_MAPPING]
    # Nothing but links was ever removed, and nothing on the share.
    removed = [a for a in node.fs_actions if a[0] in ("unlink", "rmdir")]
    assert all(a[0] == "unlink" for a in removed[2:])
    assert key(ROOT + r"\base\pvc-1") in node.server_dirs
    assert node.violations == []


async def test_stage_is_idempotent(platform: WindowsPlatform, node: FakeWindows) -> None:
    request = stage_request(platform, node)
    await platform.stage(request)
    actions = list(node.fs_actions)
    await platform.stage(request)
    assert node.fs_actions == actions  # the link (read back as \\?\UNC\...) is recognised
    assert node.ops() == [OP_GET_MAPPING, OP_NEW_MAPPING, OP_GET_MAPPING]


async def test_stage_of_the_share_root(platform: WindowsPlatform, node: FakeWindows) -> None:
    request = stage_request(platform, node, "root-vol", subdir="")
    await platform.stage(request)
    assert node.links[key(request.staging_path)] == ROOT


@pytest.mark.parametrize("status", ["Disconnected", "Unavailable", "Reconnecting"])
async def test_an_unhealthy_mapping_is_recreated(
    platform: WindowsPlatform, node: FakeWindows, status: str
) -> None:
    await platform.stage(stage_request(platform, node, "pvc-1"))
    node.mappings[key(ROOT)].status = status
    await platform.stage(stage_request(platform, node, "pvc-2"))
    assert node.ops() == [
        OP_GET_MAPPING,
        OP_NEW_MAPPING,
        OP_GET_MAPPING,
        OP_REMOVE_MAPPING,
        OP_NEW_MAPPING,
    ]
    assert node.mappings[key(ROOT)].status == "OK"
    assert await node.is_dir(platform.check_path(staging_of("pvc-1"), what="s"))


async def test_a_mapping_whose_share_does_not_answer_is_recreated(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    node.mappings[key(ROOT)] = FakeMapping(ROOT, "CORP\\alice", True)
    node.server_dirs.discard(key(ROOT))  # Test-Path fails ...
    node.errors[OP_REMOVE_MAPPING] = []

    async def restore() -> None:  # ... until the mapping is made again
        node.server_dirs.add(key(ROOT))

    request = stage_request(platform, node)
    state = await platform.mappings.state(ROOT, time_limit=5)
    assert state.exists
    assert state.status == "OK"
    assert not state.reachable
    await restore()
    node.mappings[key(ROOT)].status = "OK"
    node.servers_down.add("fileserver")
    state = await platform.mappings.state(ROOT, time_limit=5)
    assert not state.healthy
    node.servers_down.clear()
    node.calls.clear()
    node.server_dirs.discard(key(ROOT))
    with pytest.raises(FailedPrecondition, match="67"):  # re-created: the share is really gone
        await platform.stage(request)
    assert node.ops() == [OP_GET_MAPPING, OP_REMOVE_MAPPING, OP_NEW_MAPPING]


async def test_a_dangling_staging_link_is_repaired(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    request = stage_request(platform, node)
    await platform.stage(request)
    node.mappings.clear()  # a reboot: the mapping is gone, the link dangles
    assert not await node.is_dir(request.staging_path)
    usage = await platform.usage("pvc-1", request.staging_path)
    assert usage.health.abnormal
    await platform.stage(request)  # kubelet stages again
    assert await node.is_dir(request.staging_path)
    assert node.ops(OP_NEW_MAPPING) == [OP_NEW_MAPPING, OP_NEW_MAPPING]
    assert not (await platform.usage("pvc-1", request.staging_path)).health.abnormal


async def test_a_wrong_staging_link_is_replaced(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    request = stage_request(platform, node, precreate=False)
    node.mkdir_p(ntpath.dirname(request.staging_path))
    node.links[key(request.staging_path)] = r"\\oldserver\gone\pvc-1"
    await platform.stage(request)
    assert node.links[key(request.staging_path)] == ROOT + r"\base\pvc-1"
    assert ("unlink", request.staging_path) in node.fs_actions


async def test_missing_staging_parent_is_created(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    request = stage_request(platform, node, precreate=False)
    await platform.stage(request)
    assert ("makedirs", ntpath.dirname(request.staging_path)) in node.fs_actions
    assert key(request.staging_path) in node.links


async def test_a_non_empty_staging_directory_is_never_replaced(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    request = stage_request(platform, node)
    node.mkdir_p(request.staging_path + r"\data")
    with pytest.raises(FailedPrecondition, match="non-empty"):
        await platform.stage(request)
    assert key(request.staging_path + r"\data") in node.dirs
    assert not [a for a in node.fs_actions if a[0] in ("rmdir", "unlink")]


async def test_a_missing_volume_directory_is_not_found(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    request = stage_request(platform, node, "pvc-9")
    with pytest.raises(NotFound, match=r"pvc-9"):
        await platform.stage(request)
    assert key(request.staging_path) in node.dirs  # kubelet's directory left as it was


async def test_unstage_keeps_a_mapping_other_drivers_links_use(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    request = stage_request(platform, node)
    await platform.stage(request)
    # A volume of the same share staged in kubelet's older layout (csi\pv\<pv>),
    # its link written by another tool in the UNC\ form, other case.
    legacy = r"C:\var\lib\kubelet\plugins\kubernetes.io\csi\pv\old-pv\globalmount"
    node.mkdir_p(ntpath.dirname(legacy))
    node.links[key(legacy)] = r"UNC\FILESERVER\Share\legacy"
    node.names[key(legacy)] = legacy
    await platform.unstage("pvc-1", request.staging_path)
    assert key(ROOT) in node.mappings
    assert node.ops(OP_REMOVE_MAPPING) == []
    del node.links[key(legacy)]
    await platform.stage(request)
    await platform.unstage("pvc-1", request.staging_path)
    assert node.mappings == {}


async def test_links_into_another_share_do_not_count(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    await platform.stage(stage_request(platform, node, "pvc-1"))
    other = stage_request(
        platform, node, "o-1", source=Source("smb", "fileserver", None, "other"), subdir="x"
    )
    await platform.stage(other)
    assert set(node.mappings) == {key(ROOT), key(r"\\fileserver\other")}
    await platform.unstage("o-1", other.staging_path)
    assert set(node.mappings) == {key(ROOT)}


async def test_staging_dir_under_a_custom_kubelet_root_is_scanned(node: FakeWindows) -> None:
    platform = make_platform(node, kubelet_dir=r"C:\var\lib\kubelet")
    base = r"D:\k\plugins\kubernetes.io\csi\smb-nfs.csi.io"
    first, second = base + r"\aaa\globalmount", base + r"\bbb\globalmount"
    for path in (first, second):
        node.mkdir_p(path)
    for path, volume in ((first, "pvc-1"), (second, "pvc-2")):
        request = stage_request(platform, node, volume, precreate=False)
        await platform.stage(
            StageRequest(
                volume_id=volume,
                source=SHARE,
                subdir=request.subdir,
                staging_path=path,
                credentials=CREDS,
            )
        )
    await platform.unstage("pvc-1", first)
    assert key(ROOT) in node.mappings  # found the D:\ link through the staging path
    await platform.unstage("pvc-2", second)
    assert node.mappings == {}


async def test_failed_unmapping_keeps_the_link_for_the_retry(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    request = stage_request(platform, node)
    await platform.stage(request)
    node.errors[OP_REMOVE_MAPPING] = [WindowsFailure(5, "Access is denied.").error]
    with pytest.raises(PermissionDenied, match="Windows error 5"):
        await platform.unstage("pvc-1", request.staging_path)
    assert key(request.staging_path) in node.links
    await platform.unstage("pvc-1", request.staging_path)
    assert node.links == {}
    assert node.mappings == {}


async def test_unstage_leaves_what_is_not_a_link(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    staging = platform.check_path(staging_of("pvc-1"), what="s")
    await platform.unstage("pvc-1", staging)  # missing: success
    node.mkdir_p(staging)
    await platform.unstage("pvc-1", staging)  # a plain directory: left alone
    assert key(staging) in node.dirs
    assert node.fs_actions == []
    assert node.calls == []


async def test_concurrent_stages_on_one_share_map_once(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    requests = [stage_request(platform, node, f"pvc-{i}") for i in (1, 2, 3)]
    await asyncio.gather(*(platform.stage(r) for r in requests))
    assert node.ops(OP_NEW_MAPPING) == [OP_NEW_MAPPING]
    await asyncio.gather(*(platform.unstage(r.volume_id, r.staging_path) for r in requests))
    assert node.mappings == {}
    assert node.links == {}
    assert node.ops(OP_REMOVE_MAPPING) == [OP_REMOVE_MAPPING]


# ------------------------------------------------------------------ options and policy


async def test_nfs_is_a_failed_precondition(platform: WindowsPlatform, node: FakeWindows) -> None:
    request = stage_request(
        platform, node, source=Source("nfs", "nfsserver", None, "/export"), credentials=None
    )
    with pytest.raises(FailedPrecondition, match="NFS volumes are not supported on Windows"):
        await platform.stage(request)
    assert node.calls == []
    assert node.fs_actions == []


@pytest.mark.parametrize(
    ("source", "options"),
    [
        (Source("smb", "fileserver", 4450, "share"), ()),
        (SHARE, ("port=139",)),
    ],
)
async def test_smb_ports_other_than_445_are_refused(
    platform: WindowsPlatform, node: FakeWindows, source: Source, options: tuple[str, ...]
) -> None:
    with pytest.raises(FailedPrecondition, match="only"):
        await platform.stage(stage_request(platform, node, source=source, options=options))
    assert node.calls == []


async def test_port_445_and_linux_options_are_fine(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    options = ("port=445", "vers=3.1.1", "dir_mode=0777", "nosharesock")
    await platform.stage(
        stage_request(platform, node, source=Source("smb", "fileserver", 445, "share"))
    )
    await platform.stage(stage_request(platform, node, "pvc-2", options=options))
    assert len(node.links) == 2


@pytest.mark.parametrize(
    ("default", "options", "expected"),
    [
        (True, (), "true"),
        (True, ("requirePrivacy=false",), "false"),
        (True, ("RequirePrivacy=0",), "false"),
        (False, (), "false"),
        (False, ("seal",), "true"),
        (False, ("requireprivacy=true",), "true"),
    ],
)
async def test_require_privacy(
    node: FakeWindows, default: bool, options: tuple[str, ...], expected: str
) -> None:
    platform = make_platform(node, require_privacy=default)
    await platform.stage(stage_request(platform, node, options=options))
    (call,) = [c for c in node.calls if c.op == OP_NEW_MAPPING]
    assert call.env["CSI_REQUIRE_PRIVACY"] == expected


async def test_require_privacy_must_be_a_boolean(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    with pytest.raises(InvalidArgument, match="requirePrivacy"):
        await platform.stage(stage_request(platform, node, options=("requirePrivacy=maybe",)))


@pytest.mark.parametrize(
    ("credentials", "user"),
    [
        (Credentials("alice", PASSWORD, "CORP"), "CORP\\alice"),
        (Credentials("alice", PASSWORD), "fileserver\\alice"),
        (Credentials("alice@corp.example", PASSWORD), "alice@corp.example"),
    ],
)
async def test_user_name_sent_to_windows(
    platform: WindowsPlatform, node: FakeWindows, credentials: Credentials, user: str
) -> None:
    node.accounts[user.casefold()] = PASSWORD
    await platform.stage(stage_request(platform, node, credentials=credentials))
    assert node.mappings[key(ROOT)].user == user


async def test_read_only_is_refused_by_default(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    with pytest.raises(InvalidArgument, match="read-only access cannot be enforced"):
        await platform.stage(stage_request(platform, node, read_only=True))
    staging = platform.check_path(staging_of("pvc-1"), what="s")
    await platform.stage(stage_request(platform, node))
    target = platform.check_path(target_of("pod-1", "pv-1"), what="t")
    node.mkdir_p(target)
    with pytest.raises(InvalidArgument, match="read-only"):
        await platform.publish(PublishRequest("pvc-1", staging, target, read_only=True))
    assert key(target) in node.dirs
    assert key(target) not in node.links


async def test_read_only_warn_mode_accepts(node: FakeWindows) -> None:
    platform = make_platform(node, read_only="warn")
    with structlog.testing.capture_logs() as logs:
        await platform.stage(stage_request(platform, node, read_only=True))
    assert any("not enforceable" in entry["event"] for entry in logs)
    assert len(node.links) == 1


async def test_privacy_gap_of_an_existing_mapping_is_logged(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    node.mappings[key(ROOT)] = FakeMapping(ROOT, "CORP\\alice", privacy=False)
    with structlog.testing.capture_logs() as logs:
        await platform.stage(stage_request(platform, node))
    assert any("does not require privacy" in entry["event"] for entry in logs)
    assert node.ops(OP_NEW_MAPPING) == []


# ------------------------------------------------------------------ errors and secrets


async def test_error_1219_is_a_failed_precondition(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    bobs = Credentials("bob", "bobs-password", "CORP")
    other = stage_request(
        platform,
        node,
        "o-1",
        source=Source("smb", "fileserver", None, "other"),
        subdir="x",
        credentials=bobs,
    )
    await platform.stage(other)
    with pytest.raises(FailedPrecondition) as info:
        await platform.stage(stage_request(platform, node))
    assert "Windows error 1219" in info.value.message
    assert "same user" in info.value.message


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        ({"Code": 1326, "Message": "The user name or password is wrong."}, PermissionDenied, 1326),
        ({"HResult": 0x80070056 - (1 << 32), "Message": "bad password"}, PermissionDenied, 86),
        ({"FullyQualifiedErrorId": f"Windows System Error 1312,{CMDLET}"}, PermissionDenied, 1312),
        ({"Code": 1219, "Message": "Multiple connections"}, FailedPrecondition, 1219),
        ({"Code": 53, "Message": "The network path was not found."}, Unavailable, 53),
        ({"Code": 67, "Message": "The network name cannot be found."}, FailedPrecondition, 67),
        ({"Code": 64, "Message": "gone"}, Unavailable, 64),
        ({"Code": 1311, "Message": "no logon servers"}, Unavailable, 1311),
        ({"Code": 5, "Message": "Access is denied."}, PermissionDenied, 5),
        ({"NativeErrorCode": "1909", "Message": "locked"}, PermissionDenied, 1909),
    ],
)  # fmt: skip
async def test_windows_errors_are_mapped(
    platform: WindowsPlatform,
    node: FakeWindows,
    error: dict[str, Any],
    kind: type[DriverError],
    code: int,
) -> None:
    assert windows_error_code(error) == code
    node.errors[OP_NEW_MAPPING] = [error]
    with pytest.raises(kind) as info:
        await platform.stage(stage_request(platform, node))
    assert f"Windows error {code}" in info.value.message
    assert type(info.value) is kind


async def test_wrong_password_and_down_server(platform: WindowsPlatform, node: FakeWindows) -> None:
    wrong = Credentials("alice", "not-it", "CORP")
    with pytest.raises(PermissionDenied, match="1326"):
        await platform.stage(stage_request(platform, node, credentials=wrong))
    node.servers_down.add("fileserver")
    with pytest.raises(Unavailable, match="53"):
        await platform.stage(stage_request(platform, node))


def test_unknown_errors_are_internal_with_their_code() -> None:
    error = map_windows_error({"Code": 4242, "Message": "odd"}, what="map")
    assert isinstance(error, Internal)
    assert error.message == "map: Windows error 4242: odd"
    error = map_windows_error({"Type": "System.Exception"}, what="map")
    assert error.message == "map: System.Exception: no message"


async def test_the_password_never_leaks(platform: WindowsPlatform, node: FakeWindows) -> None:
    # A (hypothetical) error message and stderr that echo the password.
    node.errors[OP_NEW_MAPPING] = [
        {"Code": 1326, "Message": f"logon failure for password {PASSWORD}"},
        {"Code": 9999, "Message": f"strange {PASSWORD}"},
    ]
    node.raw[OP_NEW_MAPPING] = []
    messages: list[str] = []
    with structlog.testing.capture_logs() as logs:
        for _ in range(2):
            with pytest.raises(DriverError) as info:
                await platform.stage(stage_request(platform, node))
            messages.append(info.value.message)
        node.raw[OP_NEW_MAPPING] = [(1, b"", f"At line:3 char:1 {PASSWORD}\r\n".encode())]
        with pytest.raises(Internal) as info:
            await platform.stage(stage_request(platform, node))
        messages.append(info.value.message)
        await platform.stage(stage_request(platform, node))
        await platform.unstage("pvc-1", platform.check_path(staging_of("pvc-1"), what="s"))
    assert all("***" in m for m in messages), messages
    assert not [m for m in messages if PASSWORD in m]
    assert PASSWORD not in repr(logs)
    assert PASSWORD not in repr(platform)
    assert PASSWORD not in repr(CREDS)
    for script in SCRIPTS.values():
        assert PASSWORD not in script
    for call in node.calls:
        assert PASSWORD not in " ".join(call.argv)
        secret_env = {k for k, v in call.env.items() if PASSWORD in v}
        assert secret_env == ({"CSI_SMB_PASSWORD"} if call.op == OP_NEW_MAPPING else set())
    assert node.ops(OP_NEW_MAPPING) == [OP_NEW_MAPPING] * 4
    assert node.violations == []


# ------------------------------------------------------------------ the PowerShell runner


def runner(node: FakeWindows, **kwargs: Any) -> PowerShell:
    return PowerShell(node.spawn, executable=r"C:\Windows\powershell.exe", base_env={}, **kwargs)


async def wait_for(condition: Any) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never became true")


async def test_at_most_three_powershell_processes(node: FakeWindows) -> None:
    ps = runner(node)
    node.hold = asyncio.Event()
    runs = [
        asyncio.ensure_future(
            ps.run(OP_GET_MAPPING, SCRIPTS[OP_GET_MAPPING], env={"CSI_REMOTE_PATH": ROOT})
        )
        for _ in range(10)
    ]
    await wait_for(lambda: node.alive == 3)
    for _ in range(20):
        await asyncio.sleep(0)
    assert node.alive == 3
    assert len(node.calls) == 3
    node.hold.set()
    results = await asyncio.gather(*runs)
    assert all(r["exists"] is False for r in results)
    assert node.max_alive == 3
    assert node.alive == 0
    assert len(node.calls) == 10


async def test_stages_of_many_shares_stay_within_the_bound(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    requests = []
    for i in range(8):
        node.add_share(rf"\\fileserver\s{i}", "v")
        requests.append(
            stage_request(
                platform,
                node,
                f"v{i}",
                source=Source("smb", "fileserver", None, f"s{i}"),
                subdir="v",
            )
        )
    node.hold = asyncio.Event()
    staging = asyncio.gather(*(platform.stage(r) for r in requests))
    await wait_for(lambda: node.alive == 3)
    node.hold.set()
    await staging
    assert node.max_alive == 3
    assert len(node.mappings) == 8
    assert len(node.links) == 8


async def test_a_timed_out_powershell_is_killed(node: FakeWindows) -> None:
    ps = runner(node, timeout=0.02)
    node.hang.add(OP_GET_MAPPING)
    with pytest.raises(DeadlineExceeded, match="killed"):
        await ps.run(OP_GET_MAPPING, SCRIPTS[OP_GET_MAPPING], env={"CSI_REMOTE_PATH": ROOT})
    assert node.killed == [OP_GET_MAPPING]
    assert node.alive == 0


async def test_the_slot_is_held_until_the_killed_process_ends(node: FakeWindows) -> None:
    ps = runner(node, max_concurrent=1)
    node.hang.add(OP_GET_MAPPING)
    node.slow_kill = asyncio.Event()
    env = {"CSI_REMOTE_PATH": ROOT}
    stuck = asyncio.ensure_future(
        ps.run(OP_GET_MAPPING, SCRIPTS[OP_GET_MAPPING], env=env, time_limit=0.01)
    )
    queued = asyncio.ensure_future(ps.run(OP_REMOVE_MAPPING, SCRIPTS[OP_REMOVE_MAPPING], env=env))
    await wait_for(lambda: node.killed)
    for _ in range(20):
        await asyncio.sleep(0)
    assert node.ops() == [OP_GET_MAPPING]  # the killed process has not ended yet
    node.slow_kill.set()
    with pytest.raises(DeadlineExceeded):
        await stuck
    assert (await queued) == {"removed": False}
    assert node.max_alive == 1


async def test_a_cancelled_caller_kills_its_powershell(node: FakeWindows) -> None:
    ps = runner(node)
    node.hang.add(OP_GET_MAPPING)
    task = asyncio.ensure_future(
        ps.run(OP_GET_MAPPING, SCRIPTS[OP_GET_MAPPING], env={"CSI_REMOTE_PATH": ROOT})
    )
    await wait_for(lambda: node.alive == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: node.alive == 0)
    assert node.killed == [OP_GET_MAPPING]


async def test_stage_timeout_is_deadline_exceeded(node: FakeWindows) -> None:
    platform = make_platform(node, map_timeout=0.02)
    node.hang.add(OP_NEW_MAPPING)
    with pytest.raises(DeadlineExceeded):
        await platform.stage(stage_request(platform, node))
    assert node.killed == [OP_NEW_MAPPING]


@pytest.mark.parametrize(
    ("returncode", "stdout", "stderr", "kind", "text"),
    [
        (0xC0000142, b"", b"", Unavailable, "0xC0000142"),
        (1, b"", b"The term 'New-SmbGlobalMapping' is not recognized", Internal, "not recognized"),
        (0, b"WARNING: something\r\n", b"", Internal, "WARNING"),
        (0, b"{not json\r\n", b"", Internal, "without an answer"),
    ],
)
async def test_answers_without_json(
    node: FakeWindows, returncode: int, stdout: bytes, stderr: bytes, kind: type, text: str
) -> None:
    node.raw[OP_GET_MAPPING] = [(returncode, stdout, stderr)]
    with pytest.raises(kind, match=text):
        await runner(node).run(
            OP_GET_MAPPING, SCRIPTS[OP_GET_MAPPING], env={"CSI_REMOTE_PATH": ROOT}
        )


def test_output_parsing_takes_the_last_json_line() -> None:
    out = '\ufeffnoise\r\n{"ok":true,"result":{"a":1}}\r\n\r\n'
    assert parse_output(out) == {"ok": True, "result": {"a": 1}}
    assert parse_output("[1,2]\n") is None


def test_environment_inputs(node: FakeWindows) -> None:
    ps = PowerShell(
        node.spawn, base_env={"PATH": "C:\\Windows", "CSI_SMB_PASSWORD": "stale", "csi_x": "y"}
    )
    env = ps.environment(OP_GET_MAPPING, {"CSI_REMOTE_PATH": ROOT})
    assert env == {"PATH": "C:\\Windows", "CSI_REMOTE_PATH": ROOT, "CSI_OP": OP_GET_MAPPING}
    with pytest.raises(ValueError, match="CSI_"):
        ps.environment(OP_GET_MAPPING, {"REMOTE": ROOT})
    with pytest.raises(InvalidArgument, match="NUL"):
        ps.environment(OP_GET_MAPPING, {"CSI_REMOTE_PATH": "a\x00b"})


async def test_missing_powershell_is_a_failed_precondition() -> None:
    async def absent(argv: Sequence[str], *, env: Mapping[str, str]) -> Any:
        raise FileNotFoundError(2, "not found", argv[0])

    ps = PowerShell(absent, executable="powershell.exe", base_env={})
    with pytest.raises(FailedPrecondition, match=r"powershell\.exe not found"):
        await ps.run(OP_GET_MAPPING, SCRIPTS[OP_GET_MAPPING], env={"CSI_REMOTE_PATH": ROOT})


async def test_the_real_spawner_passes_inputs_in_the_environment(tmp_path: Path) -> None:
    """The real asyncio subprocess path, with a stand-in executable that answers
    like our scripts (and ignores the PowerShell flags and script)."""
    fake_powershell = tmp_path / "powershell.exe"
    fake_powershell.write_text(
        "#!/bin/sh\n"
        'if [ "$CSI_OP" = hang ]; then exec sleep 30; fi\n'
        'printf \'noise\\r\\n{"ok":true,"result":{"op":"%s","remote":"%s","args":%d}}\\r\\n\' '
        '"$CSI_OP" "$CSI_REMOTE_PATH" "$#"\n'
    )
    fake_powershell.chmod(0o755)
    ps = PowerShell(executable=str(fake_powershell), base_env={"PATH": "/usr/bin:/bin"})
    result = await ps.run("probe", "$result = 1", env={"CSI_REMOTE_PATH": "srv/share"})
    assert result == {"op": "probe", "remote": "srv/share", "args": 6}
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DeadlineExceeded):
        await ps.run("hang", "$result = 1", time_limit=0.2)
    assert loop.time() - started < 5  # killed, not waited for


# ------------------------------------------------------------------ publish / unpublish


async def test_publish_and_unpublish(platform: WindowsPlatform, node: FakeWindows) -> None:
    stage = stage_request(platform, node)
    await platform.stage(stage)
    target = platform.check_path(target_of("pod-1", "pv-1"), what="target_path")
    node.mkdir_p(target)  # kubelet pre-creates the target directory
    request = PublishRequest("pvc-1", stage.staging_path, target)
    await platform.publish(request)
    assert node.links[key(target)] == stage.staging_path
    assert await node.is_dir(target)  # target → staging → share
    await platform.publish(request)  # idempotent
    assert [a for a in node.fs_actions if a[0] == "symlink"][-1][1] == target
    await platform.unpublish("pvc-1", target)
    assert key(target) not in node.links
    assert key(stage.staging_path) in node.links  # the staging link is untouched
    assert key(ROOT + r"\base\pvc-1") in node.server_dirs
    await platform.unpublish("pvc-1", target)  # missing: success


async def test_publish_needs_a_staged_volume(platform: WindowsPlatform, node: FakeWindows) -> None:
    staging = platform.check_path(staging_of("pvc-1"), what="s")
    target = platform.check_path(target_of("pod-1", "pv-1"), what="t")
    with pytest.raises(FailedPrecondition, match="stage first"):
        await platform.publish(PublishRequest("pvc-1", staging, target))


async def test_unpublish_never_deletes_data(platform: WindowsPlatform, node: FakeWindows) -> None:
    target = platform.check_path(target_of("pod-1", "pv-1"), what="t")
    node.mkdir_p(target + r"\written-by-the-pod")
    await platform.unpublish("pvc-1", target)
    assert key(target + r"\written-by-the-pod") in node.dirs
    empty = platform.check_path(target_of("pod-2", "pv-1"), what="t")
    node.mkdir_p(empty)
    await platform.unpublish("pvc-1", empty)  # an empty leftover directory is removed
    assert key(empty) not in node.dirs


# ------------------------------------------------------------------ stats


async def test_usage_of_a_healthy_volume(platform: WindowsPlatform, node: FakeWindows) -> None:
    stage = stage_request(platform, node)
    await platform.stage(stage)
    calls = len(node.calls)
    usage = await platform.usage("pvc-1", stage.staging_path)
    assert (usage.total_bytes, usage.available_bytes, usage.used_bytes) == (
        100 * GiB,
        40 * GiB,
        40 * GiB,
    )
    assert usage.total_inodes is None
    assert usage.free_inodes is None
    assert usage.used_inodes is None
    assert not usage.health.abnormal
    assert len(node.calls) == calls  # no PowerShell: the mapping was seen OK just now
    node.now += 61
    assert not (await platform.usage("pvc-1", stage.staging_path)).health.abnormal
    assert node.ops()[calls:] == [OP_GET_MAPPING]  # looked again after the TTL
    await platform.usage("pvc-1", stage.staging_path)
    assert len(node.calls) == calls + 1


async def test_usage_through_a_published_target(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    stage = stage_request(platform, node)
    await platform.stage(stage)
    target = platform.check_path(target_of("pod-1", "pv-1"), what="t")
    await platform.publish(PublishRequest("pvc-1", stage.staging_path, target))
    usage = await platform.usage("pvc-1", target)
    assert usage.total_bytes == 100 * GiB
    assert not usage.health.abnormal
    node.mappings[key(ROOT)].status = "Disconnected"
    usage = await platform.usage("pvc-1", target)
    assert usage.health.abnormal
    assert "Disconnected" in usage.health.message
    assert usage.total_bytes == 0


async def test_usage_when_the_staging_link_is_gone(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    stage = stage_request(platform, node)
    await platform.stage(stage)
    target = platform.check_path(target_of("pod-1", "pv-1"), what="t")
    await platform.publish(PublishRequest("pvc-1", stage.staging_path, target))
    del node.links[key(stage.staging_path)]
    usage = await platform.usage("pvc-1", target)
    assert usage.health.abnormal
    assert "does not exist" in usage.health.message


async def test_usage_when_the_mapping_is_gone(platform: WindowsPlatform, node: FakeWindows) -> None:
    stage = stage_request(platform, node)
    await platform.stage(stage)
    node.mappings.clear()
    usage = await platform.usage("pvc-1", stage.staging_path)
    assert usage.health.abnormal
    assert "cannot reach the volume" in usage.health.message
    assert "no mapping" in usage.health.message


async def test_usage_is_bounded_in_time(node: FakeWindows) -> None:
    platform = make_platform(node, stats_timeout=0.02)
    stage = stage_request(platform, node)
    await platform.stage(stage)
    node.disk_hold = asyncio.Event()
    usage = await platform.usage("pvc-1", stage.staging_path)
    assert usage.health.abnormal
    assert "did not answer within" in usage.health.message
    # The stuck probe is not joined by another one.
    usage = await platform.usage("pvc-1", stage.staging_path)
    assert usage.health.abnormal
    assert "not returned yet" in usage.health.message
    assert node.disk_calls == 1
    node.disk_hold.set()
    await wait_for(lambda: not platform._probes)
    assert not (await platform.usage("pvc-1", stage.staging_path)).health.abnormal
    await platform.aclose()


async def test_a_dead_share_costs_one_status_lookup_at_a_time(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    requests = [stage_request(platform, node, f"pvc-{i}") for i in (1, 2, 3)]
    for request in requests:
        await platform.stage(request)
    node.servers_down.add("fileserver")
    calls = len(node.calls)
    node.hold = asyncio.Event()
    checks = asyncio.gather(*(platform.usage(r.volume_id, r.staging_path) for r in requests * 3))
    await wait_for(lambda: len(node.calls) > calls)
    node.hold.set()
    usages = await checks
    assert all(u.health.abnormal for u in usages)
    assert all("does not answer" in u.health.message for u in usages)
    assert node.ops()[calls:] == [OP_GET_MAPPING]  # one lookup served all nine
    await platform.usage("pvc-1", requests[0].staging_path)
    assert len(node.calls) == calls + 1  # the problem is remembered for a while ...
    node.now += 16
    await platform.usage("pvc-1", requests[0].staging_path)
    assert len(node.calls) == calls + 2  # ... and looked up again after status_retry


async def test_usage_of_a_missing_path(platform: WindowsPlatform) -> None:
    with pytest.raises(NotFound):
        await platform.usage("pvc-1", platform.check_path(staging_of("nope"), what="p"))


# ------------------------------------------------------------------ the Node service


def node_capability() -> csi_pb2.VolumeCapability:
    am = csi_pb2.VolumeCapability.AccessMode
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(mount_flags=["dir_mode=0777"]),
        access_mode=am(mode=am.MULTI_NODE_MULTI_WRITER),
    )


async def test_node_service_end_to_end(platform: WindowsPlatform, node: FakeWindows) -> None:
    service = NodeService("win-1", platform)
    ctx: Any = None
    volume = "pvc-1"
    staging = staging_of(volume)
    target = target_of("0c2f-pod", "pv-1")
    node.mkdir_p(staging)
    node.mkdir_p(target)
    context = {"source": "//fileserver/share/base", "subDir": "pvc-1"}
    secrets = {"username": "alice", "password": PASSWORD, "domain": "CORP"}

    caps = await service.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest(), ctx)
    names = {csi_pb2.NodeServiceCapability.RPC.Type.Name(c.rpc.type) for c in caps.capabilities}
    assert names == set(platform.capabilities)

    await service.NodeStageVolume(
        csi_pb2.NodeStageVolumeRequest(
            volume_id=volume,
            staging_target_path=staging,
            volume_capability=node_capability(),
            volume_context=context,
            secrets=secrets,
        ),
        ctx,
    )
    await service.NodePublishVolume(
        csi_pb2.NodePublishVolumeRequest(
            volume_id=volume,
            staging_target_path=staging,
            target_path=target,
            volume_capability=node_capability(),
            volume_context=context,
        ),
        ctx,
    )
    assert node.links[key(target)] == "C:" + staging  # the normalised staging path
    assert node.links[key("C:" + staging)] == ROOT + r"\base\pvc-1"

    stats = await service.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume, volume_path=target), ctx
    )
    assert [(u.unit, u.total, u.available, u.used) for u in stats.usage] == [
        (csi_pb2.VolumeUsage.Unit.BYTES, 100 * GiB, 40 * GiB, 40 * GiB)
    ]
    assert not stats.volume_condition.abnormal

    with pytest.raises(InvalidArgument, match="read-only"):
        await service.NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest(
                volume_id=volume,
                staging_target_path=staging,
                target_path=target_of("ro-pod", "pv-1"),
                volume_capability=node_capability(),
                readonly=True,
            ),
            ctx,
        )
    with pytest.raises(InvalidArgument, match=r"'\.\.'"):
        await service.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume, target_path=target + r"\..\.."),
            ctx,
        )

    await service.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume, target_path=target), ctx
    )
    await service.NodeUnstageVolume(
        csi_pb2.NodeUnstageVolumeRequest(volume_id=volume, staging_target_path=staging), ctx
    )
    assert node.links == {}
    assert node.mappings == {}
    assert node.violations == []

    with pytest.raises(FailedPrecondition, match="NFS"):
        await service.NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                volume_id="nfs-1",
                staging_target_path=staging_of("nfs-1"),
                volume_capability=node_capability(),
                volume_context={"source": "nfsserver:/export", "subDir": "a"},
            ),
            ctx,
        )


# ------------------------------------------------------------------ the real host (this OS)


async def test_real_host_link_operations(tmp_path: Path) -> None:
    host = RealWindowsHost()
    try:
        target = tmp_path / "volume"
        target.mkdir()
        (target / "data").write_text("keep me")
        link = str(tmp_path / "globalmount")
        await host.symlink_dir(link, str(target))
        assert await host.is_link(link)
        assert await host.lexists(link)
        assert await host.is_dir(link)
        assert await host.read_link(link) == str(target)
        assert await host.list_dir(link) == ["data"]
        with pytest.raises(OSError):
            await host.remove_empty_dir(link)  # a link is never removed as a directory
        with pytest.raises(OSError):
            await host.remove_link(str(target))  # a directory is never removed as a link
        with pytest.raises(OSError):
            await host.remove_empty_dir(str(target))  # never recursive
        assert (await host.disk_usage(link)).total > 0
        await host.remove_link(link)
        assert not await host.lexists(link)
        assert (target / "data").read_text() == "keep me"
        await host.make_dirs(str(tmp_path / "a" / "b"))
        await host.remove_empty_dir(str(tmp_path / "a" / "b"))
    finally:
        host.close()


def test_the_real_platform_builds_from_config() -> None:
    platform = WindowsPlatform(CONFIG)
    assert platform.settings.map_timeout == CONFIG.mount_timeout
    assert platform.settings.require_privacy is True
    assert platform.settings.read_only == "refuse"
    assert platform.powershell.max_concurrent == 3
    assert isinstance(platform.host, RealWindowsHost)
    assert (
        platform.powershell.argv("x")[0]
        .lower()
        .endswith("\\system32\\windowspowershell\\v1.0\\powershell.exe")
    )
    asyncio.run(platform.aclose())


# ------------------------------------------------------------------ serving on Windows


async def test_serve_falls_back_to_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows event loops have no add_signal_handler: serve() installs plain
    signal handlers that wake the loop, and still stops gracefully."""
    import driver.server as server_module

    events: list[str] = []

    class StubServer:
        def __init__(self, config: Config, plugins: Any) -> None:
            pass

        async def start(self) -> None:
            events.append("start")

        async def stop(self) -> None:
            events.append("stop")

    def no_loop_signals(*args: Any) -> None:
        raise NotImplementedError

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(server_module, "DriverServer", StubServer)
    monkeypatch.setattr(loop, "add_signal_handler", no_loop_signals)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serving = asyncio.ensure_future(server_module.serve(CONFIG, []))
        await wait_for(lambda: events == ["start"])
        assert signal.getsignal(signal.SIGTERM) is not saved[signal.SIGTERM]
        signal.raise_signal(signal.SIGTERM)
        await asyncio.wait_for(serving, 5)
        assert events == ["start", "stop"]
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
