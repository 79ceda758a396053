"""Stage and unstage on the fake Windows node: mappings, links, options, policy."""

from __future__ import annotations

import asyncio
import ntpath

import pytest
import structlog

from driver.credentials import Credentials
from driver.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from driver.source import Source
from node.platform import PublishRequest, StageRequest
from node.windows import (
    OP_GET_MAPPING,
    OP_NEW_MAPPING,
    OP_REMOVE_MAPPING,
    WindowsPlatform,
)
from tests.unit.windows.fake import (
    CREDS,
    PASSWORD,
    ROOT,
    SHARE,
    FakeMapping,
    FakeWindows,
    WindowsFailure,
    key,
    make_platform,
    stage_request,
    staging_of,
    target_of,
)

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


@pytest.mark.parametrize("status", ["Disconnected", "Unavailable"])
async def test_a_stale_mapping_is_recreated(
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


@pytest.mark.parametrize("status", ["Reconnecting", "Connecting", "Paused", "NetworkError"])
async def test_a_mapping_in_another_state_is_kept_and_only_this_stage_fails(
    platform: WindowsPlatform, node: FakeWindows, status: str
) -> None:
    """Pods of other volumes run on the mapping: a state the SMB client may
    still recover from never makes the driver pull it away."""
    await platform.stage(stage_request(platform, node, "pvc-1"))
    mapping = node.mappings[key(ROOT)]
    mapping.status = status
    with pytest.raises(Unavailable, match="64"):
        await platform.stage(stage_request(platform, node, "pvc-2"))
    assert OP_REMOVE_MAPPING not in node.ops()
    assert node.mappings[key(ROOT)] is mapping
    mapping.status = "OK"  # the SMB client recovered: kubelet's retry succeeds
    await platform.stage(stage_request(platform, node, "pvc-2"))
    assert node.mappings[key(ROOT)] is mapping


async def test_a_share_root_the_account_cannot_see_keeps_its_mapping(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    """An account with rights on its own folders only (or access-based
    enumeration) cannot open the share root: that is no reason to remove the
    mapping under the running pods of other volumes."""
    first = stage_request(platform, node, "pvc-1")
    await platform.stage(first)
    target = platform.check_path(target_of("pod-1", "pv-1"), what="t")
    await platform.publish(PublishRequest("pvc-1", first.staging_path, target))
    mapping = node.mappings[key(ROOT)]
    node.denied.add(key(ROOT))
    for volume in ("pvc-2", "pvc-3", "pvc-1"):
        await platform.stage(stage_request(platform, node, volume))
    assert OP_REMOVE_MAPPING not in node.ops()
    assert node.ops(OP_NEW_MAPPING) == [OP_NEW_MAPPING]
    assert node.mappings[key(ROOT)] is mapping
    assert await node.is_dir(target)  # the running pod still sees its volume
    usage = await platform.usage("pvc-1", target)
    assert not usage.health.abnormal, usage.health.message


async def test_a_blip_on_one_volume_fails_its_stage_and_nothing_else(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    first = stage_request(platform, node, "pvc-1")
    await platform.stage(first)
    mapping = node.mappings[key(ROOT)]
    node.unreachable.add(key(ROOT + r"\base\pvc-2"))
    second = stage_request(platform, node, "pvc-2")
    with pytest.raises(Unavailable, match="64"):
        await platform.stage(second)
    assert OP_REMOVE_MAPPING not in node.ops()
    assert node.mappings[key(ROOT)] is mapping
    assert not await node.is_link(second.staging_path)  # nothing half-made
    assert await node.is_dir(first.staging_path)
    node.unreachable.clear()
    await platform.stage(second)  # kubelet's retry
    assert node.mappings[key(ROOT)] is mapping


async def test_a_deleted_volume_directory_is_not_found_on_an_ok_mapping(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    await platform.stage(stage_request(platform, node, "pvc-1"))
    node.server_dirs.discard(key(ROOT + r"\base\pvc-2"))
    with pytest.raises(NotFound, match="was the volume deleted"):
        await platform.stage(stage_request(platform, node, "pvc-2"))
    assert OP_REMOVE_MAPPING not in node.ops()


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
    platform = make_platform(node, kubelet_dir=r"d:/k")  # --kubelet-dir, normalised
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
    assert key(ROOT) in node.mappings  # found the other link under D:\k
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
    "server",
    [
        "smb-server.storage.svc.cluster.local",
        "smb-server.storage.svc",
        "smb-server.storage.svc.cluster.local.",
        "SMB.Storage.SVC.Cluster.Local",
        "smb.cluster.local",
    ],
)
async def test_a_cluster_service_name_is_a_failed_precondition(
    platform: WindowsPlatform, node: FakeWindows, server: str
) -> None:
    """A HostProcess pod resolves with the host's DNS: cluster names fail there (error 53)."""
    node.add_share(f"\\\\{server}\\share", "base/pvc-1")
    request = stage_request(platform, node, source=Source("smb", server, None, "share"))
    with pytest.raises(FailedPrecondition, match="cluster Service name") as info:
        await platform.stage(request)
    assert "host's DNS" in info.value.message
    assert node.calls == []
    assert node.fs_actions == []


@pytest.mark.parametrize("server", ["fileserver.corp.local", "svc.example.com", "10.0.0.5"])
async def test_other_server_names_are_staged(
    platform: WindowsPlatform, node: FakeWindows, server: str
) -> None:
    node.add_share(f"\\\\{server}\\share", "base/pvc-1")
    node.accounts[f"{server}\\bob".casefold()] = "pw"
    creds = Credentials(username="bob", password="pw")
    source = Source("smb", server, None, "share")
    await platform.stage(stage_request(platform, node, source=source, credentials=creds))
    assert node.ops(OP_NEW_MAPPING) == [OP_NEW_MAPPING]


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


async def test_read_only_publishes_are_accepted(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    """kubelet passes readonly to the container runtime too (containerd ->
    hcsshim ``ro``): a readOnly pod volume is enforced, so it is published."""
    stage = stage_request(platform, node, read_only=True)  # a ReadOnlyMany volume
    await platform.stage(stage)
    targets = [platform.check_path(target_of(pod, "pv-1"), what="t") for pod in ("a", "b")]
    await platform.publish(
        PublishRequest("pvc-1", stage.staging_path, targets[0], read_only=True, readonly_flag=True)
    )
    # A read-write volume published read-only (pod readOnly: true) alike.
    await platform.publish(
        PublishRequest("pvc-1", stage.staging_path, targets[1], read_only=True, readonly_flag=True)
    )
    for target in targets:
        assert node.links[key(target)] == stage.staging_path


async def test_a_reader_only_mode_without_the_readonly_flag_is_refused_by_default(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    """Nothing would enforce it: the runtime is not told, a symlink cannot be read-only."""
    stage = stage_request(platform, node, read_only=True)
    await platform.stage(stage)
    target = platform.check_path(target_of("pod-1", "pv-1"), what="t")
    node.mkdir_p(target)
    with pytest.raises(InvalidArgument, match="set readOnly: true"):
        await platform.publish(PublishRequest("pvc-1", stage.staging_path, target, read_only=True))
    assert key(target) in node.dirs
    assert key(target) not in node.links


async def test_a_reader_only_mode_is_accepted_with_a_warning_in_warn_mode(
    node: FakeWindows,
) -> None:
    platform = make_platform(node, read_only="warn")
    stage = stage_request(platform, node, read_only=True)
    await platform.stage(stage)
    target = platform.check_path(target_of("pod-1", "pv-1"), what="t")
    with structlog.testing.capture_logs() as logs:
        await platform.publish(PublishRequest("pvc-1", stage.staging_path, target, read_only=True))
    assert any("not enforceable" in entry["event"] for entry in logs)
    assert node.links[key(target)] == stage.staging_path


async def test_privacy_gap_of_an_existing_mapping_is_logged(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    node.mappings[key(ROOT)] = FakeMapping(ROOT, "CORP\\alice", privacy=False)
    with structlog.testing.capture_logs() as logs:
        await platform.stage(stage_request(platform, node))
    assert any("does not require privacy" in entry["event"] for entry in logs)
    assert node.ops(OP_NEW_MAPPING) == []
