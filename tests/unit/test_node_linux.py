"""LinuxPlatform against the stateful fake host and runner (``tests/fakes/linux.py``);
the real runner."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from driver.credentials import Credentials
from driver.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from driver.source import parse_source
from node.linux import (
    CAPABILITIES,
    LinuxPlatform,
    Prober,
    ProbesExhausted,
    ProbeTimeout,
    nfs_device,
    smb_device,
)
from node.platform import PublishRequest, StageRequest
from node.runner import AsyncioRunner, CommandResult, CommandTimeout
from tests.fakes.linux import (
    LOCAL,
    PASSWORD,
    SHARE,
    FakeHost,
    FakeRunner,
    all_text,
    config,
    make_platform,
    options_of,
)


@dataclass
class Node:
    host: FakeHost
    runner: FakeRunner
    platform: LinuxPlatform
    root: Path
    secrets_dir: Path

    def new_platform(self) -> LinuxPlatform:
        """A restarted driver: same kernel mount table, no memory."""
        return make_platform(self.host, self.runner, self.secrets_dir)

    def secrets_left(self) -> list[str]:
        return sorted(os.listdir(self.secrets_dir)) if self.secrets_dir.exists() else []


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    host = FakeHost()
    runner = FakeRunner(host)
    secrets_dir = tmp_path / "secrets"
    (tmp_path / "kubelet").mkdir()
    platform = make_platform(host, runner, secrets_dir)
    try:
        yield Node(host, runner, platform, tmp_path, secrets_dir)
    finally:
        host.release_all()
        for task in runner.finished:
            task.cancel()
        await platform.aclose()  # its ticket keeper's task


def smb_request(staging: Path, **kw: object) -> StageRequest:
    base: dict[str, object] = {
        "volume_id": "smb-vol",
        "source": parse_source("//srv/share"),
        "subdir": "base/pvc-1",
        "staging_path": str(staging),
        "credentials": Credentials("alice", PASSWORD, "CORP"),
    }
    base.update(kw)
    return StageRequest(**base)  # type: ignore[arg-type]


def nfs_request(staging: Path, **kw: object) -> StageRequest:
    base: dict[str, object] = {
        "volume_id": "nfs-vol",
        "source": parse_source("srv:/export"),
        "subdir": "pvc-2",
        "staging_path": str(staging),
    }
    base.update(kw)
    return StageRequest(**base)  # type: ignore[arg-type]


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


# ---------------------------------------------------------------- NFS stage


async def test_nfs_stage_plain(node: Node) -> None:
    staging = node.root / "kubelet" / "s"
    await node.platform.stage(nfs_request(staging))
    (argv,) = node.runner.fs_mounts()
    # No options at all: mount.nfs negotiates the newest version (4.2 → 3).
    assert argv == ("mount", "-t", "nfs", "srv:/export/pvc-2", str(staging))
    assert node.secrets_left() == []


@pytest.mark.parametrize(
    ("source", "options", "expected_device", "expected_options"),
    [
        ("nfs://srv:2050/export", (), "srv:/export/pvc-2", ["port=2050"]),
        ("srv:/export", ("nfsvers=3", "nolock"), "srv:/export/pvc-2", ["nfsvers=3", "nolock"]),
        (
            "srv:/export",
            ("vers=4.1", "soft", "timeo=50"),
            "srv:/export/pvc-2",
            ["vers=4.1", "soft", "timeo=50"],
        ),
        ("[fd00::5]:/export", (), "[fd00::5]:/export/pvc-2", []),
    ],
)
async def test_nfs_options(
    node: Node,
    source: str,
    options: tuple[str, ...],
    expected_device: str,
    expected_options: list[str],
) -> None:
    staging = node.root / "kubelet" / "s"
    await node.platform.stage(
        nfs_request(staging, source=parse_source(source), mount_options=options)
    )
    (argv,) = node.runner.fs_mounts()
    assert argv[3] == expected_device
    assert options_of(argv) == expected_options


async def test_nfs_idempotent_with_trailing_slash_normalised(node: Node) -> None:
    staging = node.root / "kubelet" / "s"
    request = nfs_request(staging, subdir="")
    await node.platform.stage(request)
    await node.platform.stage(request)
    assert len(node.runner.fs_mounts()) == 1


@pytest.mark.root(reason="chgrp to another group needs root")
async def test_nfs_mount_permissions_and_group(node: Node) -> None:
    staging = node.root / "kubelet" / "s"
    await node.platform.stage(nfs_request(staging, mount_permissions=0o750))
    assert stat.S_IMODE(staging.stat().st_mode) == 0o750
    staging2 = node.root / "kubelet" / "s2"
    await node.platform.stage(
        nfs_request(staging2, volume_id="v2", subdir="other", mount_group="4321")
    )
    st = staging2.stat()
    assert st.st_gid == 4321
    assert st.st_mode & (stat.S_ISGID | stat.S_IRWXG) == stat.S_ISGID | stat.S_IRWXG


async def test_nfs_read_only_skips_permissions(node: Node) -> None:
    staging = node.root / "kubelet" / "s"
    staging.mkdir(mode=0o755)
    await node.platform.stage(nfs_request(staging, read_only=True, mount_permissions=0o777))
    assert "ro" in options_of(node.runner.fs_mounts()[0])
    assert stat.S_IMODE(staging.stat().st_mode) == 0o755


@pytest.mark.parametrize(
    ("stderr", "error"),
    [
        ("mount.nfs: access denied by server while mounting srv:/x", PermissionDenied),
        (
            "mount.nfs: mounting srv:/x failed, reason given by server: No such file or directory",
            NotFound,
        ),
        ("mount.nfs: Connection refused", Unavailable),
        ("mount.nfs: Connection timed out", Unavailable),
        (
            "mount.nfs: requested NFS version or transport protocol is not supported",
            FailedPrecondition,
        ),
        ("mount.nfs: an incorrect mount option was specified", Internal),
    ],
)
async def test_failed_nfs_mount_by_what_mount_nfs_says(
    node: Node, stderr: str, error: type[Exception]
) -> None:
    staging = node.root / "kubelet" / "s"
    node.runner.mount_results.append(CommandResult((), 32, "", stderr))
    with pytest.raises(error, match="failed"):
        await node.platform.stage(nfs_request(staging))
    assert node.host.entries == []


# ---------------------------------------------------------------- existing mounts


async def test_other_mount_at_staging_is_failed_precondition(node: Node) -> None:
    staging = node.root / "kubelet" / "s"
    staging.mkdir()
    node.host.add(str(staging), fstype="nfs4", source="other:/x")
    with pytest.raises(FailedPrecondition, match="another mount"):
        await node.platform.stage(nfs_request(staging))
    assert node.runner.calls == []


@pytest.mark.parametrize(
    "err", [errno.ESTALE, errno.ENOTCONN, errno.EIO, errno.EHOSTDOWN, errno.EACCES]
)
async def test_broken_mount_is_remounted(node: Node, err: int) -> None:
    staging = node.root / "kubelet" / "s"
    await node.platform.stage(smb_request(staging))
    node.host.break_mount(str(staging), err)
    await node.new_platform().stage(smb_request(staging))
    umounts = node.runner.commands("umount")
    assert umounts == [("umount", "-l", "-c", "-i", str(staging))]
    assert len(node.runner.fs_mounts()) == 2
    (entry,) = node.host.at(str(staging))
    assert node.host.fs[entry.major_minor].error is None  # a fresh, healthy mount


async def test_hung_mount_is_remounted_within_bound(node: Node) -> None:
    staging = node.root / "kubelet" / "s"
    await node.platform.stage(nfs_request(staging))
    node.host.hang_mount(str(staging))
    await asyncio.wait_for(node.platform.stage(nfs_request(staging)), 5)
    assert node.runner.commands("umount") == [("umount", "-l", "-c", "-i", str(staging))]
    assert len(node.host.at(str(staging))) == 1


# ---------------------------------------------------------------- publish


async def staged(node: Node, *, read_only: bool = False) -> Path:
    staging = node.root / "kubelet" / "staging"
    await node.platform.stage(smb_request(staging, read_only=read_only))
    return staging


def publish_request(
    node: Node, staging: Path, *, read_only: bool = False, name: str = "t"
) -> PublishRequest:
    return PublishRequest(
        volume_id="smb-vol",
        staging_path=str(staging),
        target_path=str(node.root / "kubelet" / "pods" / name / "mount"),
        read_only=read_only,
    )


async def test_publish_bind_mounts_and_is_idempotent(node: Node) -> None:
    staging = await staged(node)
    request = publish_request(node, staging)
    await node.platform.publish(request)
    await node.platform.publish(request)
    await node.new_platform().publish(request)
    binds = [a for a in node.runner.commands("mount") if a[1] == "--bind"]
    assert binds == [("mount", "--bind", str(staging), request.target_path)]
    (entry,) = node.host.at(request.target_path)
    assert entry.same_filesystem_view(node.host.at(str(staging))[0])
    assert not entry.read_only


async def test_publish_read_only(node: Node) -> None:
    staging = await staged(node)
    request = publish_request(node, staging, read_only=True)
    await node.platform.publish(request)
    assert ("mount", "-o", "remount,bind,ro", request.target_path) in node.runner.commands("mount")
    assert node.host.at(request.target_path)[0].read_only
    await node.platform.publish(request)  # idempotent
    with pytest.raises(AlreadyExists, match="read-only"):
        await node.platform.publish(replace(request, read_only=False))


async def test_publish_read_write_over_read_write_mismatch(node: Node) -> None:
    staging = await staged(node)
    request = publish_request(node, staging)
    await node.platform.publish(request)
    with pytest.raises(AlreadyExists, match="read-write"):
        await node.platform.publish(replace(request, read_only=True))


async def test_failed_ro_remount_leaves_no_writable_mount(node: Node) -> None:
    staging = await staged(node)
    request = publish_request(node, staging, read_only=True)
    node.runner.fail_remount_ro = True
    with pytest.raises(Internal, match="read-only remount"):
        await node.platform.publish(request)
    assert node.host.at(request.target_path) == []


async def test_publish_needs_staged_volume(node: Node) -> None:
    staging = node.root / "kubelet" / "staging"
    staging.mkdir()
    with pytest.raises(FailedPrecondition, match="not mounted"):
        await node.platform.publish(publish_request(node, staging))
    assert node.runner.calls == []


async def test_publish_target_with_other_mount(node: Node) -> None:
    staging = await staged(node)
    request = publish_request(node, staging)
    Path(request.target_path).mkdir(parents=True)
    node.host.add(request.target_path, fstype="tmpfs", source="tmpfs", stats=LOCAL)
    with pytest.raises(FailedPrecondition, match="another mount"):
        await node.platform.publish(request)


async def test_publish_target_is_a_file(node: Node) -> None:
    staging = await staged(node)
    request = publish_request(node, staging)
    Path(request.target_path).parent.mkdir(parents=True)
    Path(request.target_path).write_text("x")
    with pytest.raises(InvalidArgument, match="not a directory"):
        await node.platform.publish(request)


async def test_publish_from_dead_staging_is_unavailable(node: Node) -> None:
    staging = await staged(node)
    node.host.break_mount(str(staging), errno.EHOSTDOWN)
    with pytest.raises(Unavailable, match="EHOSTDOWN"):
        await node.platform.publish(publish_request(node, staging))


# ---------------------------------------------------------------- unpublish / unstage


async def test_unpublish_and_unstage(node: Node) -> None:
    staging = await staged(node)
    request = publish_request(node, staging)
    await node.platform.publish(request)
    await node.platform.unpublish("smb-vol", request.target_path)
    assert not Path(request.target_path).exists()
    assert node.runner.commands("umount") == [("umount", "-c", request.target_path)]
    await node.platform.unpublish("smb-vol", request.target_path)  # missing: success
    await node.platform.unstage("smb-vol", str(staging))
    assert not staging.exists()
    assert node.host.entries == []
    await node.new_platform().unstage("smb-vol", str(staging))


async def test_unstage_not_mounted_removes_empty_dir_only(node: Node) -> None:
    empty = node.root / "kubelet" / "empty"
    empty.mkdir()
    await node.platform.unstage("v", str(empty))
    assert not empty.exists()
    full = node.root / "kubelet" / "full"
    full.mkdir()
    (full / "data").write_text("keep me")
    await node.platform.unstage("v", str(full))
    assert (full / "data").read_text() == "keep me"
    assert node.runner.calls == []


async def test_unstage_stacked_mounts(node: Node) -> None:
    staging = await staged(node)
    node.host.add(str(staging), fstype="cifs", source="//srv/share/base/pvc-1")
    await node.platform.unstage("smb-vol", str(staging))
    assert node.host.at(str(staging)) == []
    assert len(node.runner.commands("umount")) == 2


async def test_busy_unmount_falls_back_to_lazy(node: Node) -> None:
    staging = await staged(node)
    node.runner.busy.add(str(staging))
    await node.platform.unstage("smb-vol", str(staging))
    assert node.runner.commands("umount") == [
        ("umount", "-c", str(staging)),
        ("umount", "-l", "-c", "-i", str(staging)),
    ]
    assert not staging.exists()


async def test_timed_out_unmount_falls_back_to_lazy(node: Node) -> None:
    staging = await staged(node)
    node.runner.umount_timeouts = 1
    await node.platform.unstage("smb-vol", str(staging))
    assert [a[1] for a in node.runner.commands("umount")] == ["-c", "-l"]
    assert node.host.entries == []


async def test_dead_server_unstage_never_hangs(node: Node) -> None:
    staging = await staged(node)
    node.host.hang_mount(str(staging))
    await asyncio.wait_for(node.platform.unstage("smb-vol", str(staging)), 5)
    # Straight to the lazy unmount: a plain umount would block on the server.
    assert node.runner.commands("umount") == [("umount", "-l", "-c", "-i", str(staging))]
    assert not staging.exists()


async def test_lazy_unmount_failure_is_reported(node: Node) -> None:
    staging = await staged(node)
    node.host.break_mount(str(staging))

    async def refuse(argv: object, **_: object) -> CommandResult:
        return CommandResult(("umount",), 32, "", "umount: permission denied")

    node.runner.run = refuse  # type: ignore[method-assign]
    with pytest.raises(Internal, match="umount -l failed"):
        await node.platform.unstage("smb-vol", str(staging))
    assert staging.exists()


# ---------------------------------------------------------------- usage / health


async def test_usage_of_healthy_mounts(node: Node) -> None:
    staging = await staged(node)
    usage = await node.platform.usage("smb-vol", str(staging))
    assert not usage.health.abnormal
    assert usage.total_bytes == SHARE.blocks * 1024
    assert usage.available_bytes == SHARE.blocks_available * 1024
    assert usage.used_bytes == (SHARE.blocks - SHARE.blocks_free) * 1024
    assert usage.total_inodes is None  # cifs has no inode counts
    nfs_staging = node.root / "kubelet" / "nfs"
    await node.platform.stage(nfs_request(nfs_staging))
    usage = await node.platform.usage("nfs-vol", str(nfs_staging))
    assert (usage.total_inodes, usage.free_inodes, usage.used_inodes) == (126998, 126000, 998)


async def test_usage_of_broken_mount(node: Node) -> None:
    staging = await staged(node)
    node.host.break_mount(str(staging), errno.ESTALE)
    usage = await node.platform.usage("smb-vol", str(staging))
    assert usage.health.abnormal
    assert "ESTALE" in usage.health.message
    assert usage.total_bytes == 0


async def test_usage_of_hung_mount_is_bounded_and_probes_once(node: Node) -> None:
    staging = await staged(node)
    gate = node.host.hang_mount(str(staging))
    calls = node.host.statvfs_calls
    for _ in range(3):
        usage = await asyncio.wait_for(node.platform.usage("smb-vol", str(staging)), 5)
        assert usage.health.abnormal
        assert "did not answer" in usage.health.message
    assert node.host.statvfs_calls == calls + 1  # one stuck thread, not three
    gate.set()
    for _ in range(100):
        usage = await node.platform.usage("smb-vol", str(staging))
        if not usage.health.abnormal:
            break
        await asyncio.sleep(0.01)
    assert not usage.health.abnormal


async def test_a_probe_stuck_on_a_replaced_mount_does_not_answer_for_the_new_one(
    node: Node,
) -> None:
    # One SMB session hangs while the server serves new ones: the re-stage
    # detaches the hung mount and mounts again (nosharesock: a new session).
    # The old statvfs thread is still stuck; the new mount must not share it.
    staging = await staged(node)
    gate = node.host.hang_mount(str(staging))
    usage = await node.platform.usage("smb-vol", str(staging))
    assert usage.health.abnormal
    await asyncio.wait_for(node.platform.stage(smb_request(staging)), 5)
    assert len(node.runner.fs_mounts()) == 2
    assert not gate.is_set()  # the old probe still hangs
    usage = await asyncio.wait_for(node.platform.usage("smb-vol", str(staging)), 5)
    assert not usage.health.abnormal, usage.health.message
    await node.platform.publish(publish_request(node, staging))  # not UNAVAILABLE
    await node.platform.stage(smb_request(staging))  # healthy: left alone
    assert len(node.runner.fs_mounts()) == 2


async def test_usage_not_a_mount_point_and_missing(node: Node) -> None:
    # CSI NodeGetVolumeStats: NOT_FOUND when the volume is not at volume_path.
    plain = node.root / "kubelet" / "plain"
    plain.mkdir()
    with pytest.raises(NotFound, match="no volume is mounted there"):
        await node.platform.usage("v", str(plain))
    with pytest.raises(NotFound):
        await node.platform.usage("v", str(node.root / "kubelet" / "missing"))
    calls = node.host.statvfs_calls
    with pytest.raises(NotFound):
        await node.platform.usage("v", str(plain / "below"))
    assert node.host.statvfs_calls == calls  # decided from the mount table alone


# ---------------------------------------------------------------- prober


async def test_prober_bounds_threads() -> None:
    prober = Prober(limit=2)
    gate = threading.Event()
    try:
        with pytest.raises(ProbeTimeout):
            await prober.call("a", gate.wait, 0.01)
        with pytest.raises(ProbeTimeout):
            await prober.call("a", gate.wait, 0.01)
        assert prober.in_flight == 1
        with pytest.raises(ProbeTimeout):
            await prober.call("b", gate.wait, 0.01)
        with pytest.raises(ProbesExhausted, match="still stuck"):
            await prober.call("c", lambda: True, 1)
    finally:
        gate.set()
    for _ in range(200):
        if prober.in_flight == 0:
            break
        await asyncio.sleep(0.005)
    assert prober.in_flight == 0
    assert await prober.call("c", lambda: 42, 1) == 42


async def test_prober_passes_errors() -> None:
    def fail() -> None:
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError, match="I/O error"):
        await Prober().call("x", fail, 1)


# ---------------------------------------------------------------- real runner


@pytest.fixture
def runner() -> AsyncioRunner:
    return AsyncioRunner(kill_grace=1.0)


async def test_runner_results(runner: AsyncioRunner) -> None:
    ok = await runner.run(
        ["sh", "-c", "read x; echo out:$x:$FOO; echo err >&2"],
        timeout=10,
        env={"FOO": "bar"},
        stdin=b"in\n",
    )
    assert ok.ok
    assert ok.stdout == "out:in:bar\n"
    assert ok.stderr == "err\n"
    failed = await runner.run(["sh", "-c", "exit 3"], timeout=10)
    assert (failed.ok, failed.returncode) == (False, 3)
    with pytest.raises(Internal, match="cannot run"):
        await runner.run(["/nonexistent/tool"], timeout=10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups via /proc")
async def test_runner_timeout_kills_the_whole_group(runner: AsyncioRunner, tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    script = f"sleep 30 & echo $! > {pidfile}; wait"
    with pytest.raises(CommandTimeout, match=r"did not finish within 0\.2 s") as info:
        await runner.run(["sh", "-c", script], timeout=0.2)
    assert isinstance(info.value, DeadlineExceeded)
    assert info.value.finished is None  # gone within the grace period
    child = int(pidfile.read_text())
    assert not _alive(child)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups via /proc")
async def test_runner_hands_back_a_finished_awaitable(tmp_path: Path) -> None:
    runner = AsyncioRunner(kill_grace=0)  # no grace: the caller gets the awaitable
    with pytest.raises(CommandTimeout, match="has not exited yet") as info:
        await runner.run(["sleep", "30"], timeout=0.1)
    assert info.value.finished is not None
    await asyncio.wait_for(info.value.finished, 10)
    assert runner.stuck == 0


async def test_runner_cancellation_kills_and_attaches_finished(runner: AsyncioRunner) -> None:
    task = asyncio.ensure_future(runner.run(["sleep", "30"], timeout=30))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    finished = getattr(info.value, "finished", None)
    assert finished is not None
    await asyncio.wait_for(finished, 10)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


async def test_exhausted_probes_do_not_tear_down_healthy_mounts(node: Node) -> None:
    staging = await staged(node)
    platform = LinuxPlatform(  # every probe slot held by other dead mounts
        config(),
        runner=node.runner,
        host=node.host,
        prober=Prober(limit=0),
        secrets_dir=str(node.secrets_dir),
        probe_timeout=0.2,
        unmount_timeout=1.0,
    )
    await platform.stage(smb_request(staging))  # no evidence: left alone
    assert len(node.runner.fs_mounts()) == 1
    assert node.runner.commands("umount") == []
    usage = await platform.usage("smb-vol", str(staging))
    assert usage.health.abnormal
    assert "still stuck" in usage.health.message
    await platform.aclose()
