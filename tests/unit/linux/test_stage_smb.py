"""LinuxPlatform: path checks, capabilities, and staging SMB shares (kernel cifs)."""

from __future__ import annotations

import asyncio

import pytest

from driver.credentials import Credentials
from driver.errors import (
    AlreadyExists,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from driver.source import parse_source
from node.linux import CAPABILITIES, nfs_device, smb_device
from node.runner import CommandResult, CommandTimeout
from tests.fakes.linux import PASSWORD, all_text, options_of
from tests.unit.linux.support import Node, nfs_request, smb_request

# ---------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/var/lib/kubelet/x", "/var/lib/kubelet/x"),
        ("/var/lib/kubelet/x/", "/var/lib/kubelet/x"),
        ("//var//lib/./x", "/var/lib/x"),
        ("/with space/and\ttab", "/with space/and\ttab"),
    ],
)
def test_check_path_normalises(node: Node, path: str, expected: str) -> None:
    assert node.platform.check_path(path, what="target_path") == expected


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("relative/x", "absolute"),
        ("", "absolute"),
        ("/a/../etc", "'..'"),
        ("/a/..", "'..'"),
        ("/a\x00b", "NUL"),
        ("/", "must not be /"),
        ("/" + "x" * 5000, "longer"),
    ],
)
def test_check_path_rejects(node: Node, path: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match="target_path") as info:
        node.platform.check_path(path, what="target_path")
    assert reason in info.value.message


def test_capabilities() -> None:
    assert {
        "STAGE_UNSTAGE_VOLUME",
        "GET_VOLUME_STATS",
        "VOLUME_CONDITION",
        "VOLUME_MOUNT_GROUP",
        "SINGLE_NODE_MULTI_WRITER",
    } == CAPABILITIES


def test_devices() -> None:
    assert smb_device(parse_source("//srv:4450/share"), "a/b") == "//srv/share/a/b"
    assert smb_device(parse_source("//srv/share"), "") == "//srv/share"
    assert nfs_device(parse_source("srv:/export/x"), "v") == "srv:/export/x/v"
    assert nfs_device(parse_source("srv:/"), "v") == "srv:/v"
    assert nfs_device(parse_source("srv:/"), "") == "srv:/"
    assert nfs_device(parse_source("nfs://[fd00::1]:2050/e"), "v") == "[fd00::1]:/e/v"


# ---------------------------------------------------------------- SMB stage


async def test_smb_stage_mounts_with_credentials_file(node: Node) -> None:
    staging = node.root / "kubelet" / "staging"
    staging.mkdir()
    await node.platform.stage(smb_request(staging))

    (argv,) = node.runner.fs_mounts()
    assert argv[:5] == ("mount", "-t", "cifs", "//srv/share/base/pvc-1", str(staging))
    opts = options_of(argv)
    assert opts[:-1] == ["nosharesock"]
    assert opts[-1].startswith(f"credentials={node.secrets_dir}/")
    (call,) = [c for c in node.runner.calls if c.credentials]
    assert call.credentials is not None
    file_mode, dir_mode, content = call.credentials
    assert (file_mode, dir_mode) == (0o600, 0o700)
    assert content == f"username=alice\npassword={PASSWORD}\ndomain=CORP\n"
    # The secret is nowhere but in that file, and the file is gone.
    assert PASSWORD not in all_text(node.runner)
    assert "p a,s" not in all_text(node.runner)
    assert node.secrets_left() == []
    (entry,) = node.host.at(str(staging))
    assert (entry.fstype, entry.source) == ("cifs", "//srv/share/base/pvc-1")


async def test_smb_stage_is_idempotent_and_survives_restart(node: Node) -> None:
    staging = node.root / "kubelet" / "staging"
    staging.mkdir()
    await node.platform.stage(smb_request(staging))
    await node.platform.stage(smb_request(staging))
    await node.new_platform().stage(smb_request(staging))
    assert len(node.runner.fs_mounts()) == 1
    assert len(node.host.at(str(staging))) == 1


async def test_stage_creates_missing_staging_dir(node: Node) -> None:
    staging = node.root / "kubelet" / "new" / "globalmount"
    await node.platform.stage(nfs_request(staging))
    assert staging.is_dir()
    assert node.host.at(str(staging))


@pytest.mark.parametrize(
    ("options", "port", "expected"),
    [
        ((), None, ["nosharesock"]),
        (("vers=3.1.1",), None, ["vers=3.1.1", "nosharesock"]),
        (
            ("vers=3.0", "nosharesock", "user_xattr"),
            None,
            ["vers=3.0", "nosharesock", "user_xattr"],
        ),
        ((), 4450, ["port=4450", "nosharesock"]),
        (("port=4450",), 4450, ["port=4450", "nosharesock"]),
        (("cache=none", "actimeo=30"), None, ["cache=none", "actimeo=30", "nosharesock"]),
    ],
)
async def test_smb_options(
    node: Node, options: tuple[str, ...], port: int | None, expected: list[str]
) -> None:
    staging = node.root / "kubelet" / "s"
    source = parse_source(f"//srv{':' + str(port) if port else ''}/share")
    await node.platform.stage(smb_request(staging, source=source, mount_options=options))
    (argv,) = node.runner.fs_mounts()
    assert options_of(argv)[:-1] == expected


@pytest.mark.parametrize(
    ("group", "options", "expected"),
    [
        ("1000", (), ["nosharesock", "gid=1000", "file_mode=0770", "dir_mode=0770"]),
        (
            "1000",
            ("file_mode=0640",),
            ["file_mode=0640", "nosharesock", "gid=1000", "dir_mode=0770"],
        ),
        ("1000", ("gid=5",), ["gid=5", "nosharesock"]),
        ("", (), ["nosharesock"]),
    ],
)
async def test_smb_mount_group(
    node: Node, group: str, options: tuple[str, ...], expected: list[str]
) -> None:
    staging = node.root / "kubelet" / "s"
    await node.platform.stage(smb_request(staging, mount_group=group, mount_options=options))
    (argv,) = node.runner.fs_mounts()
    assert options_of(argv)[:-1] == expected


async def test_smb_read_only_stage(node: Node) -> None:
    staging = node.root / "kubelet" / "s"
    await node.platform.stage(smb_request(staging, read_only=True))
    (argv,) = node.runner.fs_mounts()
    assert "ro" in options_of(argv)
    assert node.host.at(str(staging))[0].read_only
    # The same volume asked for read-write now: incompatible with what is staged.
    with pytest.raises(AlreadyExists, match="read-only"):
        await node.platform.stage(smb_request(staging))


@pytest.mark.parametrize(
    "option",
    [
        "username=bob",
        "user=bob",
        "USER=bob",
        "password=x",
        "pass=x",
        "password2=x",
        "credentials=/etc/creds",
        "cred=/etc/creds",
        "bind",
        "remount",
        "a\nb",
    ],
)
async def test_refused_mount_options(node: Node, option: str) -> None:
    staging = node.root / "kubelet" / "s"
    with pytest.raises(InvalidArgument):
        await node.platform.stage(smb_request(staging, mount_options=(option,)))
    assert node.runner.calls == []
    assert node.host.entries == []
    assert node.secrets_left() == []


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"mount_group": "staff"}, "numeric group"),
        ({"mount_options": ("port=1",), "source": parse_source("//srv:4450/share")}, "port"),
        ({"credentials": Credentials("alice", "a\nb")}, "line breaks"),
        ({"credentials": Credentials("al%ice", "pw")}, "username"),
        ({"credentials": Credentials("alice", "pw", "DOM/X")}, "domain"),
    ],
)
async def test_bad_smb_requests_do_nothing(node: Node, kw: dict[str, object], match: str) -> None:
    staging = node.root / "kubelet" / "s"
    with pytest.raises(InvalidArgument, match=match):
        await node.platform.stage(smb_request(staging, **kw))
    assert node.runner.calls == []
    assert not staging.exists()


async def test_staging_path_that_is_a_file(node: Node) -> None:
    staging = node.root / "kubelet" / "file"
    staging.write_text("x")
    with pytest.raises(InvalidArgument, match="not a directory"):
        await node.platform.stage(smb_request(staging))
    assert node.runner.calls == []
    assert node.secrets_left() == []


@pytest.mark.parametrize(
    ("stderr", "error", "code"),
    [
        (
            "mount error(13): Permission denied\nRefer to the mount.cifs(8) manual",
            PermissionDenied,
            32,
        ),
        ("mount error(2): No such file or directory", NotFound, 32),
        ("mount error(111): could not connect to 10.0.0.1", Unavailable, 32),
        ("mount error(112): Host is down", Unavailable, 32),
        ("mount error(22): Invalid argument", Internal, 32),
        ("mount: something odd", Internal, 1),
    ],
)
async def test_failed_smb_mount(node: Node, stderr: str, error: type[Exception], code: int) -> None:
    staging = node.root / "kubelet" / "s"
    # A (hypothetical) helper that echoes the password must not leak it.
    node.runner.mount_results.append(CommandResult((), code, "", f"{stderr} {PASSWORD}"))
    with pytest.raises(error) as info:
        await node.platform.stage(smb_request(staging))
    assert PASSWORD not in str(info.value)
    assert "failed" in str(info.value)
    assert node.secrets_left() == []
    assert node.host.entries == []


async def test_mount_timeout_propagates_with_finished(node: Node) -> None:
    staging = node.root / "kubelet" / "s"
    gate = asyncio.Event()
    node.runner.hang = gate
    with pytest.raises(CommandTimeout) as info:
        await node.platform.stage(smb_request(staging))
    assert isinstance(info.value, DeadlineExceeded)
    assert info.value.finished is not None
    assert node.secrets_left() == []  # removed although the mount "still runs"
    gate.set()
    await info.value.finished
