"""Fuzzing every RPC through a real gRPC server (fake backends, so it is fast).

Random and adversarial parameters, volume IDs, paths, templates, capabilities
and secrets.  The only acceptable answers are success or a documented code
(never INTERNAL, UNKNOWN or a crash), and the fake share records every path
it is asked to touch: none may lie outside the share root.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from driver.csi import csi_pb2
from tests.faults.fuzzing import SECRET, SETTINGS, Answers, Server, nasty_text

pytestmark = pytest.mark.faults

ANSWERS = Answers()
call = ANSWERS.call


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("fuzz") / "csi.sock")
    yield srv
    srv.close()
    assert srv.backends.all_escapes == []
    ANSWERS.check_reached(("CreateVolume", "DeleteVolume", "NodeStageVolume", "NodePublishVolume"))


# -- strategies ------------------------------------------------------------------

sources = st.one_of(
    st.sampled_from(
        [
            "//srv/share",
            "//srv:445/share/base",
            "srv:/export",
            "nfs://srv:2049/e/x",
            "//[::1]/s",
            "[::1]:/e",
            "//srv/../x",
            "srv:/a/../../b",
            "//srv",
            "ftp://x",
        ]
    ),
    nasty_text,
)
param_keys = st.sampled_from(
    [
        "source",
        "Source",
        "protocol",
        "subDir",
        "SUBDIR",
        "onDelete",
        "mountPermissions",
        "csi.storage.k8s.io/pvc/name",
        "csi.storage.k8s.io/pvc/namespace",
        "csi.storage.k8s.io/pv/name",
        "smbSource",
        "nfsSource",
        "provisionVia",
        "linuxProtocol",
        "bogus",
        "",
    ]
)
bad_params = st.dictionaries(param_keys, nasty_text, max_size=6).flatmap(
    lambda d: st.builds(lambda s: {**d, "source": s} if "source" not in d else d, sources)
)
_slug = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
good_params = st.fixed_dictionaries(
    {"source": st.sampled_from(["//srv/share/base", "srv:/export", "nfs://srv:2050/e"])},
    optional={
        "subDir": st.sampled_from(["${pvc.metadata.namespace}/${pvc.metadata.name}", "x/y", "z"]),
        "onDelete": st.sampled_from(["delete", "retain", "archive"]),
        "mountPermissions": st.sampled_from(["0777", "2770"]),
        "csi.storage.k8s.io/pvc/name": _slug,
        "csi.storage.k8s.io/pvc/namespace": _slug,
    },
)
# Dual-protocol classes: one tree over SMB and NFS (a traversal attempt in
# either source or subDir must be refused before anything is touched).
dual_params = st.fixed_dictionaries(
    {
        "smbSource": st.one_of(st.just("//srv/share/base"), sources),
        "nfsSource": st.one_of(st.just("srv:/export/base"), sources),
    },
    optional={
        "provisionVia": st.sampled_from(["nfs", "smb", "NFS", "ftp", ""]),
        "linuxProtocol": st.sampled_from(["nfs", "smb", "cifs"]),
        "subDir": st.one_of(st.sampled_from(["x/y", "../..", "${pvc.metadata.name}"]), nasty_text),
        "source": sources,
    },
)
params = st.one_of(good_params, bad_params, dual_params)
good_names = st.from_regex(r"pvc-[a-z0-9]{1,12}", fullmatch=True)
secrets_maps = st.one_of(
    st.just({"username": "u", "password": SECRET}),
    st.dictionaries(
        st.sampled_from(["username", "password", "domain", "Password", "x"]),
        st.one_of(st.just(SECRET), st.text(max_size=10)),
        max_size=4,
    ),
)
access_modes = st.sampled_from([*list(csi_pb2.VolumeCapability.AccessMode.Mode.values()), 99])


GOOD_CAP = csi_pb2.VolumeCapability(
    mount=csi_pb2.VolumeCapability.MountVolume(),
    access_mode=csi_pb2.VolumeCapability.AccessMode(
        mode=csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER
    ),
)


@st.composite
def capabilities(draw: st.DrawFn) -> csi_pb2.VolumeCapability:
    if draw(st.booleans()):
        return GOOD_CAP
    cap = csi_pb2.VolumeCapability(
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=draw(access_modes))
    )
    kind = draw(st.sampled_from(["mount", "block", "none"]))
    if kind == "mount":
        cap.mount.fs_type = draw(st.sampled_from(["", "cifs", "nfs", "ext4", "xfs"]))
        cap.mount.mount_flags.extend(
            draw(
                st.lists(
                    st.sampled_from(
                        [
                            "nfsvers=3",
                            "vers=4.1",
                            "nfsvers=9",
                            "port=1",
                            "port=x",
                            "sec=krb5",
                            "ro",
                            "gid=5",
                        ]
                    ),
                    max_size=3,
                )
            )
        )
        cap.mount.volume_mount_group = draw(st.sampled_from(["", "1000", "x"]))
    elif kind == "block":
        cap.block.SetInParent()
    return cap


volume_ids = st.one_of(
    st.sampled_from(
        [
            "v1#smb#srv#share#pvc#delete",
            "v1#smb#srv#share#a/b#archive",
            "v1#nfs#srv#/e#pvc#retain#vers=3",
            "v1#smb#srv#share#..#delete",
            "v1#smb#srv#share#a%2F..%2F..#delete",
            "v1#smb#srv#share#%00#delete",
            "v1#nfs#srv#/e/../x#p#delete",
            "",
            "garbage",
            "v1#smb#srv#share#CON#delete",
            "v2#nfs#nfs#srv#share#base#srv#/export/base#pvc#delete",
            "v2#smb#smb#srv#share##srv#/e#a/b#archive#vers=3",
            "v2#nfs#nfs#srv#share#..#srv#/export#pvc#delete",
            "v2#nfs#nfs#srv#share#base#srv#/export/../x#pvc#delete",
            "v2#nfs#nfs#srv#share#base#srv#/export#a%2F..%2F..#delete",
        ]
    ),
    st.text(max_size=60),
)
# Where kubelet puts staging and target paths (the driver's default --kubelet-dir).
KUBELET_STAGING = "/var/lib/kubelet/plugins/kubernetes.io/csi/d/x/globalmount"
KUBELET_TARGET = "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pv/mount"
paths = st.one_of(
    st.sampled_from([KUBELET_STAGING, KUBELET_TARGET]),
    st.sampled_from(["/x/../y", "relative", "", "/a\x00b", "/", "/tmp/s", "/var/lib/kubelet/x"]),
    st.text(max_size=30),
)
good_context = st.one_of(
    st.fixed_dictionaries(
        {
            "source": st.sampled_from(["//srv/share", "srv:/export", "nfs://srv:2050/e/x"]),
            "subDir": st.sampled_from(["pvc-1", "a/b", ""]),
        }
    ),
    st.fixed_dictionaries(
        {
            "smbSource": st.sampled_from(["//srv/share/base", "//srv/share", "//srv/s/../x"]),
            "nfsSource": st.sampled_from(["srv:/export/base", "nfs://srv:2050/e", "srv:/../x"]),
            "subDir": st.sampled_from(["pvc-1", "a/b", "", "../.."]),
            "linuxProtocol": st.sampled_from(["nfs", "smb", "x"]),
        }
    ),
)


@SETTINGS
@given(
    name=st.one_of(good_names, nasty_text),
    parameters=params,
    secrets=secrets_maps,
    caps=st.one_of(st.just([GOOD_CAP]), st.lists(capabilities(), max_size=2)),
    required=st.integers(-5, 1 << 40),
    limit=st.integers(-5, 1 << 40),
)
# A valid request always runs, so the success path is reached whatever the draw.
@example(
    name="pvc-example",
    parameters={"source": "//srv/share/base"},
    secrets={"username": "u", "password": SECRET},
    caps=[GOOD_CAP],
    required=1,
    limit=0,
)
def test_create_volume(
    server: Server,
    name: str,
    parameters: dict[str, str],
    secrets: dict[str, str],
    caps: list[csi_pb2.VolumeCapability],
    required: int,
    limit: int,
) -> None:
    req = csi_pb2.CreateVolumeRequest(
        name=name, parameters=parameters, secrets=secrets, volume_capabilities=caps
    )
    req.capacity_range.required_bytes = required
    req.capacity_range.limit_bytes = limit
    call(server.controller.CreateVolume, req, "CreateVolume")


@SETTINGS
@given(volume_id=volume_ids, secrets=secrets_maps)
@example(volume_id="v1#smb#srv#share#pvc#delete", secrets={"username": "u", "password": SECRET})
def test_delete_volume(server: Server, volume_id: str, secrets: dict[str, str]) -> None:
    call(
        server.controller.DeleteVolume,
        csi_pb2.DeleteVolumeRequest(volume_id=volume_id, secrets=secrets),
        "DeleteVolume",
    )


@SETTINGS
@given(
    volume_id=volume_ids,
    secrets=secrets_maps,
    caps=st.lists(capabilities(), max_size=2),
    parameters=params,
)
def test_validate_and_expand(
    server: Server,
    volume_id: str,
    secrets: dict[str, str],
    caps: list[csi_pb2.VolumeCapability],
    parameters: dict[str, str],
) -> None:
    call(
        server.controller.ValidateVolumeCapabilities,
        csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=volume_id, secrets=secrets, volume_capabilities=caps, parameters=parameters
        ),
        "ValidateVolumeCapabilities",
    )
    call(
        server.controller.ControllerExpandVolume,
        csi_pb2.ControllerExpandVolumeRequest(
            volume_id=volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=1)
        ),
        "ControllerExpandVolume",
    )
    call(
        server.controller.GetCapacity,
        csi_pb2.GetCapacityRequest(parameters=parameters, volume_capabilities=caps),
        "GetCapacity",
    )


@SETTINGS
@given(
    volume_id=volume_ids,
    staging=paths,
    target=paths,
    cap=capabilities(),
    secrets=secrets_maps,
    context=st.one_of(
        good_context,
        st.dictionaries(
            st.sampled_from(
                ["source", "subDir", "protocol", "mountPermissions", "smbSource", "nfsSource", "x"]
            ),
            nasty_text,
            max_size=4,
        ),
    ),
    readonly=st.booleans(),
)
# A valid stage, publish, stats, unpublish, unstage always runs, so the
# success paths are reached whatever the draw (a CI run once missed them).
@example(
    volume_id="v1#smb#srv#share#pvc#delete",
    staging=KUBELET_STAGING,
    target=KUBELET_TARGET,
    cap=GOOD_CAP,
    secrets={"username": "u", "password": SECRET},
    context={"source": "//srv/share", "subDir": "pvc"},
    readonly=False,
)
def test_node_rpcs(
    server: Server,
    volume_id: str,
    staging: str,
    target: str,
    cap: csi_pb2.VolumeCapability,
    secrets: dict[str, str],
    context: dict[str, str],
    readonly: bool,
) -> None:
    call(
        server.node.NodeStageVolume,
        csi_pb2.NodeStageVolumeRequest(
            volume_id=volume_id,
            staging_target_path=staging,
            volume_capability=cap,
            secrets=secrets,
            volume_context=context,
        ),
        "NodeStageVolume",
    )
    call(
        server.node.NodePublishVolume,
        csi_pb2.NodePublishVolumeRequest(
            volume_id=volume_id,
            staging_target_path=staging,
            target_path=target,
            volume_capability=cap,
            readonly=readonly,
            volume_context=context,
        ),
        "NodePublishVolume",
    )
    call(
        server.node.NodeGetVolumeStats,
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=target),
        "NodeGetVolumeStats",
    )
    call(
        server.node.NodeUnpublishVolume,
        csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target),
        "NodeUnpublishVolume",
    )
    call(
        server.node.NodeUnstageVolume,
        csi_pb2.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging),
        "NodeUnstageVolume",
    )
    for stage in server.platform.staged.values():
        for part in stage.subdir.split("/"):  # type: ignore[attr-defined]
            assert part not in ("..", ".")
