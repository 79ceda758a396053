"""Inline ephemeral volumes: attribute validation (pure, fuzzed) and the Node
service mounting them at the target over the stateful fakes."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driver import rpc
from driver.csi import csi_pb2
from driver.errors import DriverError, InvalidArgument, NotFound, PermissionDenied
from node.ephemeral import EPHEMERAL_KEY, ephemeral_volume
from node.runner import CommandResult
from tests.fakes.linux import PASSWORD, World, all_text, options_of
from tests.unit.test_node_service import CTX, SECRETS, cap

POD_INFO = {
    EPHEMERAL_KEY: "true",
    "csi.storage.k8s.io/pod.name": "web-0",
    "csi.storage.k8s.io/pod.namespace": "team-a",
    "csi.storage.k8s.io/pod.uid": "7c4d",
    "csi.storage.k8s.io/serviceAccount.name": "default",
}
SMB_ATTRS = {"source": "//srv/share/base", "subDir": "reports/2026", "mountOptions": "vers=3.1.1"}
NFS_ATTRS = {"Source": "srv:/export", "SUBDIR": "data", "mountoptions": "nfsvers=4.1, port=2050"}


def inline_req(world: World, attrs: dict[str, str], **kw: Any) -> Any:
    fields: dict[str, Any] = {
        "volume_id": "csi-0123abcd",
        "target_path": world.target(),
        "volume_capability": cap(),
        "volume_context": {**POD_INFO, **attrs},
        "secrets": SECRETS,
    }
    fields.update(kw)
    return csi_pb2.NodePublishVolumeRequest(**fields)


def unpublish_req(world: World) -> Any:
    return csi_pb2.NodeUnpublishVolumeRequest(volume_id="csi-0123abcd", target_path=world.target())


# ---------------------------------------------------------------- attributes


def test_attributes_make_a_stage_request() -> None:
    vol = ephemeral_volume(
        "v", {**POD_INFO, **SMB_ATTRS}, SECRETS, target_path="/t", read_only=True
    )
    assert vol.source.protocol == "smb"
    assert (vol.source.server, vol.source.share) == ("srv", "share")
    assert vol.subdir == "base/reports/2026"
    assert vol.mount_options == ("vers=3.1.1",)
    assert vol.staging_path == "/t"
    assert vol.read_only
    assert vol.credentials is not None
    assert vol.credentials.username == "alice"
    nfs = ephemeral_volume("v", NFS_ATTRS, {}, target_path="/t", read_only=False)
    assert (nfs.source.protocol, nfs.source.share, nfs.subdir) == ("nfs", "/export", "data")
    assert nfs.mount_options == ("nfsvers=4.1", "port=2050")
    assert nfs.credentials is None


@pytest.mark.parametrize(
    ("attrs", "secrets", "match"),
    [
        ({"source": "//srv/share", "size": "1Gi"}, SECRETS, "unknown key 'size'"),
        ({"source": "//srv/share", "protocol": "smb"}, SECRETS, "unknown key 'protocol'"),
        ({"source": "//srv/share", "Source": "//srv/other"}, SECRETS, "given twice"),
        ({"subDir": "x"}, SECRETS, "'source' is required"),
        ({"source": "  "}, SECRETS, "'source' is required"),
        ({"source": "//srv/share", "subDir": "../other"}, SECRETS, "subDir"),
        ({"source": "//srv/share", "subDir": "/etc"}, SECRETS, "subDir"),
        ({"source": "//srv/share", "subDir": "a\\..\\b"}, SECRETS, "subDir"),
        ({"source": "//srv/share"}, {}, "nodePublishSecretRef"),
        ({"source": "//srv/share"}, {"username": "bob"}, "password"),
        ({"source": "ftp://srv/x"}, {}, "source"),
    ],
)
def test_bad_attributes(attrs: dict[str, str], secrets: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        ephemeral_volume("v", attrs, secrets, target_path="/t", read_only=False)


@given(
    st.dictionaries(
        st.sampled_from(
            ["source", "subDir", "mountOptions", "SOURCE", "x", "csi.storage.k8s.io/a"]
        ),
        st.text(max_size=40),
        max_size=4,
    )
)
def test_fuzzed_attributes_are_invalid_or_stay_in_the_share(attrs: dict[str, str]) -> None:
    try:
        vol = ephemeral_volume("v", attrs, SECRETS, target_path="/t", read_only=False)
    except InvalidArgument:
        return
    parts = vol.subdir.split("/") if vol.subdir else []
    assert ".." not in parts
    assert "" not in parts
    assert not vol.subdir.startswith("/")


# ---------------------------------------------------------------- publish


async def test_smb_inline_volume_lifecycle(world: World) -> None:
    svc = world.service
    await svc.NodePublishVolume(inline_req(world, SMB_ATTRS), CTX)

    (mount,) = world.runner.fs_mounts()
    assert mount[2:5] == ("cifs", "//srv/share/base/reports/2026", world.target())
    (with_creds,) = [c for c in world.runner.calls if c.credentials]
    assert with_creds.credentials is not None
    assert f"password={PASSWORD}" in with_creds.credentials[2]
    assert PASSWORD not in all_text(world.runner)
    assert "vers=3.1.1" in options_of(mount)
    assert list(world.secrets_dir.iterdir()) == []
    assert world.runner.commands("mkdir") == []  # nothing on the server, ever

    stats = await svc.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id="csi-0123abcd", volume_path=world.target()),
        CTX,
    )
    assert not stats.volume_condition.abnormal
    assert stats.usage[0].total > 0

    calls = len(world.runner.calls)
    await svc.NodePublishVolume(inline_req(world, SMB_ATTRS), CTX)  # republish: healthy
    assert len(world.runner.calls) == calls

    await svc.NodeUnpublishVolume(unpublish_req(world), CTX)
    assert world.host.entries == []
    assert not Path(world.target()).exists()
    await svc.NodeUnpublishVolume(unpublish_req(world), CTX)  # idempotent


async def test_nfs_inline_volume_read_only(world: World) -> None:
    await world.service.NodePublishVolume(
        inline_req(world, NFS_ATTRS, secrets={}, readonly=True), CTX
    )
    (mount,) = world.runner.fs_mounts()
    assert mount[2:5] == ("nfs", "srv:/export/data", world.target())
    assert {"nfsvers=4.1", "port=2050", "ro"} <= set(options_of(mount))
    assert world.host.at(world.target())[0].read_only
    await world.service.NodeUnpublishVolume(unpublish_req(world), CTX)
    assert world.host.entries == []


@pytest.mark.parametrize(
    "attrs",
    [
        {"source": "//srv/share", "color": "blue"},
        {"source": "//srv/share", "subDir": "../../etc"},
        {"source": "//srv/share", "mountOptions": "password=oops"},
        {"source": "//srv/share", "mountOptions": "bind"},
        {"source": "nfs://srv:2050/export", "mountOptions": "port=1"},
    ],
)
async def test_bad_inline_requests_create_nothing(world: World, attrs: dict[str, str]) -> None:
    with pytest.raises(DriverError) as info:
        await world.service.NodePublishVolume(inline_req(world, attrs), CTX)
    assert info.value.code == "INVALID_ARGUMENT"
    assert world.runner.calls == []
    assert not Path(world.target()).exists()


@pytest.mark.parametrize(
    ("stderr", "error"),
    [
        ("mount error(2): No such file or directory", NotFound),
        ("mount error(13): Permission denied", PermissionDenied),
    ],
)
async def test_failed_inline_mount_leaves_no_target(
    world: World, stderr: str, error: type[DriverError]
) -> None:
    world.runner.mount_results.append(CommandResult(("mount",), 32, "", stderr))
    with pytest.raises(error):
        await world.service.NodePublishVolume(inline_req(world, SMB_ATTRS), CTX)
    assert world.host.entries == []
    assert not Path(world.target()).exists()


async def test_broken_inline_volume_is_repaired_on_top(world: World) -> None:
    svc = world.service
    await svc.NodePublishVolume(inline_req(world, NFS_ATTRS, secrets={}), CTX)
    world.host.break_mount(world.target(), errno.ESTALE)
    token = rpc.begin("NodePublishVolume")
    try:
        await svc.NodePublishVolume(inline_req(world, NFS_ATTRS, secrets={}), CTX)
        info = rpc.current()
        assert info is not None
        assert info.repairs == [("nfs", True)]
    finally:
        rpc.end(token)
    layers = world.host.at(world.target())
    assert len(layers) == 2
    assert "nosharecache" in options_of(world.runner.fs_mounts()[-1])
    await svc.NodeUnpublishVolume(unpublish_req(world), CTX)
    assert world.host.entries == []


async def test_inline_target_with_another_mount_is_refused(world: World) -> None:
    await world.service.NodePublishVolume(inline_req(world, SMB_ATTRS), CTX)
    other = {**SMB_ATTRS, "subDir": "elsewhere"}
    with pytest.raises(DriverError) as info:
        await world.service.NodePublishVolume(inline_req(world, other), CTX)
    assert info.value.code == "FAILED_PRECONDITION"


@pytest.mark.parametrize("first_read_only", [False, True])
async def test_inline_target_with_the_other_readonly_flag_is_refused(
    world: World, first_read_only: bool
) -> None:
    """The same rule as a staged volume's target: CSI's ALREADY_EXISTS, nothing changed."""
    svc = world.service
    await svc.NodePublishVolume(inline_req(world, SMB_ATTRS, readonly=first_read_only), CTX)
    calls, entries = len(world.runner.calls), list(world.host.entries)
    with pytest.raises(DriverError) as info:
        await svc.NodePublishVolume(inline_req(world, SMB_ATTRS, readonly=not first_read_only), CTX)
    assert info.value.code == "ALREADY_EXISTS"
    assert ("read-only" if first_read_only else "read-write") in info.value.message
    assert len(world.runner.calls) == calls
    assert world.host.entries == entries
