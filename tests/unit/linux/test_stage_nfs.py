"""LinuxPlatform: staging NFS exports, and re-staging over broken, hung or foreign mounts."""

from __future__ import annotations

import asyncio
import errno
import stat

import pytest

from driver.errors import FailedPrecondition, Internal, NotFound, PermissionDenied, Unavailable
from driver.source import parse_source
from node.runner import CommandResult
from tests.fakes.linux import options_of
from tests.unit.linux.support import Node, nfs_request, smb_request

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
