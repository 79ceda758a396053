"""The generated CSI bindings keep the CSI v1.12.0 wire contract.

Every expected value here was taken from the upstream v1.12.0 descriptor,
not written from memory. ``test_whole_contract_digest`` pins the whole
contract (names, numbers, types, labels, oneofs and options) so that any
accidental edit of driver/csi/csi.proto fails loudly.
"""

from __future__ import annotations

import hashlib

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from driver.csi import csi_pb2, csi_pb2_grpc

FILE = csi_pb2.DESCRIPTOR

# Every field that upstream marks with [(csi_secret) = true].
SECRET_FIELDS = {
    "CreateVolumeRequest.secrets": 5,
    "DeleteVolumeRequest.secrets": 2,
    "ControllerPublishVolumeRequest.secrets": 5,
    "ControllerUnpublishVolumeRequest.secrets": 3,
    "ValidateVolumeCapabilitiesRequest.secrets": 5,
    "ControllerModifyVolumeRequest.secrets": 2,
    "CreateSnapshotRequest.secrets": 3,
    "DeleteSnapshotRequest.secrets": 2,
    "ListSnapshotsRequest.secrets": 5,
    "GetSnapshotRequest.secrets": 2,
    "ControllerExpandVolumeRequest.secrets": 3,
    "NodeStageVolumeRequest.secrets": 5,
    "NodePublishVolumeRequest.secrets": 7,
    "NodeExpandVolumeRequest.secrets": 6,
    "CreateVolumeGroupSnapshotRequest.secrets": 3,
    "DeleteVolumeGroupSnapshotRequest.secrets": 3,
    "GetVolumeGroupSnapshotRequest.secrets": 3,
    "GetMetadataAllocatedRequest.secrets": 4,
    "GetMetadataDeltaRequest.secrets": 5,
}

SERVICES = {
    "Identity": ["GetPluginInfo", "GetPluginCapabilities", "Probe"],
    "Controller": [
        "CreateVolume",
        "DeleteVolume",
        "ControllerPublishVolume",
        "ControllerUnpublishVolume",
        "ValidateVolumeCapabilities",
        "ListVolumes",
        "GetCapacity",
        "ControllerGetCapabilities",
        "CreateSnapshot",
        "DeleteSnapshot",
        "ListSnapshots",
        "GetSnapshot",
        "ControllerExpandVolume",
        "ControllerGetVolume",
        "ControllerModifyVolume",
    ],
    "GroupController": [
        "GroupControllerGetCapabilities",
        "CreateVolumeGroupSnapshot",
        "DeleteVolumeGroupSnapshot",
        "GetVolumeGroupSnapshot",
    ],
    "SnapshotMetadata": ["GetMetadataAllocated", "GetMetadataDelta"],
    "Node": [
        "NodeStageVolume",
        "NodeUnstageVolume",
        "NodePublishVolume",
        "NodeUnpublishVolume",
        "NodeGetVolumeStats",
        "NodeExpandVolume",
        "NodeGetCapabilities",
        "NodeGetInfo",
    ],
}


def _all_messages(messages: list[Descriptor]) -> list[Descriptor]:
    out: list[Descriptor] = []
    for m in messages:
        out.append(m)
        out.extend(_all_messages(list(m.nested_types)))
    return out


def _field(path: str) -> FieldDescriptor:
    msg_name, field_name = path.rsplit(".", 1)
    return FILE.message_types_by_name[msg_name].fields_by_name[field_name]


def _numbers(msg: Descriptor) -> dict[str, int]:
    return {f.name: f.number for f in msg.fields}


def test_package_and_syntax() -> None:
    assert FILE.package == "csi.v1"
    proto = descriptor_pb2.FileDescriptorProto()
    FILE.CopyToProto(proto)
    assert proto.syntax == "proto3"
    assert set(proto.dependency) == {
        "google/protobuf/descriptor.proto",
        "google/protobuf/timestamp.proto",
        "google/protobuf/wrappers.proto",
    }


def test_extension_numbers() -> None:
    assert csi_pb2.csi_secret.number == 1059
    for ext in (
        csi_pb2.alpha_field,
        csi_pb2.alpha_enum,
        csi_pb2.alpha_enum_value,
        csi_pb2.alpha_message,
        csi_pb2.alpha_method,
        csi_pb2.alpha_service,
    ):
        assert ext.number == 1060
    extendee = csi_pb2.csi_secret.containing_type
    assert extendee is not None
    assert extendee.full_name == "google.protobuf.FieldOptions"


@pytest.mark.parametrize(("path", "number"), sorted(SECRET_FIELDS.items()))
def test_secret_fields_are_marked(path: str, number: int) -> None:
    field = _field(path)
    assert field.number == number
    assert field.GetOptions().Extensions[csi_pb2.csi_secret] is True


def test_no_other_field_is_marked_secret() -> None:
    marked = {
        f"{m.full_name.removeprefix('csi.v1.')}.{f.name}"
        for m in _all_messages(list(FILE.message_types_by_name.values()))
        for f in m.fields
        if f.GetOptions().Extensions[csi_pb2.csi_secret]
    }
    assert marked == set(SECRET_FIELDS)


def test_secret_maps_are_string_maps() -> None:
    for path in SECRET_FIELDS:
        field = _field(path)
        assert field.message_type is not None
        assert field.message_type.GetOptions().map_entry
        key, value = field.message_type.fields
        assert (key.type, value.type) == (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_STRING)


def test_create_volume_request_numbers() -> None:
    assert _numbers(csi_pb2.CreateVolumeRequest.DESCRIPTOR) == {
        "name": 1,
        "capacity_range": 2,
        "volume_capabilities": 3,
        "parameters": 4,
        "secrets": 5,
        "volume_content_source": 6,
        "accessibility_requirements": 7,
        "mutable_parameters": 8,
    }


def test_node_stage_and_publish_numbers() -> None:
    assert _numbers(csi_pb2.NodeStageVolumeRequest.DESCRIPTOR) == {
        "volume_id": 1,
        "publish_context": 2,
        "staging_target_path": 3,
        "volume_capability": 4,
        "secrets": 5,
        "volume_context": 6,
    }
    assert _numbers(csi_pb2.NodePublishVolumeRequest.DESCRIPTOR) == {
        "volume_id": 1,
        "publish_context": 2,
        "staging_target_path": 3,
        "target_path": 4,
        "volume_capability": 5,
        "readonly": 6,
        "secrets": 7,
        "volume_context": 8,
    }


def test_volume_capability_oneof() -> None:
    desc = csi_pb2.VolumeCapability.DESCRIPTOR
    assert _numbers(desc) == {"block": 1, "mount": 2, "access_mode": 3}
    oneof = desc.oneofs_by_name["access_type"]
    assert [f.name for f in oneof.fields] == ["block", "mount"]
    assert desc.fields_by_name["access_mode"].containing_oneof is None
    assert _numbers(csi_pb2.VolumeCapability.MountVolume.DESCRIPTOR) == {
        "fs_type": 1,
        "mount_flags": 2,
        "volume_mount_group": 3,
    }


def test_access_modes() -> None:
    mode = csi_pb2.VolumeCapability.AccessMode.Mode
    assert dict(mode.items()) == {
        "UNKNOWN": 0,
        "SINGLE_NODE_WRITER": 1,
        "SINGLE_NODE_READER_ONLY": 2,
        "MULTI_NODE_READER_ONLY": 3,
        "MULTI_NODE_SINGLE_WRITER": 4,
        "MULTI_NODE_MULTI_WRITER": 5,
        "SINGLE_NODE_SINGLE_WRITER": 6,
        "SINGLE_NODE_MULTI_WRITER": 7,
    }
    values = mode.DESCRIPTOR.values_by_name
    assert values["SINGLE_NODE_SINGLE_WRITER"].GetOptions().Extensions[csi_pb2.alpha_enum_value]
    assert values["SINGLE_NODE_MULTI_WRITER"].GetOptions().Extensions[csi_pb2.alpha_enum_value]


def test_node_capabilities() -> None:
    assert dict(csi_pb2.NodeServiceCapability.RPC.Type.items()) == {
        "UNKNOWN": 0,
        "STAGE_UNSTAGE_VOLUME": 1,
        "GET_VOLUME_STATS": 2,
        "EXPAND_VOLUME": 3,
        "VOLUME_CONDITION": 4,
        "SINGLE_NODE_MULTI_WRITER": 5,
        "VOLUME_MOUNT_GROUP": 6,
    }


def test_controller_capabilities() -> None:
    rpc_type = csi_pb2.ControllerServiceCapability.RPC.Type
    assert dict(rpc_type.items()) == {
        "UNKNOWN": 0,
        "CREATE_DELETE_VOLUME": 1,
        "PUBLISH_UNPUBLISH_VOLUME": 2,
        "LIST_VOLUMES": 3,
        "GET_CAPACITY": 4,
        "CREATE_DELETE_SNAPSHOT": 5,
        "LIST_SNAPSHOTS": 6,
        "CLONE_VOLUME": 7,
        "PUBLISH_READONLY": 8,
        "EXPAND_VOLUME": 9,
        "LIST_VOLUMES_PUBLISHED_NODES": 10,
        "VOLUME_CONDITION": 11,
        "GET_VOLUME": 12,
        "SINGLE_NODE_MULTI_WRITER": 13,
        "MODIFY_VOLUME": 14,
        "GET_SNAPSHOT": 15,
    }
    values = rpc_type.DESCRIPTOR.values_by_name
    # v1.12.0: ModifyVolume is GA, GetSnapshot is alpha.
    assert not values["MODIFY_VOLUME"].GetOptions().Extensions[csi_pb2.alpha_enum_value]
    assert values["GET_SNAPSHOT"].GetOptions().Extensions[csi_pb2.alpha_enum_value]


def test_plugin_capabilities() -> None:
    assert dict(csi_pb2.PluginCapability.Service.Type.items()) == {
        "UNKNOWN": 0,
        "CONTROLLER_SERVICE": 1,
        "VOLUME_ACCESSIBILITY_CONSTRAINTS": 2,
        "GROUP_CONTROLLER_SERVICE": 3,
        "SNAPSHOT_METADATA_SERVICE": 4,
    }
    assert dict(csi_pb2.PluginCapability.VolumeExpansion.Type.items()) == {
        "UNKNOWN": 0,
        "ONLINE": 1,
        "OFFLINE": 2,
    }


def test_alpha_markers() -> None:
    controller = FILE.services_by_name["Controller"].methods_by_name
    assert controller["GetSnapshot"].GetOptions().Extensions[csi_pb2.alpha_method]
    assert controller["ControllerGetVolume"].GetOptions().Extensions[csi_pb2.alpha_method]
    assert not controller["ControllerModifyVolume"].GetOptions().Extensions[csi_pb2.alpha_method]
    smd = FILE.services_by_name["SnapshotMetadata"]
    assert smd.GetOptions().Extensions[csi_pb2.alpha_service]
    for name in ("GetSnapshotRequest", "GetSnapshotResponse", "VolumeCondition"):
        opts = FILE.message_types_by_name[name].GetOptions()
        assert opts.Extensions[csi_pb2.alpha_message], name
    modify = FILE.message_types_by_name["ControllerModifyVolumeRequest"].GetOptions()
    assert not modify.Extensions[csi_pb2.alpha_message]
    assert (
        not _field("CreateVolumeRequest.mutable_parameters")
        .GetOptions()
        .Extensions[csi_pb2.alpha_field]
    )
    assert _field("NodeExpandVolumeRequest.secrets").GetOptions().Extensions[csi_pb2.alpha_field]
    assert (
        _field("GetCapacityResponse.minimum_volume_size")
        .GetOptions()
        .Extensions[csi_pb2.alpha_field]
    )


def test_services_and_methods() -> None:
    assert set(FILE.services_by_name) == set(SERVICES)
    for service, methods in SERVICES.items():
        desc = FILE.services_by_name[service]
        assert [m.name for m in desc.methods] == methods
        for m in desc.methods:
            assert m.input_type.name == f"{m.name}Request"
            assert m.output_type.name == f"{m.name}Response"
            assert not m.client_streaming
            assert m.server_streaming == (service == "SnapshotMetadata")
        assert hasattr(csi_pb2_grpc, f"{service}Servicer")
        assert hasattr(csi_pb2_grpc, f"{service}Stub")
        assert hasattr(csi_pb2_grpc, f"add_{service}Servicer_to_server")


def test_secret_round_trip_on_the_wire() -> None:
    req = csi_pb2.NodeStageVolumeRequest(
        volume_id="v", staging_target_path="/s", secrets={"password": "p"}
    )
    again = csi_pb2.NodeStageVolumeRequest.FromString(req.SerializeToString())
    assert again.secrets["password"] == "p"
    assert again.volume_id == "v"


def _contract_listing(proto: descriptor_pb2.FileDescriptorProto) -> str:
    """A canonical text form of the whole contract (comments excluded)."""
    lines: list[str] = [f"package {proto.package} {proto.syntax}"]

    def opts(o: object) -> str:
        assert hasattr(o, "SerializeToString")
        return bytes(o.SerializeToString(deterministic=True)).hex()

    def enum(e: descriptor_pb2.EnumDescriptorProto, prefix: str) -> None:
        lines.append(f"enum {prefix}{e.name} {opts(e.options)}")
        lines.extend(f"  {v.name}={v.number} {opts(v.options)}" for v in e.value)

    def msg(m: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        name = prefix + m.name
        lines.append(f"message {name} {opts(m.options)}")
        for f in m.field:
            oneof = m.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else ""
            lines.append(
                f"  {f.name}={f.number} {f.label} {f.type} {f.type_name} {oneof} "
                f"{f.proto3_optional} {opts(f.options)}"
            )
        for e in m.enum_type:
            enum(e, name + ".")
        for n in m.nested_type:
            msg(n, name + ".")

    for m in proto.message_type:
        msg(m, "")
    for e in proto.enum_type:
        enum(e, "")
    for s in proto.service:
        lines.append(f"service {s.name} {opts(s.options)}")
        lines.extend(
            f"  {r.name} {r.input_type} {r.output_type} {r.client_streaming} "
            f"{r.server_streaming} {opts(r.options)}"
            for r in s.method
        )
    lines.extend(f"extend {x.extendee} {x.name}={x.number} {x.type}" for x in proto.extension)
    return "\n".join(lines)


def test_whole_contract_digest() -> None:
    # Computed from the upstream v1.12.0 descriptor; any drift changes it.
    proto = descriptor_pb2.FileDescriptorProto()
    FILE.CopyToProto(proto)
    digest = hashlib.sha256(_contract_listing(proto).encode()).hexdigest()
    assert digest == "8e2988312a4049026d8356eb9c99d68bcd79608e7850c1e051e63c6419e1df53"
