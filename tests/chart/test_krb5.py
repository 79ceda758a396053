"""The chart's krb5 values: a krb5.conf for the Linux node pods and the
controller (docs/kerberos.md), and the cruid flag."""

from __future__ import annotations

import pytest

from tests.chart.support import documents, one, render


def _mounts(doc: dict, container: str) -> dict[str, dict]:
    spec = doc["spec"]["template"]["spec"]
    (c,) = [c for c in spec["containers"] if c["name"] == container]
    return {m["mountPath"]: m for m in c.get("volumeMounts", [])}


def test_no_krb5_conf_by_default_but_the_cruid_flag() -> None:
    docs = documents({})
    assert not [d for d in docs if d["metadata"]["name"].endswith("-krb5")]
    node = one(docs, "DaemonSet", "-node")
    (driver,) = [
        c for c in node["spec"]["template"]["spec"]["containers"] if "--mode=node" in c["args"]
    ]
    assert "--krb5-uid=10002" in driver["args"]
    assert "/etc/krb5.conf" not in _mounts(node, driver["name"])


def test_realms_render_a_krb5_conf_into_node_and_controller() -> None:
    values = {
        "krb5": {
            "defaultRealm": "corp.example",
            "realms": {"CORP.EXAMPLE": ["dc1", "dc2:88"]},
            "uid": 4242,
        }
    }
    docs = documents(values)
    conf = one(docs, "ConfigMap", "-krb5")["data"]["krb5.conf"]
    assert "default_realm = CORP.EXAMPLE" in conf
    assert "kdc = dc1\n" in conf
    assert "kdc = dc2:88\n" in conf
    node = one(docs, "DaemonSet", "-node")
    containers = node["spec"]["template"]["spec"]["containers"]
    (driver,) = [c for c in containers if "--mode=node" in c["args"]]
    assert "--krb5-uid=4242" in driver["args"]
    assert _mounts(node, driver["name"])["/etc/krb5.conf"]["subPath"] == "krb5.conf"
    ctl = one(docs, "Deployment", "-controller")
    (cdriver,) = [
        c for c in ctl["spec"]["template"]["spec"]["containers"] if "--mode=controller" in c["args"]
    ]
    assert "/etc/krb5.conf" in _mounts(ctl, cdriver["name"])


@pytest.mark.parametrize(
    "krb5",
    [{"realms": {"R": ["a\n[x]"]}}, {"defaultRealm": "R }"}, {"uid": 0}, {"kdcs": []}],
)
def test_bad_krb5_values_are_refused(krb5: dict) -> None:
    with pytest.raises(Exception, match="krb5"):
        render({"krb5": krb5})


def test_nfs_gssd_container_reads_the_drivers_nfs_cache() -> None:
    docs = documents({"krb5": {"defaultRealm": "CORP.EXAMPLE", "nfsGssd": True}})
    node = one(docs, "DaemonSet", "-node")
    containers = node["spec"]["template"]["spec"]["containers"]
    (gssd,) = [c for c in containers if c["name"] == "gssd"]
    script = " ".join(gssd["args"])
    assert "rpc.gssd -f -n -d /run/csi-smb-nfs-krb5/nfs -p /run/rpc_pipefs" in script
    assert "mount -t rpc_pipefs" in script
    env = {e["name"]: e["value"] for e in gssd["env"]}
    assert env["KRB5_CONFIG"] == "/run/csi-smb-nfs-krb5/nfs/krb5.conf:/etc/krb5.conf"
    mounts = _mounts(node, "gssd")
    (driver,) = [c for c in containers if "--mode=node" in c["args"]]
    # The same tmpfs as the driver's, where it writes the cache.
    assert mounts["/run"]["name"] == _mounts(node, driver["name"])["/run"]["name"]
    assert mounts["/etc/krb5.conf"]["subPath"] == "krb5.conf"
    assert gssd["securityContext"]["privileged"] is True
    assert gssd["resources"]["limits"]["memory"]


def test_no_gssd_container_by_default() -> None:
    node = one(documents({}), "DaemonSet", "-node")
    assert "gssd" not in [c["name"] for c in node["spec"]["template"]["spec"]["containers"]]
