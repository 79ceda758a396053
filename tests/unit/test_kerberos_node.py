"""Kerberos volumes on the Linux node over the stateful fakes (kernel, KDC).

* self-healing of a Kerberos staging: fresh tickets from the keytab the node
  keeps (also after a driver restart), nothing touched while the KDC or the
  server is down, a clear refusal for an expired credential cache;
* NFS ``sec=krb5*`` fed from the secret: root's cache for rpc.gssd, one
  identity per node, removed with the last staging;
* inline ephemeral volumes with Kerberos keys.

The real KDC and kernel: tests/e2e/inside/kerberos_inside.py.
"""

from __future__ import annotations

import base64
import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from driver import rpc
from driver.ccache import parse_ccache
from driver.csi import csi_pb2
from driver.errors import DriverError, FailedPrecondition, Internal, InvalidArgument, Unavailable
from node.linux.krb5files import volume_key
from tests.fakes.kdc import UNKNOWN_TEXT, make_ccache
from tests.fakes.linux import World, options_of
from tests.secret_scan import register_secret
from tests.unit.test_node_ephemeral import POD_INFO, inline_req, unpublish_req
from tests.unit.test_node_service import CTX, SMB_CONTEXT, cap, publish_req, stage_req

KEYTAB_BYTES = b"\x05\x02" + b"keytab-body-" * 4
KEYTAB = register_secret(base64.b64encode(KEYTAB_BYTES).decode())
KEYTAB_SECRET = {"username": "u@R", "keytab": KEYTAB, "kdc": "kdc1"}
SMB_SERVER = ("srv", 445)
NFS_KRB5 = {"protocol": "nfs", "source": "nfs1:/export", "subDir": "pvc-k"}


async def republish(world: World, context: dict[str, str], **kw: Any) -> list[Any]:
    """kubelet's republish; the repairs it counted (raises what it raised)."""
    token = rpc.begin("NodePublishVolume")
    try:
        await world.service.NodePublishVolume(publish_req(world, volume_context=context, **kw), CTX)
    finally:
        info = rpc.current()
        repairs = list(info.repairs or []) if info is not None else []
        rpc.end(token)
    return repairs


async def republish_error(world: World, context: dict[str, str], **kw: Any) -> DriverError:
    with pytest.raises(DriverError) as info:
        await republish(world, context, **kw)
    return info.value


async def condition(world: World) -> Any:
    stats = await world.service.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id="vol-1", volume_path=world.target()), CTX
    )
    return stats.volume_condition


def krb5_files(world: World) -> list[str]:
    return sorted(
        str(p.relative_to(world.krb5_dir)) for p in world.krb5_dir.rglob("*") if p.is_file()
    )


async def staged_smb(world: World, secrets: dict[str, str]) -> None:
    await world.service.NodeStageVolume(stage_req(world, secrets=secrets), CTX)
    await world.service.NodePublishVolume(publish_req(world), CTX)


# ---------------------------------------------------------------- SMB self-healing


async def test_kerberos_staging_heals_with_fresh_tickets_after_expiry(world: World) -> None:
    """The ticket expired while the server (and its KDC) were away: the
    republish waits for both, then gets new tickets from the keytab and
    remounts with sec=krb5 and the cruid."""
    await staged_smb(world, KEYTAB_SECRET)
    cache = world.krb5_dir / "cc" / volume_key(world.staging())
    first_mount = world.runner.fs_mounts()[-1]
    assert "sec=krb5" in options_of(first_mount)
    world.host.break_mount(world.staging(), errno.EHOSTDOWN)
    world.host.down.add(SMB_SERVER)
    world.kdc.down = True
    world.clock[0] += 5000  # the 1000 s ticket ended while everything was down

    error = await republish_error(world, SMB_CONTEXT)
    assert isinstance(error, Unavailable)
    assert "does not answer yet" in error.message

    world.host.down.clear()  # the file server answers, its KDC not yet
    before, kdc_calls = list(world.host.entries), len(world.kdc.calls)
    error = await republish_error(world, SMB_CONTEXT)
    assert isinstance(error, Unavailable)
    assert "KDC does not answer yet" in error.message
    assert "Cannot contact any KDC" in error.message  # our words for the tool's reason
    assert world.host.entries == before  # nothing detached while no ticket could be had
    assert len(world.kdc.calls) == kdc_calls + 1
    assert "KDC does not answer" in (await condition(world)).message

    world.kdc.down = False
    calls = len(world.runner.calls)
    assert await republish(world, SMB_CONTEXT) == [("smb", True)]
    new = world.runner.calls[calls:]
    assert [c.argv[0] for c in new] == ["kinit", "kvno", "umount", "mount", "mount"]
    remount = next(c for c in new if c.argv[:2] == ("mount", "-t"))
    options = options_of(remount.argv)
    assert "sec=krb5" in options
    assert f"cruid={world.platforms[-1].tickets.uid}" in options
    assert not any(o.startswith("credentials=") for o in options)
    assert remount.env == {"KRB5CCNAME": f"FILE:{cache}"}
    assert remount.credentials is None
    tgt = parse_ccache(cache.read_bytes()).tgt()
    assert tgt is not None
    assert tgt.end > world.clock[0]  # the cache the remount used is fresh
    assert not (await condition(world)).abnormal

    await world.service.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id="vol-1", target_path=world.target()), CTX
    )
    await world.service.NodeUnstageVolume(
        csi_pb2.NodeUnstageVolumeRequest(volume_id="vol-1", staging_target_path=world.staging()),
        CTX,
    )
    assert world.host.entries == []
    assert krb5_files(world) == []


async def test_kerberos_staging_heals_after_a_driver_restart(world: World) -> None:
    """Unlike a password, the keytab stays on the node's tmpfs: a restarted
    driver still repairs the staging."""
    await staged_smb(world, KEYTAB_SECRET)
    world.restart()
    world.host.break_mount(world.staging(), errno.ESTALE)
    assert await republish(world, SMB_CONTEXT) == [("smb", True)]
    assert "sec=krb5" in options_of(world.runner.fs_mounts()[-1])


async def test_expired_credential_cache_names_the_secret_it_needs(world: World) -> None:
    now = int(world.clock[0])
    data = make_ccache("u@R", [("krbtgt/R@R", now, now + 600, 0)])  # not renewable
    cache = register_secret(base64.b64encode(data).decode())
    await staged_smb(world, {"krb5ccache": cache, "kdc": "kdc1"})
    world.clock[0] += 700
    world.host.break_mount(world.staging(), errno.EKEYEXPIRED)
    before, calls = list(world.host.entries), len(world.runner.calls)

    error = await republish_error(world, SMB_CONTEXT)

    assert isinstance(error, FailedPrecondition)
    assert "expired" in error.message
    assert "new credential cache Secret" in error.message
    assert "not in the driver's memory" not in error.message
    assert world.host.entries == before
    assert len(world.runner.calls) == calls  # no kinit, no umount, no mount
    assert "new credential cache Secret" in (await condition(world)).message


async def test_renewable_credential_cache_is_renewed_for_the_remount(world: World) -> None:
    now = int(world.clock[0])
    data = make_ccache("u@R", [("krbtgt/R@R", now, now + 600, now + 100_000)])
    cache = register_secret(base64.b64encode(data).decode())
    await staged_smb(world, {"krb5ccache": cache, "kdc": "kdc1"})
    world.clock[0] += 590  # 10 s left: renewed before the remount
    world.host.break_mount(world.staging(), errno.ESTALE)
    calls = len(world.kdc.calls)
    assert await republish(world, SMB_CONTEXT) == [("smb", True)]
    assert world.kdc.calls[calls][0][:2] == ("kinit", "-R")


async def test_kerberos_files_gone_is_said_precisely(world: World) -> None:
    await staged_smb(world, KEYTAB_SECRET)
    world.restart()
    for path in sorted(world.krb5_dir.rglob("*"), reverse=True):
        if path.is_file():
            path.unlink()  # /run emptied under the driver
    world.host.break_mount(world.staging(), errno.ESTALE)
    # The fake mount table shows what the kernel shows for a krb5 mount.
    error = await republish_error(world, SMB_CONTEXT)
    assert isinstance(error, FailedPrecondition)
    assert "no Kerberos keytab or cache" in error.message


# ---------------------------------------------------------------- NFS for rpc.gssd


def nfs_stage(world: World, name: str, secrets: dict[str, str], flags: tuple[str, ...] = ()) -> Any:
    return stage_req(
        world,
        volume_id=name,
        staging_target_path=world.staging(name),
        volume_capability=cap(*(flags or ("vers=4.1", "sec=krb5"))),
        volume_context=NFS_KRB5,
        secrets=secrets,
    )


def nfs_unstage(world: World, name: str) -> Any:
    return csi_pb2.NodeUnstageVolumeRequest(volume_id=name, staging_target_path=world.staging(name))


async def test_nfs_krb5_tickets_for_rpc_gssd(world: World) -> None:
    svc = world.service
    await svc.NodeStageVolume(nfs_stage(world, "a", KEYTAB_SECRET), CTX)
    cache = world.krb5_dir / "nfs" / "krb5cc_0"
    st = cache.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o600)  # root in a node pod
    assert stat.S_IMODE((world.krb5_dir / "nfs").stat().st_mode) == 0o700
    conf = (world.krb5_dir / "nfs" / "krb5.conf").read_text()
    assert "default_realm = R" in conf
    assert "kdc = kdc1" in conf
    assert "rdns = false" in conf
    assert world.kdc.calls[-1][0] == ("kvno", "-c", world.kdc.calls[-1][0][2], "nfs/nfs1@")
    (mount,) = world.runner.fs_mounts()
    assert "sec=krb5" in options_of(mount)
    assert world.runner.calls[-1].env is None  # rpc.gssd finds the cache, not the mount
    assert KEYTAB not in (world.krb5_dir / "nfs" / "krb5.conf").read_text()

    # A second volume with the same identity shares it; another identity is refused.
    await svc.NodeStageVolume(nfs_stage(world, "b", KEYTAB_SECRET), CTX)
    other = {"username": "v@R", "keytab": KEYTAB, "kdc": "kdc1"}
    calls = len(world.runner.calls)
    with pytest.raises(FailedPrecondition, match="already authenticate as u@R") as info:
        await svc.NodeStageVolume(nfs_stage(world, "c", other), CTX)
    assert "v@R" in info.value.message
    assert len(world.runner.calls) == calls  # no kinit, no mount
    assert world.host.at(world.staging("c")) == []

    await svc.NodeUnstageVolume(nfs_unstage(world, "a"), CTX)
    assert cache.exists()  # b still uses it
    await svc.NodeUnstageVolume(nfs_unstage(world, "b"), CTX)
    assert not cache.exists()
    assert krb5_files(world) == []
    # Nobody uses an identity any more: another one is fine now.
    await svc.NodeStageVolume(nfs_stage(world, "c", other), CTX)
    await svc.NodeUnstageVolume(nfs_unstage(world, "c"), CTX)


async def test_nfs_krb5_staging_heals_with_fresh_tickets(world: World) -> None:
    svc = world.service
    await svc.NodeStageVolume(nfs_stage(world, "vol", KEYTAB_SECRET), CTX)
    await svc.NodePublishVolume(
        publish_req(
            world,
            volume_id="vol",
            staging_target_path=world.staging("vol"),
            volume_capability=cap("vers=4.1", "sec=krb5"),
            volume_context=NFS_KRB5,
        ),
        CTX,
    )
    world.clock[0] += 5000
    world.host.break_mount(world.staging("vol"), errno.ESTALE)
    calls = len(world.runner.calls)
    repairs = await republish(
        world,
        NFS_KRB5,
        volume_id="vol",
        staging_target_path=world.staging("vol"),
        volume_capability=cap("vers=4.1", "sec=krb5"),
    )
    assert repairs == [("nfs", True)]
    assert [c.argv[0] for c in world.runner.calls[calls:]][:2] == ["kinit", "kvno"]


@pytest.mark.parametrize(
    ("context", "flags", "secrets", "match"),
    [
        (NFS_KRB5, ("vers=4.1",), KEYTAB_SECRET, "sec=krb5"),  # keys without sec=krb5*
        ({**NFS_KRB5, "source": "10.0.0.5:/export"}, (), KEYTAB_SECRET, "host name"),
    ],
)
async def test_nfs_kerberos_refusals(
    world: World, context: dict[str, str], flags: tuple[str, ...], secrets: dict[str, str],
    match: str,
) -> None:  # fmt: skip
    request = nfs_stage(world, "x", secrets, flags)
    request.volume_context.clear()
    request.volume_context.update(context)
    with pytest.raises(InvalidArgument, match=match):
        await world.service.NodeStageVolume(request, CTX)
    assert world.host.entries == []
    assert krb5_files(world) == []


async def test_nfs_without_kerberos_keys_needs_no_tickets(world: World) -> None:
    await world.service.NodeStageVolume(nfs_stage(world, "plain", {}), CTX)
    assert world.kdc.calls == []
    await world.service.NodeUnstageVolume(nfs_unstage(world, "plain"), CTX)


# ---------------------------------------------------------------- inline volumes


async def test_inline_smb_volume_with_a_keytab(world: World) -> None:
    attrs = {"source": "//srv/share/base", "subDir": "reports"}
    svc = world.service
    await svc.NodePublishVolume(inline_req(world, attrs, secrets=KEYTAB_SECRET), CTX)
    (mount,) = world.runner.fs_mounts()
    options = options_of(mount)
    assert "sec=krb5" in options
    assert any(o.startswith("cruid=") for o in options)
    cache = world.krb5_dir / "cc" / volume_key(world.target())
    assert world.runner.calls[-1].env == {"KRB5CCNAME": f"FILE:{cache}"}
    assert cache.exists()

    world.host.break_mount(world.target(), errno.ESTALE)
    world.clock[0] += 5000
    token = rpc.begin("NodePublishVolume")
    try:
        await svc.NodePublishVolume(inline_req(world, attrs, secrets=KEYTAB_SECRET), CTX)
        info = rpc.current()
        assert info is not None
        assert info.repairs == [("smb", True)]
    finally:
        rpc.end(token)
    assert "sec=krb5" in options_of(world.runner.fs_mounts()[-1])

    await svc.NodeUnpublishVolume(unpublish_req(world), CTX)
    assert world.host.entries == []
    assert krb5_files(world) == []


async def test_inline_nfs_volume_with_a_keytab(world: World) -> None:
    attrs = {"source": "nfs1:/export", "subDir": "data", "mountOptions": "vers=4.1,sec=krb5p"}
    await world.service.NodePublishVolume(inline_req(world, attrs, secrets=KEYTAB_SECRET), CTX)
    assert (world.krb5_dir / "nfs" / "krb5cc_0").exists()
    await world.service.NodeUnpublishVolume(unpublish_req(world), CTX)
    assert krb5_files(world) == []


async def test_inline_refused_keytab_leaves_nothing(world: World) -> None:
    world.kdc.refuse = "kinit: Preauthentication failed while getting initial credentials"
    attrs = {**POD_INFO, "source": "//srv/share/base"}
    with pytest.raises(DriverError, match="Preauthentication failed"):
        await world.service.NodePublishVolume(inline_req(world, attrs, secrets=KEYTAB_SECRET), CTX)
    assert world.host.entries == []
    assert not Path(world.target()).exists()
    assert krb5_files(world) == []


async def test_an_unknown_kdc_reason_is_never_quoted(world: World) -> None:
    """The fake KDC answers with a text the driver does not know (registered
    with the session-wide secret scan: it must appear in no log or message)."""
    world.kdc.refuse = UNKNOWN_TEXT
    with pytest.raises(Internal) as info:
        await world.service.NodeStageVolume(stage_req(world, secrets=KEYTAB_SECRET), CTX)
    assert "a reason the driver does not know" in info.value.message
    assert UNKNOWN_TEXT not in info.value.message
    assert world.host.entries == []
    assert krb5_files(world) == []


async def test_nfs_identity_survives_a_driver_restart(world: World) -> None:
    """The markers and the keeper's files are on the node's tmpfs: a restarted
    driver still refuses a second identity, repairs, and removes the cache
    with the last unstage."""
    svc = world.service
    await svc.NodeStageVolume(nfs_stage(world, "a", KEYTAB_SECRET), CTX)
    svc = world.restart()
    other = {"username": "v@R", "keytab": KEYTAB, "kdc": "kdc1"}
    with pytest.raises(FailedPrecondition, match="already authenticate as u@R"):
        await svc.NodeStageVolume(nfs_stage(world, "b", other), CTX)
    await svc.NodeUnstageVolume(nfs_unstage(world, "a"), CTX)
    assert not (world.krb5_dir / "nfs" / "krb5cc_0").exists()
    assert krb5_files(world) == []
