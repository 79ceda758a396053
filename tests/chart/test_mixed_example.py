"""deploy/examples/mixed.yaml: one dual-protocol claim shared by a Linux and a
Windows Deployment, accepted by the driver's own parameter parser."""

from __future__ import annotations

import pytest
import yaml

from controller.params import parse_params
from driver.dual import scoped_options
from tests.chart.support import (
    EXAMPLES_DIR,
    default_values,
    documents,
    of_kind,
    supported_kube_versions,
    validate,
)

MIXED = EXAMPLES_DIR / "mixed.yaml"
OLDEST, NEWEST = supported_kube_versions()


@pytest.fixture(scope="module")
def docs() -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all(MIXED.read_text()) if d]


def test_objects_are_valid(docs: list[dict[str, object]]) -> None:
    assert sorted(str(d["kind"]) for d in docs) == [
        "Deployment",
        "Deployment",
        "PersistentVolumeClaim",
        "StorageClass",
    ]
    for doc in docs:
        for version in sorted({OLDEST, NEWEST}):
            validate(doc, version)


def test_storage_class_is_dual_and_parses(docs: list[dict[str, object]]) -> None:
    (sc,) = of_kind(docs, "StorageClass")
    assert sc["provisioner"] == default_values()["driver"]["name"]
    params = parse_params(
        "pvc-0b5e7c2a",
        {
            **sc["parameters"],
            "csi.storage.k8s.io/pvc/name": "shared-data",
            "csi.storage.k8s.io/pvc/namespace": "default",
        },
        sc["mountOptions"],
    )
    assert params.dual is not None
    assert params.dual.provision_via == "nfs"
    assert params.dual.path("smb", params.subdir) == "k8s/default/shared-data"
    assert params.dual.path("nfs", params.subdir) == "default/shared-data"
    # provisionVia nfs: no provisioner secret; Windows nodes need the stage secret.
    secret_keys = {k for k in sc["parameters"] if "secret" in k}
    assert secret_keys == {
        "csi.storage.k8s.io/node-stage-secret-name",
        "csi.storage.k8s.io/node-stage-secret-namespace",
    }
    assert scoped_options(sc["mountOptions"], "nfs") == ("nfsvers=4.1", "hard")
    assert scoped_options(sc["mountOptions"], "smb") == ("vers=3.1.1", "nosharesock")
    assert "password:" not in MIXED.read_text().replace("--from-literal=password", "")


def test_both_operating_systems_share_the_claim(docs: list[dict[str, object]]) -> None:
    (claim,) = of_kind(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    systems = set()
    for deployment in of_kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        systems.add(pod["nodeSelector"]["kubernetes.io/os"])
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]]
        assert claims == [claim["metadata"]["name"]]
    assert systems == {"linux", "windows"}


def test_the_chart_renders_a_dual_class() -> None:
    """The Helm values docs/mixed-clusters.md shows give a class the driver accepts."""
    values = {
        "storageClasses": [
            {
                "name": "mixed",
                "subDir": "${pvc.metadata.namespace}/${pvc.metadata.name}",
                "parameters": {
                    "smbSource": "//fileserver.example.com/data/k8s",
                    "nfsSource": "fileserver.example.com:/export/data/k8s",
                    "csi.storage.k8s.io/node-stage-secret-name": "smb-creds",
                    "csi.storage.k8s.io/node-stage-secret-namespace": "kube-system",
                },
                "mountOptions": ["nfs:nfsvers=4.1", "smb:vers=3.1.1"],
            }
        ]
    }
    (sc,) = [
        c for c in of_kind(documents(values), "StorageClass") if c["metadata"]["name"] == "mixed"
    ]
    params = parse_params(
        "pvc-1",
        {
            **sc["parameters"],
            "csi.storage.k8s.io/pvc/name": "data",
            "csi.storage.k8s.io/pvc/namespace": "team",
        },
        sc["mountOptions"],
    )
    assert params.dual is not None
    assert params.dual.path("smb", params.subdir) == "k8s/team/data"
    assert "source" not in sc["parameters"]
