"""Controller RPC logic against stateful fake shares."""

from __future__ import annotations

from typing import Any

import pytest

from controller.service import ControllerService
from driver.csi import csi_pb2
from driver.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from driver.volume_id import parse_volume_id
from tests.csi_requests import cap
from tests.fakes.share import FakeBackends

AM = csi_pb2.VolumeCapability.AccessMode
SECRETS = {"username": "alice", "password": 'pa$$,w"`rd'}
CTX: Any = None


def create_req(name: str = "pvc-1", **params: str) -> csi_pb2.CreateVolumeRequest:
    return csi_pb2.CreateVolumeRequest(
        name=name,
        volume_capabilities=[cap()],
        parameters={"source": "//srv/share/base", **params},
        secrets=SECRETS,
    )


async def test_create_makes_directory_and_context(
    svc: ControllerService, backends: FakeBackends
) -> None:
    resp = await svc.CreateVolume(create_req(), CTX)
    vol = resp.volume
    assert vol.volume_id == "v1#smb#srv#share#base/pvc-1#delete"
    assert dict(vol.volume_context) == {
        "protocol": "smb",
        "source": "//srv/share",
        "subDir": "base/pvc-1",
    }
    share = backends.share("smb://srv/share")
    assert "base/pvc-1" in share.dirs
    assert ("smb://srv/share", "alice", None) in backends.requests
    assert all(SECRETS["password"] not in v for v in vol.volume_context.values())


async def test_create_is_idempotent_and_detects_conflicts(svc: ControllerService) -> None:
    first = await svc.CreateVolume(create_req(), CTX)
    again = await svc.CreateVolume(create_req(), CTX)
    assert again.volume == first.volume
    with pytest.raises(AlreadyExists):
        await svc.CreateVolume(create_req(onDelete="retain"), CTX)
    bigger = create_req()
    bigger.capacity_range.required_bytes = 5 << 30
    with pytest.raises(AlreadyExists):
        await svc.CreateVolume(bigger, CTX)


async def test_capacity_echoed(svc: ControllerService) -> None:
    req = create_req()
    req.capacity_range.required_bytes = 1 << 30
    assert (await svc.CreateVolume(req, CTX)).volume.capacity_bytes == 1 << 30


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: setattr(r, "name", ""), "name"),
        (lambda r: r.ClearField("volume_capabilities"), "at least one"),
        (lambda r: r.volume_capabilities[0].block.SetInParent(), "block"),
        (lambda r: r.volume_capabilities[0].access_mode.Clear(), "access_mode"),
        (lambda r: setattr(r.volume_capabilities[0].mount, "fs_type", "ext4"), "fs_type"),
        (lambda r: setattr(r.capacity_range, "required_bytes", -1), "negative"),
        (
            lambda r: (
                setattr(r.capacity_range, "required_bytes", 10),
                setattr(r.capacity_range, "limit_bytes", 5),
            ),
            "exceeds",
        ),
        (lambda r: r.parameters.__setitem__("bogus", "1"), "unknown parameter 'bogus'"),
        (lambda r: r.parameters.__setitem__("subDir", "../../etc"), "subDir"),
        (lambda r: r.secrets.clear(), "provisioner secret"),
        (lambda r: r.secrets.__delitem__("password"), "password"),
        (lambda r: r.volume_content_source.volume.SetInParent(), "volume_content_source"),
    ],
)
async def test_create_rejects_and_changes_nothing(
    svc: ControllerService, backends: FakeBackends, mutate: Any, match: str
) -> None:
    req = create_req()
    mutate(req)
    with pytest.raises(InvalidArgument, match=match) as err:
        await svc.CreateVolume(req, CTX)
    assert SECRETS["password"] not in str(err.value)
    assert all(not s.actions for s in backends.shares.values())


async def test_templates(svc: ControllerService, backends: FakeBackends) -> None:
    req = create_req(
        "pvc-9",
        subDir="${pvc.metadata.namespace}/${pvc.metadata.name}",
        **{"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "team"},
    )
    resp = await svc.CreateVolume(req, CTX)
    assert parse_volume_id(resp.volume.volume_id).dir == "base/team/data"


async def test_nfs_create_with_mode_and_version(
    svc: ControllerService, backends: FakeBackends
) -> None:
    req = csi_pb2.CreateVolumeRequest(
        name="pvc-n",
        volume_capabilities=[cap("nfsvers=3", "hard")],
        parameters={"source": "nfs.local:/export/k8s", "mountPermissions": "2770"},
    )
    resp = await svc.CreateVolume(req, CTX)
    assert resp.volume.volume_id == "v1#nfs#nfs.local#/export/k8s#pvc-n#delete#vers=3"
    share = backends.share("nfs://nfs.local//export/k8s")
    assert share.modes["pvc-n"] == 0o2770
    assert backends.requests[-1] == ("nfs://nfs.local//export/k8s", "", "3")


async def test_nfs_kerberos_is_refused(svc: ControllerService) -> None:
    req = csi_pb2.CreateVolumeRequest(
        name="k", volume_capabilities=[cap("sec=krb5")], parameters={"source": "s:/e"}
    )
    with pytest.raises(InvalidArgument, match="sec=krb5"):
        await svc.CreateVolume(req, CTX)


@pytest.mark.parametrize("policy", ["delete", "retain", "archive"])
async def test_delete_policies(svc: ControllerService, backends: FakeBackends, policy: str) -> None:
    vid = (await svc.CreateVolume(create_req(onDelete=policy), CTX)).volume.volume_id
    share = backends.share("smb://srv/share")
    share.files.add("base/pvc-1/file.txt")
    share.dirs.add("base/archived-pvc-1")  # an older archive to be replaced
    share.files.add("base/archived-pvc-1/old.txt")
    await svc.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid, secrets=SECRETS), CTX)
    if policy == "delete":
        assert "base/pvc-1" not in share.dirs
        assert "base/pvc-1/file.txt" not in share.files
    elif policy == "retain":
        assert "base/pvc-1/file.txt" in share.files
    else:
        assert "base/pvc-1" not in share.dirs
        assert "base/archived-pvc-1/file.txt" in share.files
        assert "base/archived-pvc-1/old.txt" not in share.files
    assert "base" in share.dirs  # never more than the volume
    # Deleting again is success.
    await svc.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid, secrets=SECRETS), CTX)


async def test_delete_malformed_id_is_success(
    svc: ControllerService, backends: FakeBackends
) -> None:
    for bad in ("garbage", "v1#smb#srv#share#..#delete", "v1#smb#srv#share#a%2F..%2F..#delete"):
        await svc.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=bad, secrets=SECRETS), CTX)
    assert not backends.shares
    with pytest.raises(InvalidArgument):
        await svc.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=""), CTX)


async def test_delete_needs_smb_secrets(svc: ControllerService) -> None:
    with pytest.raises(InvalidArgument, match="provisioner secret"):
        await svc.DeleteVolume(
            csi_pb2.DeleteVolumeRequest(volume_id="v1#smb#srv#share#x#delete"), CTX
        )


async def test_backend_errors_pass_through(svc: ControllerService, backends: FakeBackends) -> None:
    backends.share("smb://srv/share").fail_next.append(PermissionDenied("access denied on base"))
    with pytest.raises(PermissionDenied):
        await svc.CreateVolume(create_req(), CTX)
    # Not remembered: a retry after fixing permissions works.
    await svc.CreateVolume(create_req(), CTX)


async def test_validate(svc: ControllerService) -> None:
    vid = (await svc.CreateVolume(create_req(), CTX)).volume.volume_id
    ok = await svc.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=vid, volume_capabilities=[cap()], secrets=SECRETS
        ),
        CTX,
    )
    assert ok.HasField("confirmed")
    block = csi_pb2.VolumeCapability(
        block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=AM(mode=1)
    )
    nope = await svc.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id=vid, volume_capabilities=[block]), CTX
    )
    assert not nope.HasField("confirmed")
    assert "block" in nope.message
    with pytest.raises(NotFound):
        await svc.ValidateVolumeCapabilities(
            csi_pb2.ValidateVolumeCapabilitiesRequest(
                volume_id="nope", volume_capabilities=[cap()]
            ),
            CTX,
        )
    with pytest.raises(NotFound):
        await svc.ValidateVolumeCapabilities(
            csi_pb2.ValidateVolumeCapabilitiesRequest(
                volume_id="v1#smb#srv#share#missing#delete",
                volume_capabilities=[cap()],
                secrets=SECRETS,
            ),
            CTX,
        )


async def test_expand(svc: ControllerService) -> None:
    vid = (await svc.CreateVolume(create_req(), CTX)).volume.volume_id
    resp = await svc.ControllerExpandVolume(
        csi_pb2.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=csi_pb2.CapacityRange(required_bytes=10 << 30)
        ),
        CTX,
    )
    assert resp.capacity_bytes == 10 << 30
    assert resp.node_expansion_required is False
    with pytest.raises(NotFound):
        await svc.ControllerExpandVolume(
            csi_pb2.ControllerExpandVolumeRequest(
                volume_id="x", capacity_range=csi_pb2.CapacityRange(required_bytes=1)
            ),
            CTX,
        )
    # CSI "Exceeds capabilities": INVALID_ARGUMENT.
    block = csi_pb2.VolumeCapability(
        block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=AM(mode=AM.SINGLE_NODE_WRITER)
    )
    with pytest.raises(InvalidArgument, match="block"):
        await svc.ControllerExpandVolume(
            csi_pb2.ControllerExpandVolumeRequest(
                volume_id=vid,
                capacity_range=csi_pb2.CapacityRange(required_bytes=1),
                volume_capability=block,
            ),
            CTX,
        )


async def test_expand_of_a_deleted_volume_is_not_found(svc: ControllerService) -> None:
    # CSI ControllerExpandVolume "Volume does not exist": NOT_FOUND where the
    # share can be asked (NFS; SMB when the RPC carries secrets).
    for req in (create_req("pvc-smb"), create_req("pvc-nfs", source="n:/e")):
        if req.parameters["source"] == "n:/e":
            req.ClearField("secrets")
        vid = (await svc.CreateVolume(req, CTX)).volume.volume_id
        await svc.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid, secrets=SECRETS), CTX)
        expand = csi_pb2.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=csi_pb2.CapacityRange(required_bytes=1), secrets=SECRETS
        )
        if req.parameters["source"] == "n:/e":
            expand.ClearField("secrets")
        with pytest.raises(NotFound, match="does not exist"):
            await svc.ControllerExpandVolume(expand, CTX)
        # Without credentials an SMB share cannot be asked: accepted.
        if req.parameters["source"] != "n:/e":
            expand.ClearField("secrets")
            await svc.ControllerExpandVolume(expand, CTX)


async def test_capacity(svc: ControllerService) -> None:
    req = csi_pb2.GetCapacityRequest(parameters={"source": "//srv/share"})
    with pytest.raises(FailedPrecondition, match="after the first CreateVolume"):
        await svc.GetCapacity(req, CTX)
    await svc.CreateVolume(create_req(), CTX)
    assert (await svc.GetCapacity(req, CTX)).available_capacity == 40 << 30
    nfs = await svc.GetCapacity(csi_pb2.GetCapacityRequest(parameters={"source": "n:/e"}), CTX)
    assert nfs.available_capacity == 40 << 30


async def test_capacity_without_parameters_is_ok_and_zero(
    svc: ControllerService, backends: FakeBackends
) -> None:
    # CSI: parameters are optional in GetCapacity; the answer is ours to
    # define.  Nothing can be provisioned without a source, hence 0.
    resp = await svc.GetCapacity(csi_pb2.GetCapacityRequest(), CTX)
    assert resp.available_capacity == 0
    assert not resp.HasField("maximum_volume_size")
    resp = await svc.GetCapacity(csi_pb2.GetCapacityRequest(volume_capabilities=[cap()]), CTX)
    assert resp.available_capacity == 0
    assert backends.shares == {}  # no server was asked
    # Present and wrong stays INVALID_ARGUMENT.
    block = csi_pb2.VolumeCapability(
        block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=AM(mode=AM.SINGLE_NODE_WRITER)
    )
    with pytest.raises(InvalidArgument, match="block"):
        await svc.GetCapacity(csi_pb2.GetCapacityRequest(volume_capabilities=[block]), CTX)
    with pytest.raises(InvalidArgument, match="source"):
        await svc.GetCapacity(csi_pb2.GetCapacityRequest(parameters={"protocol": "smb"}), CTX)
    with pytest.raises(InvalidArgument, match="colour"):
        await svc.GetCapacity(
            csi_pb2.GetCapacityRequest(parameters={"source": "n:/e", "colour": "red"}), CTX
        )


async def test_capabilities(svc: ControllerService) -> None:
    resp = await svc.ControllerGetCapabilities(csi_pb2.ControllerGetCapabilitiesRequest(), CTX)
    names = {
        csi_pb2.ControllerServiceCapability.RPC.Type.Name(c.rpc.type) for c in resp.capabilities
    }
    assert names == {
        "CREATE_DELETE_VOLUME",
        "EXPAND_VOLUME",
        "GET_CAPACITY",
        "SINGLE_NODE_MULTI_WRITER",
        "CREATE_DELETE_SNAPSHOT",
        "LIST_SNAPSHOTS",
        "CLONE_VOLUME",
    }
