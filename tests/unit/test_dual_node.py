"""Dual-protocol volumes on nodes: the Linux platform over its fake kernel
(tests/unit/linux/) and the Windows platform over its fake host
(tests/unit/test_node_windows.py), both behind the real Node service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driver.csi import csi_pb2
from driver.errors import FailedPrecondition, InvalidArgument
from node.dual import LINUX_HELPERS, locate_dual
from node.service import NodeService
from tests.csi_requests import cap
from tests.fakes.linux import PASSWORD, World, all_text
from tests.unit.windows.fake import PASSWORD as WIN_PASSWORD
from tests.unit.windows.fake import (
    ROOT,
    FakeWindows,
    key,
    staging_of,
    target_of,
)
from tests.unit.windows.fake import make_platform as make_windows

CTX: Any = None
DUAL_CONTEXT = {
    "smbSource": "//fileserver/share/base",
    "nfsSource": "fileserver:/export/base",
    "subDir": "pvc-1",
    "linuxProtocol": "nfs",
}
V2_ID = "v2#nfs#nfs#fileserver#share#base#fileserver#/export/base#pvc-1#delete"
SECRETS = {"username": "CORP\\alice", "password": PASSWORD}
FLAGS = ("nfs:nfsvers=4.1", "smb:vers=3.1.1", "smb:dir_mode=0777")


class Helpers:
    """The node's mount helpers: a set of installed programs; records lookups."""

    def __init__(self, *installed: str) -> None:
        self.installed = set(installed)
        self.asked: list[str] = []

    def __call__(self, program: str) -> str | None:
        self.asked.append(program)
        return f"/sbin/{program}" if program in self.installed else None


ALL_HELPERS = tuple(program for program, _ in LINUX_HELPERS.values())


class LinuxNode(World):
    """A Linux node on the fakes (tests/fakes/linux.py) whose mount helpers are ``helpers``."""

    async def stage_publish(
        self, name: str, context: dict[str, str], secrets: dict[str, str]
    ) -> None:
        await self.service.NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                volume_id=V2_ID,
                staging_target_path=self.staging(name),
                volume_capability=cap(*FLAGS),
                volume_context=context,
                secrets=secrets,
            ),
            CTX,
        )
        await self.service.NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest(
                volume_id=V2_ID,
                staging_target_path=self.staging(name),
                target_path=self.target(name),
                volume_capability=cap(*FLAGS),
                volume_context=context,
            ),
            CTX,
        )

    async def teardown(self, name: str) -> None:
        await self.service.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=V2_ID, target_path=self.target(name)), CTX
        )
        await self.service.NodeUnstageVolume(
            csi_pb2.NodeUnstageVolumeRequest(
                volume_id=V2_ID, staging_target_path=self.staging(name)
            ),
            CTX,
        )


@pytest.fixture
async def linux(tmp_path: Path) -> AsyncIterator[LinuxNode]:
    node = LinuxNode(tmp_path, helpers=Helpers(*ALL_HELPERS))
    try:
        yield node
    finally:
        await node.aclose()


async def test_linux_mounts_nfs_by_default_without_a_secret(linux: LinuxNode) -> None:
    await linux.stage_publish("a", DUAL_CONTEXT, {})
    (mount,) = linux.runner.fs_mounts()
    assert mount[2] == "nfs"
    assert mount[3] == "fileserver:/export/base/pvc-1"
    options = mount[mount.index("-o") + 1]
    assert "nfsvers=4.1" in options
    assert "vers=3.1.1" not in options
    assert "dir_mode" not in options
    await linux.teardown("a")
    assert linux.host.mounts() == []


async def test_linux_mounts_cifs_with_linux_protocol_smb(linux: LinuxNode) -> None:
    context = {**DUAL_CONTEXT, "linuxProtocol": "smb"}
    with pytest.raises(InvalidArgument) as err:
        await linux.stage_publish("b", context, {"username": "alice"})
    assert "password" in err.value.message
    assert "linux node" in err.value.message
    assert linux.runner.fs_mounts() == []

    await linux.stage_publish("b", context, SECRETS)
    (mount,) = linux.runner.fs_mounts()
    assert mount[2] == "cifs"
    assert mount[3] == "//fileserver/share/base/pvc-1"
    options = mount[mount.index("-o") + 1]
    assert "vers=3.1.1" in options
    assert "nfsvers" not in options
    assert PASSWORD not in all_text(linux.runner)
    await linux.teardown("b")
    assert linux.host.mounts() == []


async def test_static_pv_with_only_a_v2_id(linux: LinuxNode) -> None:
    await linux.stage_publish("c", {}, {})
    await linux.stage_publish("e", {"linuxProtocol": "smb"}, SECRETS)  # its own choice
    assert [m[3] for m in linux.runner.fs_mounts()] == [
        "fileserver:/export/base/pvc-1",
        "//fileserver/share/base/pvc-1",
    ]
    await linux.teardown("c")
    await linux.teardown("e")


async def test_missing_mount_helper_is_a_failed_precondition(tmp_path: Path) -> None:
    helpers = Helpers("mount.cifs")  # nfs-common is not installed
    node = LinuxNode(tmp_path, helpers=helpers)
    with pytest.raises(FailedPrecondition) as err:
        await node.stage_publish("d", DUAL_CONTEXT, {})
    assert "mount.nfs" in err.value.message
    assert "nfs-common" in err.value.message
    assert "linuxProtocol" in err.value.message
    assert node.runner.fs_mounts() == []
    # The SMB side needs only mount.cifs.
    await node.stage_publish("d", {**DUAL_CONTEXT, "linuxProtocol": "smb"}, SECRETS)
    assert [m[2] for m in node.runner.fs_mounts()] == ["cifs"]
    # (publish locates the volume too: what a republish would repair)
    assert helpers.asked == ["mount.nfs", "mount.cifs", "mount.cifs"]
    await node.teardown("d")
    await node.aclose()


@pytest.mark.parametrize(
    ("context", "words"),
    [
        ({**DUAL_CONTEXT, "source": "//x/y"}, ["'source'", "smbSource"]),
        ({k: v for k, v in DUAL_CONTEXT.items() if k != "nfsSource"}, ["'nfsSource'"]),
        ({**DUAL_CONTEXT, "smbSource": "fileserver:/x"}, ["smbSource"]),
        ({**DUAL_CONTEXT, "nfsSource": "//fileserver/x/../.."}, ["nfsSource"]),
        ({**DUAL_CONTEXT, "subDir": "../../etc"}, ["subDir"]),
        ({**DUAL_CONTEXT, "linuxProtocol": "ftp"}, ["linuxProtocol"]),
    ],
)
def test_bad_contexts(context: dict[str, str], words: list[str]) -> None:
    with pytest.raises(InvalidArgument) as err:
        locate_dual("vol", context, "linux", helpers=Helpers(*ALL_HELPERS))
    for word in words:
        assert word in err.value.message


# ------------------------------------------------------------------ Windows


def windows_node() -> tuple[FakeWindows, NodeService]:
    fake = FakeWindows()
    fake.add_share(ROOT, "base/pvc-1")
    fake.accounts["corp\\alice"] = WIN_PASSWORD
    return fake, NodeService("win-1", make_windows(fake), helpers=Helpers())


async def test_windows_maps_the_smb_side() -> None:
    fake, service = windows_node()
    staging, target = staging_of("pvc-1"), target_of("pod-1", "pv-1")
    fake.mkdir_p(staging)
    fake.mkdir_p(target)
    secrets = {"username": "alice", "password": WIN_PASSWORD, "domain": "CORP"}
    stage = csi_pb2.NodeStageVolumeRequest(
        volume_id=V2_ID,
        staging_target_path=staging,
        volume_capability=cap(*FLAGS),
        volume_context=DUAL_CONTEXT,  # linuxProtocol nfs: Windows still mounts SMB
        secrets={"username": "alice"},
    )
    with pytest.raises(InvalidArgument) as err:
        await service.NodeStageVolume(stage, CTX)
    assert "password" in err.value.message
    assert "windows node" in err.value.message
    assert fake.mappings == {}

    stage.secrets.update(secrets)
    await service.NodeStageVolume(stage, CTX)
    await service.NodePublishVolume(
        csi_pb2.NodePublishVolumeRequest(
            volume_id=V2_ID,
            staging_target_path=staging,
            target_path=target,
            volume_capability=cap(*FLAGS),
            volume_context=DUAL_CONTEXT,
        ),
        CTX,
    )
    assert list(fake.mappings) == [key(ROOT)]
    assert fake.links[key("C:" + staging)] == ROOT + r"\base\pvc-1"
    await service.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id=V2_ID, target_path=target), CTX
    )
    await service.NodeUnstageVolume(
        csi_pb2.NodeUnstageVolumeRequest(volume_id=V2_ID, staging_target_path=staging), CTX
    )
    assert fake.links == {}
    assert fake.mappings == {}
    assert fake.violations == []


async def test_windows_still_refuses_nfs_only_volumes() -> None:
    fake, service = windows_node()
    staging = staging_of("pvc-9")
    fake.mkdir_p(staging)
    with pytest.raises(FailedPrecondition) as err:
        await service.NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                volume_id="v1#nfs#fileserver#/export#pvc-9#delete",
                staging_target_path=staging,
                volume_capability=cap(),
                volume_context={"source": "fileserver:/export", "subDir": "pvc-9"},
            ),
            CTX,
        )
    assert "NFS volumes are not supported on Windows" in err.value.message
    assert "smbSource + nfsSource" in err.value.message
    assert fake.calls == []
    assert fake.mappings == {}


_ATTACKS = st.sampled_from(["..", "../..", "a/../..", "\x00", "\\", "//", "CON", "a:b", "", "/"])


@given(
    st.sampled_from(["smbSource", "nfsSource", "subDir"]),
    _ATTACKS,
    st.text(max_size=10),
    st.sampled_from(["linux", "windows"]),
)
def test_context_fuzz_never_escapes(key: str, attack: str, noise: str, os_name: str) -> None:
    context = {**DUAL_CONTEXT, key: DUAL_CONTEXT[key] + "/" + attack + noise}
    try:
        choice = locate_dual("vol", context, os_name, helpers=Helpers(*ALL_HELPERS))
    except InvalidArgument:
        return
    assert choice is not None
    assert choice.protocol == ("smb" if os_name == "windows" else "nfs")
    for part in choice.dir.split("/"):
        assert part not in ("", ".", "..")
    assert ".." not in choice.root.share.split("/")
