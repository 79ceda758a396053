"""Kerberos SMB volumes with the kernel's cifs client (sec=krb5): staged
from a keytab or a credential cache, a rotated keytab refused with the
KDC's reason, tickets renewed while staged; and the controller provisioning
with the same secrets.  Collected through kerberos_inside.py.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from controller.smb.channel import SmbSettings
from controller.smb.pool import SmbBackendPool
from driver.ccache import parse_ccache
from driver.credentials import smb_auth
from node.linux import mountinfo
from node.linux.krb5files import volume_key
from tests.e2e.inside.common import create_volume, delete_volume, write_through
from tests.e2e.inside.krb5_domain import (
    KEYTAB,
    KRB5_UID,
    REALM,
    SERVER,
    SHARE_DIR,
    SOURCE,
    STALE_KEYTAB,
    EnvScan,
    assert_forgotten,
    assert_private,
    keytab_secret,
    kinit_cache,
    krb5_driver,
    share_dir,
    smb_volume,
    tgt_end,
)
from tests.secret_scan import register_secret


async def test_keytab_volume_stage_publish_unstage(tmp: Path) -> None:
    async with krb5_driver(tmp) as (c, krb5_dir):
        vol = smb_volume(tmp, "pvc-keytab", keytab_secret())
        scan = EnvScan(KEYTAB.encode())
        async with scan.watching():
            await c.node.NodeStageVolume(vol.stage())
        assert scan.passes > 0
        assert scan.leaks == [], scan.leaks
        assert scan.ccname_in <= {"mount", "mount.cifs"}, scan.ccname_in
        assert "KRB5CCNAME" not in os.environ
        (entry,) = mountinfo.at(mountinfo.read(), str(vol.staging))
        assert entry.fstype == "cifs"
        assert entry.super_option("sec") == "krb5", entry.super_options
        assert entry.super_option("cruid") == str(KRB5_UID), entry.super_options
        key = volume_key(str(vol.staging))
        assert_private(krb5_dir, key)
        cache = parse_ccache((krb5_dir / "cc" / key).read_bytes())
        servers = {str(t.server) for t in cache.tickets}
        assert f"krbtgt/{REALM}@{REALM}" in servers, servers

        await c.node.NodeStageVolume(vol.stage())  # idempotent
        assert len(mountinfo.at(mountinfo.read(), str(vol.staging))) == 1

        target = tmp / "kubelet" / "pods" / "p1" / "mount"
        await c.node.NodePublishVolume(vol.publish(target))
        write_through(target, "hello.txt", "written over Kerberos")
        assert (vol.server_dir / "hello.txt").read_text() == "written over Kerberos"

        await c.node.NodeUnpublishVolume(vol.unpublish(target))
        await c.node.NodeUnstageVolume(vol.unstage())
        assert not vol.staging.exists()
        assert_forgotten(krb5_dir)
        assert (vol.server_dir / "hello.txt").exists()


async def test_credential_cache_volume_with_the_upstream_key(tmp: Path) -> None:
    cache = register_secret(base64.b64encode(kinit_cache(tmp / "op.cc")).decode())
    async with krb5_driver(tmp) as (c, krb5_dir):
        # csi-driver-smb's key name; the user and realm come from the cache.
        vol = smb_volume(tmp, "pvc-ccache", {"krb5cc_1000": cache, "kdc": "127.0.0.1"})
        await c.node.NodeStageVolume(vol.stage())
        (entry,) = mountinfo.at(mountinfo.read(), str(vol.staging))
        assert entry.super_option("sec") == "krb5"
        target = tmp / "kubelet" / "pods" / "p2" / "mount"
        await c.node.NodePublishVolume(vol.publish(target))
        write_through(target, "cc.txt", "from a credential cache")
        assert (vol.server_dir / "cc.txt").read_text() == "from a credential cache"
        await c.node.NodeUnpublishVolume(vol.unpublish(target))
        await c.node.NodeUnstageVolume(vol.unstage())
        assert_forgotten(krb5_dir)


async def test_rotated_keytab_is_unauthenticated_with_the_kdc_reason(tmp: Path) -> None:
    async with krb5_driver(tmp) as (c, krb5_dir):
        vol = smb_volume(tmp, "pvc-stale", keytab_secret(STALE_KEYTAB, "stale"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.node.NodeStageVolume(vol.stage())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value.details()
        assert "Preauthentication failed" in (info.value.details() or "")
        assert STALE_KEYTAB not in (info.value.details() or "")
        assert mountinfo.at(mountinfo.read(), str(vol.staging)) == []
        assert_forgotten(krb5_dir)


async def test_tickets_are_renewed_while_staged(tmp: Path) -> None:
    """200 s tickets (Samba's KDC refuses service tickets for a TGT with less
    than ~3 min left, so no shorter): the keeper replaces the cache halfway,
    and cifs.upcall gets a new session from the replaced cache (a second
    mount with it, as a reconnect or a self-healing remount would).  Meanwhile
    the controller's SMB session, logged on with 200 s tickets, is used again
    after they have expired (a server that ends the session gets a new logon)."""
    pool = SmbBackendPool(SmbSettings(op_timeout=30), ticket_lifetime="200s")
    auth = smb_auth(keytab_secret(), which="test secret")
    backend = pool.get(SERVER, 445, "share", auth)
    share_dir("ctl-renew")
    await backend.mkdir("ctl-renew/before")
    logged_on = time.time()
    async with krb5_driver(tmp, lifetime="200s") as (c, krb5_dir):
        vol = smb_volume(tmp, "pvc-renew", keytab_secret())
        await c.node.NodeStageVolume(vol.stage())
        cache = krb5_dir / "cc" / volume_key(str(vol.staging))
        first = tgt_end(cache)
        deadline = time.time() + 200
        while time.time() < deadline and tgt_end(cache) <= first:
            await asyncio.sleep(1)
        assert tgt_end(cache) > first, "the ticket was not renewed"
        assert_private(krb5_dir, volume_key(str(vol.staging)))
        write_through(vol.staging, "still.txt", "the staged mount still works")
        again = tmp / "again"
        again.mkdir()
        mounted = subprocess.run(
            ["mount", "-t", "cifs", f"{SOURCE}/{vol.id}", str(again),
             "-o", f"sec=krb5,cruid={KRB5_UID},nosharesock"],
            env={**os.environ, "KRB5CCNAME": f"FILE:{cache}"}, capture_output=True, text=True,
            check=False,
        )  # fmt: skip
        assert mounted.returncode == 0, mounted.stderr
        assert (again / "still.txt").read_text() == "the staged mount still works"
        subprocess.run(["umount", str(again)], check=True)
        await c.node.NodeUnstageVolume(vol.unstage())
        assert_forgotten(krb5_dir)
    try:
        while time.time() < logged_on + 210:
            await asyncio.sleep(1)
        await backend.mkdir("ctl-renew/after-expiry")
        assert (SHARE_DIR / "ctl-renew" / "after-expiry").is_dir()
    finally:
        await pool.aclose()


# ---------------------------------------------------------------- controller


async def test_controller_provisions_with_a_keytab_end_to_end(tmp: Path) -> None:
    """No password anywhere: the controller makes and deletes the directory
    with a keytab, the node mounts it with the same secret."""
    async with krb5_driver(tmp, controller=True) as (c, krb5_dir):
        scan = EnvScan(KEYTAB.encode())
        async with scan.watching():
            vol = await create_volume(c, tmp, "pvc-ctl", SOURCE, SHARE_DIR, secrets=keytab_secret())
        assert scan.leaks == [], scan.leaks
        assert "KRB5CCNAME" not in os.environ
        target = tmp / "kubelet" / "pods" / "p3" / "mount"
        await c.node.NodeStageVolume(vol.stage())
        await c.node.NodePublishVolume(vol.publish(target))
        write_through(target, "pod.txt", "provisioned and mounted with a keytab")
        assert (vol.server_dir / "pod.txt").read_text().startswith("provisioned")
        await c.node.NodeUnpublishVolume(vol.unpublish(target))
        await c.node.NodeUnstageVolume(vol.unstage())
        assert_forgotten(krb5_dir)
        await delete_volume(c, vol)


async def test_controller_with_a_credential_cache(tmp: Path) -> None:
    cache = register_secret(base64.b64encode(kinit_cache(tmp / "ctl.cc")).decode())
    async with krb5_driver(tmp, controller=True) as (c, _):
        secrets = {"krb5ccache": cache, "kdc": "127.0.0.1"}
        vol = await create_volume(c, tmp, "pvc-ctl-cc", SOURCE, SHARE_DIR, secrets=secrets)
        await delete_volume(c, vol)


async def test_controller_rotated_keytab_fails_clearly(tmp: Path) -> None:
    async with krb5_driver(tmp, controller=True) as (c, _):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await create_volume(
                c, tmp, "pvc-ctl-rotated", SOURCE, SHARE_DIR,
                secrets=keytab_secret(STALE_KEYTAB, "stale"),
            )  # fmt: skip
        code, details = info.value.code(), info.value.details() or ""
        assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), (
            code,
            details,
        )
        assert "Preauthentication failed" in details, details
        assert STALE_KEYTAB not in details
        assert not (SHARE_DIR / "pvc-ctl-rotated").exists()
