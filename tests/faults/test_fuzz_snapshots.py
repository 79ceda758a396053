"""Fuzzing the snapshot RPCs and CreateVolume from a content source through a
real gRPC server with recording fakes (same rules as test_fuzz_rpc.py).

Only success or a documented code is acceptable; no answer may carry a
secret; and the fake shares record any path that would leave the share or
go through a symlink: there must be none, whatever the IDs, names, tokens
and parameters.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driver.csi import csi_pb2
from tests.csi_requests import cap
from tests.faults.fuzzing import SECRET, SETTINGS, Answers, Server, nasty_text

pytestmark = pytest.mark.faults

ANSWERS = Answers()
call = ANSWERS.call
SMB_SECRETS = {"username": "u", "password": SECRET}
CAP = cap()
VOLUMES = {
    "smb": ("//srv/share/base", "v1#smb#srv#share#base/src#delete"),
    "nfs": ("srv:/export", "v1#nfs#srv#/export#src#delete"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("fuzzsnap") / "csi.sock")
    for protocol, (source, vid) in VOLUMES.items():
        resp = srv.controller.CreateVolume(
            csi_pb2.CreateVolumeRequest(
                name=f"src-{protocol}",
                parameters={"source": source, "subDir": "src"},
                volume_capabilities=[CAP],
                secrets=SMB_SECRETS if source.startswith("//") else {},
            ),
            timeout=10,
        )
        assert resp.volume.volume_id == vid
    for key, root in (("smb://srv/share", "base/src"), ("nfs://srv//export", "src")):
        share = srv.backends.share(key)
        share.dirs.add(f"{root}/d")
        for i in range(3):
            share.files.add(f"{root}/d/f{i}")
            share.contents[f"{root}/d/f{i}"] = b"x" * (i * 1000)
        share.links[f"{root}/ln"] = "d/f1"
    yield srv
    srv.close()
    assert srv.backends.all_escapes == []
    ANSWERS.check_reached(("CreateSnapshot", "DeleteSnapshot", "ListSnapshots", "CreateVolumeFrom"))


_names = st.one_of(st.from_regex(r"snap-[a-z0-9]{1,8}", fullmatch=True), nasty_text)
_volume_ids = st.one_of(
    st.sampled_from([vid for _, vid in VOLUMES.values()]),
    st.sampled_from(
        [
            "v1#nfs#srv#/export#missing#delete",
            "v1#nfs#srv#/export#..#delete",
            "v1#smb#srv#share#base/src#delete#vers=3",
            "garbage",
            "",
        ]
    ),
    nasty_text,
)
_snapshot_ids = st.one_of(
    st.builds(
        lambda area, name, src: f"s1#nfs#srv#/export#{area}{name}.tar.gz#{src}#delete",
        st.sampled_from(["", ".snapshots/", "../", "%2F", "src/", "a/../"]),
        st.sampled_from(["snap-1", "..", "%00", "x%2F..%2F..", ""]),
        st.sampled_from(["src", "..", "other", "src/d"]),
    ),
    st.sampled_from(
        [
            "s1#smb#srv#share#base/.snapshots/snap-1.tar.gz#base/src#delete",
            "s1#nfs#srv#/export#.snapshots/snap-1.tar.gz#src#delete",
            "s1#nfs#srv#/export#src/d/f1#src#delete",
            "s1#nfs#srv#/export#src.tar.gz#src#delete",
            "garbage",
            "",
        ]
    ),
    nasty_text,
)
_params = st.dictionaries(
    st.sampled_from(
        ["snapshotDir", "SNAPSHOTDIR", "bogus", "csi.storage.k8s.io/volumesnapshot/name"]
    ),
    st.one_of(
        st.sampled_from(["backups", "src/inside", "../up", "/abs", "a//b", ".snapshots"]),
        nasty_text,
    ),
    max_size=2,
)
_secrets = st.sampled_from([SMB_SECRETS, {}, {"username": "u"}])


@SETTINGS
@given(name=_names, vid=_volume_ids, parameters=_params, secrets=_secrets)
def test_create_snapshot(
    server: Server, name: str, vid: str, parameters: dict[str, str], secrets: dict[str, str]
) -> None:
    call(
        server.controller.CreateSnapshot,
        csi_pb2.CreateSnapshotRequest(
            name=name, source_volume_id=vid, parameters=parameters, secrets=secrets
        ),
        "CreateSnapshot",
    )


@SETTINGS
@given(sid=_snapshot_ids, secrets=_secrets)
def test_delete_snapshot(server: Server, sid: str, secrets: dict[str, str]) -> None:
    call(
        server.controller.DeleteSnapshot,
        csi_pb2.DeleteSnapshotRequest(snapshot_id=sid, secrets=secrets),
        "DeleteSnapshot",
    )


@SETTINGS
@given(
    sid=st.one_of(st.just(""), _snapshot_ids),
    vid=st.one_of(st.just(""), _volume_ids),
    max_entries=st.integers(-3, 5),
    token=st.one_of(st.just(""), nasty_text, st.just("n1.Z2FyYmFnZQ==")),
    secrets=_secrets,
)
def test_list_snapshots(
    server: Server, sid: str, vid: str, max_entries: int, token: str, secrets: dict[str, str]
) -> None:
    resp = call(
        server.controller.ListSnapshots,
        csi_pb2.ListSnapshotsRequest(
            snapshot_id=sid,
            source_volume_id=vid,
            max_entries=max_entries,
            starting_token=token,
            secrets=secrets,
        ),
        "ListSnapshots",
    )
    if resp is not None and resp.next_token:
        call(
            server.controller.ListSnapshots,
            csi_pb2.ListSnapshotsRequest(
                source_volume_id=vid, starting_token=resp.next_token, secrets=secrets
            ),
            "ListSnapshots",
        )


@SETTINGS
@given(
    protocol=st.sampled_from(["smb", "nfs"]),
    name=st.one_of(st.from_regex(r"pvc-[a-z0-9]{1,8}", fullmatch=True), nasty_text),
    kind=st.sampled_from(["snapshot", "volume", "empty"]),
    origin=st.one_of(_snapshot_ids, _volume_ids),
    snapshot_name=st.sampled_from(["snap-a", "snap-b"]),
)
def test_create_volume_from(
    server: Server, protocol: str, name: str, kind: str, origin: str, snapshot_name: str
) -> None:
    source, vid = VOLUMES[protocol]
    secrets = SMB_SECRETS if protocol == "smb" else {}
    made = call(
        server.controller.CreateSnapshot,
        csi_pb2.CreateSnapshotRequest(name=snapshot_name, source_volume_id=vid, secrets=secrets),
        "CreateSnapshot",
    )
    req = csi_pb2.CreateVolumeRequest(
        name=name, volume_capabilities=[CAP], parameters={"source": source}, secrets=secrets
    )
    if kind == "snapshot":
        # Half the time the real snapshot, else whatever was drawn.
        use = made.snapshot.snapshot_id if made is not None and len(name) % 2 else origin
        req.volume_content_source.snapshot.snapshot_id = use
    elif kind == "volume":
        req.volume_content_source.volume.volume_id = vid if len(name) % 2 else origin
    else:
        req.volume_content_source.SetInParent()
    call(server.controller.CreateVolume, req, "CreateVolumeFrom")
