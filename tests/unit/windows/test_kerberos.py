"""Windows nodes and Kerberos secrets (docs/kerberos.md, "Windows nodes").

PowerShell's New-SmbGlobalMapping takes a password credential only; a
domain-joined node negotiates Kerberos with it. A keytab or credential cache
in the node-stage secret, or in an inline volume's nodePublishSecretRef secret,
is refused (INVALID_ARGUMENT, one message) before anything runs on the host.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

from driver.credentials import Credentials, KerberosCredentials
from driver.csi import csi_pb2
from driver.errors import InvalidArgument
from node.ephemeral import EPHEMERAL_KEY
from node.service import NodeService
from node.windows import WindowsPlatform
from tests.fakes.kdc import make_ccache
from tests.unit.windows.fake import FakeWindows, key, stage_request, staging_of, target_of
from tests.unit.windows.test_service import node_capability

KEYTAB = b"\x05\x02" + b"\0" * 40
CCACHE = make_ccache("svc@CORP.EXAMPLE", [("krbtgt/CORP.EXAMPLE@CORP.EXAMPLE", 1, 2, 0)])
KERBEROS_SECRETS = {
    "keytab": {"username": "svc@CORP.EXAMPLE", "keytab": base64.b64encode(KEYTAB).decode()},
    "krb5ccache": {"krb5ccache": base64.b64encode(CCACHE).decode()},
    "krb5cc_<uid>": {"krb5cc_1000": base64.b64encode(CCACHE).decode()},
}


async def test_a_keytab_secret_is_refused_with_what_works(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    request = dataclasses.replace(
        stage_request(platform, node, credentials=None),
        kerberos=KerberosCredentials("svc", "CORP.EXAMPLE", keytab=b"\x05\x02"),
    )
    with pytest.raises(InvalidArgument, match="keytab") as info:
        await platform.stage(request)
    assert "DOMAIN\\user" in info.value.message
    assert node.calls == []
    assert node.mappings == {}


async def test_a_domain_account_password_maps_as_domain_user(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    """The Kerberos path on a domain-joined node: DOMAIN\\user + password go to
    New-SmbGlobalMapping unchanged (Windows picks Kerberos itself)."""
    creds = Credentials("svc", "domain-pw-123", "CORP")
    node.accounts["corp\\svc"] = "domain-pw-123"
    await platform.stage(stage_request(platform, node, credentials=creds))
    (mapping,) = node.mappings.values()
    assert mapping.user == "CORP\\svc"


@pytest.mark.parametrize("secrets", KERBEROS_SECRETS.values(), ids=KERBEROS_SECRETS.keys())
async def test_staged_and_inline_volumes_refuse_kerberos_keys_alike(
    platform: WindowsPlatform, node: FakeWindows, secrets: dict[str, str]
) -> None:
    """Through the Node service: an inline volume whose nodePublishSecretRef
    carries Kerberos keys gets the staged volume's answer, naming its secret."""
    service = NodeService("win-1", platform)
    ctx: Any = None
    context = {"source": "//fileserver/share/base", "subDir": "pvc-1"}
    staging, target = staging_of("pvc-1"), target_of("pod-1", "inline")
    node.mkdir_p(staging)
    node.mkdir_p(target)
    stage = csi_pb2.NodeStageVolumeRequest(
        volume_id="pvc-1",
        staging_target_path=staging,
        volume_capability=node_capability(),
        volume_context=context,
        secrets=secrets,
    )
    inline = csi_pb2.NodePublishVolumeRequest(
        volume_id="csi-inline",
        target_path=target,
        volume_capability=node_capability(),
        volume_context={EPHEMERAL_KEY: "true", **context},
        secrets=secrets,
    )
    with pytest.raises(InvalidArgument) as staged:
        await service.NodeStageVolume(stage, ctx)
    with pytest.raises(InvalidArgument) as published:
        await service.NodePublishVolume(inline, ctx)

    assert staged.value.message.startswith("node-stage secret: ")
    assert published.value.message.startswith("nodePublishSecretRef secret: ")
    reason = staged.value.message.removeprefix("node-stage secret: ")
    assert published.value.message.removeprefix("nodePublishSecretRef secret: ") == reason
    assert "New-SmbGlobalMapping" in reason
    assert "DOMAIN\\user" in reason
    assert "needs username and password" not in reason  # not the "no password given" answer
    for value in secrets.values():
        assert value not in staged.value.message + published.value.message
    assert node.calls == []
    assert node.mappings == {}
    assert key(target) not in node.links
