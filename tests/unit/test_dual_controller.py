"""Dual-protocol volumes in the Controller service, against stateful fake shares.

The fakes keep one FakeShare per share root; where a test needs both
protocols to see one tree, the NFS root is made the same FakeShare object as
the SMB root (what a multiprotocol server does).
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.dual import align_origin
from controller.service import ControllerService
from controller.snapshot_id import SnapshotId, parse_snapshot_id
from driver.csi import csi_pb2
from driver.dual import DualSources
from driver.errors import InvalidArgument
from driver.source import Source
from driver.volume_id import VolumeId, parse_volume_id
from tests.csi_requests import cap
from tests.fakes.share import FakeBackends

AM = csi_pb2.VolumeCapability.AccessMode
CTX: Any = None
SECRETS = {"username": "alice", "password": "dual-pa$$word,`x"}
DUAL = {"smbSource": "//files/data/k8s", "nfsSource": "files:/srv/data/k8s"}
SMB_KEY = "smb://files/data"
NFS_KEY = "nfs://files//srv/data/k8s"


def create_req(
    name: str = "pvc-1",
    *,
    secrets: dict[str, str] | None = None,
    flags: tuple[str, ...] = (),
    **params: str,
) -> csi_pb2.CreateVolumeRequest:
    return csi_pb2.CreateVolumeRequest(
        name=name,
        volume_capabilities=[cap(*flags)],
        parameters={**DUAL, **params},
        secrets=secrets or {},
    )


async def test_create_via_nfs_by_default(svc: ControllerService, backends: FakeBackends) -> None:
    resp = await svc.CreateVolume(
        create_req(mountPermissions="0770", flags=("nfs:nfsvers=4.1", "smb:vers=3.1.1")), CTX
    )
    vol = resp.volume
    assert vol.volume_id == ("v2#nfs#nfs#files#data#k8s#files#/srv/data/k8s#pvc-1#delete#vers=4.1")
    assert dict(vol.volume_context) == {
        "smbSource": "//files/data/k8s",
        "nfsSource": "files:/srv/data/k8s",
        "subDir": "pvc-1",
        "linuxProtocol": "nfs",
        "mountPermissions": "0770",
    }
    assert backends.share(NFS_KEY).dirs == {"pvc-1"}
    assert backends.share(NFS_KEY).modes["pvc-1"] == 0o770
    assert SMB_KEY not in backends.shares  # the SMB side was not touched
    assert backends.requests == [(NFS_KEY, "", "4.1")]  # no credentials needed


async def test_create_via_smb_needs_the_provisioner_secret(
    svc: ControllerService, backends: FakeBackends
) -> None:
    with pytest.raises(InvalidArgument) as err:
        await svc.CreateVolume(create_req(provisionVia="smb", secrets={"username": "alice"}), CTX)
    assert "password" in err.value.message
    assert "provisionVia: smb" in err.value.message
    assert all(not s.actions for s in backends.shares.values())

    resp = await svc.CreateVolume(
        create_req(provisionVia="smb", linuxProtocol="smb", secrets=SECRETS), CTX
    )
    vid = parse_volume_id(resp.volume.volume_id)
    assert resp.volume.volume_id == "v2#smb#smb#files#data#k8s#files#/srv/data/k8s#pvc-1#delete"
    assert (str(vid.source), vid.dir) == ("//files/data", "k8s/pvc-1")
    assert backends.share(SMB_KEY).dirs == {"k8s", "k8s/pvc-1"}
    assert NFS_KEY not in backends.shares
    assert resp.volume.volume_context["linuxProtocol"] == "smb"
    for value in resp.volume.volume_context.values():
        assert SECRETS["password"] not in value
        assert "alice" not in value


async def test_idempotent_and_conflicts(svc: ControllerService) -> None:
    first = await svc.CreateVolume(create_req(), CTX)
    assert (await svc.CreateVolume(create_req(), CTX)).volume == first.volume
    with pytest.raises(Exception, match="already exists"):
        await svc.CreateVolume(create_req(linuxProtocol="smb"), CTX)


@pytest.mark.parametrize("via", ["nfs", "smb"])
@pytest.mark.parametrize("policy", ["delete", "archive", "retain"])
async def test_delete_through_each_protocol(
    svc: ControllerService, backends: FakeBackends, via: str, policy: str
) -> None:
    req = create_req(provisionVia=via, onDelete=policy, secrets=SECRETS if via == "smb" else None)
    vid = (await svc.CreateVolume(req, CTX)).volume.volume_id
    key, directory = (SMB_KEY, "k8s/pvc-1") if via == "smb" else (NFS_KEY, "pvc-1")
    share = backends.share(key)
    assert directory in share.dirs
    secrets = SECRETS if via == "smb" else {}
    await svc.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid, secrets=secrets), CTX)
    archived = directory.replace("pvc-1", "archived-pvc-1")
    expected = {"delete": set(), "archive": {archived}, "retain": {directory}}[policy]
    assert share.dirs - {"k8s"} == expected
    other = NFS_KEY if via == "smb" else SMB_KEY
    assert other not in backends.shares


async def test_snapshot_and_restore_keep_both_sources(
    svc: ControllerService, backends: FakeBackends
) -> None:
    vid = (await svc.CreateVolume(create_req(), CTX)).volume.volume_id
    share = backends.share(NFS_KEY)
    share.files.add("pvc-1/hello.txt")
    share.contents["pvc-1/hello.txt"] = b"from linux\n"
    snap = (
        await svc.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(name="snap-1", source_volume_id=vid), CTX
        )
    ).snapshot
    assert snap.ready_to_use
    assert snap.source_volume_id == vid
    sid = parse_snapshot_id(snap.snapshot_id)
    assert snap.snapshot_id.startswith("s2#")
    assert sid.dual is not None
    assert sid.source_volume().format() == vid
    listed = await svc.ListSnapshots(csi_pb2.ListSnapshotsRequest(source_volume_id=vid), CTX)
    assert [e.snapshot.snapshot_id for e in listed.entries] == [snap.snapshot_id]

    restore = create_req("pvc-2")
    restore.volume_content_source.snapshot.snapshot_id = snap.snapshot_id
    resp = await svc.CreateVolume(restore, CTX)
    assert resp.volume.volume_id.startswith("v2#")
    assert share.contents["pvc-2/hello.txt"] == b"from linux\n"
    assert resp.volume.volume_context["smbSource"] == DUAL["smbSource"]

    clone = create_req("pvc-3")
    clone.volume_content_source.volume.volume_id = vid
    resp = await svc.CreateVolume(clone, CTX)
    assert parse_volume_id(resp.volume.volume_id).dual is not None
    assert share.contents["pvc-3/hello.txt"] == b"from linux\n"

    await svc.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), CTX)
    assert not any(f.endswith(".tar.gz") for f in share.files)


async def test_restore_through_the_other_protocol(
    svc: ControllerService, backends: FakeBackends
) -> None:
    """A snapshot made over NFS restored by a class that provisions over SMB:
    one tree, so the archive is found under its SMB name."""
    tree = {"smbSource": "//files/data", "nfsSource": "files:/srv/data"}
    nfs_share = backends.share("nfs://files//srv/data")
    backends.shares["smb://files/data"] = nfs_share  # one directory, two protocols
    vid = (await svc.CreateVolume(create_req(**tree), CTX)).volume.volume_id
    nfs_share.files.add("pvc-1/a.txt")
    nfs_share.contents["pvc-1/a.txt"] = b"x"
    snap = (
        await svc.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(name="snap-1", source_volume_id=vid), CTX
        )
    ).snapshot
    restore = create_req("pvc-2", provisionVia="smb", secrets=SECRETS, **tree)
    restore.volume_content_source.snapshot.snapshot_id = snap.snapshot_id
    resp = await svc.CreateVolume(restore, CTX)
    assert resp.volume.volume_id.startswith("v2#smb#")
    assert nfs_share.contents["pvc-2/a.txt"] == b"x"

    # A one-protocol volume on an unrelated share cannot start from it.
    elsewhere = csi_pb2.CreateVolumeRequest(
        name="pvc-4",
        volume_capabilities=[cap()],
        parameters={"source": "//other/share"},
        secrets=SECRETS,
    )
    elsewhere.volume_content_source.snapshot.snapshot_id = snap.snapshot_id
    with pytest.raises(InvalidArgument, match="one share"):
        await svc.CreateVolume(elsewhere, CTX)


def test_align_origin_translates_paths_through_the_tree() -> None:
    tree = DualSources(
        Source("smb", "files", None, "data", "k8s"), Source("nfs", "files", None, "/srv/k8s")
    )
    sid = SnapshotId(tree.root("nfs"), ".snapshots/s.tar.gz", "pvc-1", "delete", (), tree)
    seen = align_origin(sid, tree.root("smb"), None)
    assert isinstance(seen, SnapshotId)
    assert (seen.archive, seen.source_dir) == ("k8s/.snapshots/s.tar.gz", "k8s/pvc-1")
    vid = VolumeId(tree.root("smb"), "k8s/pvc-1", "delete", (), tree.via("smb"))
    back = align_origin(vid, tree.root("nfs"), None)
    assert isinstance(back, VolumeId)
    assert back.dir == "pvc-1"
    # Outside the tree on the SMB side: the NFS side cannot see it.
    outside = SnapshotId(
        tree.root("smb"), "elsewhere/s.tar.gz", "k8s/pvc-1", "delete", (), tree.via("smb")
    )
    assert align_origin(outside, tree.root("nfs"), None) is None
    assert align_origin(sid, Source("smb", "other", None, "data"), None) is None


async def test_capacity_of_a_class_provisioning_over_smb(
    svc: ControllerService, backends: FakeBackends
) -> None:
    """GetCapacity has no secrets: before any SMB session, the NFS side answers."""
    params = {**DUAL, "provisionVia": "smb"}
    backends.share(NFS_KEY).available_bytes = 7 << 30
    resp = await svc.GetCapacity(csi_pb2.GetCapacityRequest(parameters=params), CTX)
    assert resp.available_capacity == 7 << 30
    assert backends.requests == [(NFS_KEY, "", None)]
    await svc.CreateVolume(create_req(provisionVia="smb", secrets=SECRETS), CTX)
    backends.share(SMB_KEY).available_bytes = 5 << 30
    resp = await svc.GetCapacity(csi_pb2.GetCapacityRequest(parameters=params), CTX)
    assert resp.available_capacity == 5 << 30  # the session CreateVolume opened


async def test_capacity_and_validate(svc: ControllerService, backends: FakeBackends) -> None:
    vid = (await svc.CreateVolume(create_req(), CTX)).volume.volume_id
    cap_resp = await svc.GetCapacity(csi_pb2.GetCapacityRequest(parameters=DUAL), CTX)
    assert cap_resp.available_capacity == backends.share(NFS_KEY).available_bytes
    ok = await svc.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id=vid, volume_capabilities=[cap()]), CTX
    )
    assert ok.HasField("confirmed")
