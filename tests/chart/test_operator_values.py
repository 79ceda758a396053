"""Values operators of the upstream SMB/NFS charts expect, and the clear
failures where a value cannot work."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_python import HelmRenderError, HelmValuesError
from helm_python.chart import Chart

from controller.params import parse_params
from tests.chart.support import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    Doc,
    chart,
    documents,
    of_kind,
    one,
    pod_spec,
    render,
    with_base,
    workloads,
)

SELECTOR_KEYS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/os",
}


def _selectors(docs: list[Doc]) -> dict[str, dict[str, str]]:
    found = {}
    for doc in docs:
        spec = doc.get("spec", {})
        selector = spec.get("selector", {})
        found[f"{doc['kind']}/{doc['metadata']['name']}"] = dict(
            selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
        )
    return found


def test_custom_labels_on_every_object_and_pod() -> None:
    values = SCENARIOS["operator"]
    docs = documents(values)
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["team"] == "storage", doc["kind"]
        assert labels["cost-center"] == "42"
    for workload in workloads(docs):
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        # podLabels win over customLabels on pods; both reach the pod.
        assert pod_labels["team"] == "storage-pods"
        assert pod_labels["cost-center"] == "42"
        assert pod_labels["sidecar.istio.io/inject"] == "false"
        assert workload["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # An object's own labels win over customLabels, without a duplicate key.
    storage_class = one(docs, "StorageClass")
    assert storage_class["metadata"]["labels"]["tier"] == "files"


def test_user_labels_cannot_break_selectors(tmp_path: Path) -> None:
    """The schema refuses selector keys; the templates drop them as well, so a
    chart rendered without its schema still keeps its selectors."""
    hostile: dict[str, Any] = {
        "customLabels": dict.fromkeys(SELECTOR_KEYS, "x") | {"helm.sh/chart": "x"},
        "podLabels": dict.fromkeys(SELECTOR_KEYS, "y"),
    }
    with pytest.raises(HelmValuesError):
        chart().validate_schema(hostile)
    unchecked = tmp_path / CHART_DIR.name
    shutil.copytree(CHART_DIR, unchecked)
    (unchecked / "values.schema.json").unlink()
    rendered = Chart.load(unchecked).render(
        with_base({**SCENARIOS["windows"], **hostile}), name=RELEASE, namespace=NAMESPACE
    )
    docs = [
        doc
        for path, text in rendered.items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    plain = documents(SCENARIOS["windows"])
    assert _selectors(docs) == _selectors(plain)
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert "x" not in {labels.get(k) for k in SELECTOR_KEYS | {"helm.sh/chart"}}
    for workload in workloads(docs):
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_run_on_control_plane() -> None:
    controller = one(documents(SCENARIOS["operator"]), "Deployment")
    spec = pod_spec(controller)
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term == {
        "matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]
    }
    tolerated = {(t["key"], t.get("effect", "")) for t in spec["tolerations"]}
    assert tolerated == {
        ("node-role.kubernetes.io/control-plane", "NoSchedule"),
        ("node-role.kubernetes.io/master", "NoSchedule"),
        ("CriticalAddonsOnly", ""),
    }
    assert len(spec["tolerations"]) == len(tolerated)  # the defaults are not repeated
    # Replicas still spread over the control-plane nodes.
    assert spec["affinity"]["podAntiAffinity"]
    # Off: no node affinity, the default tolerations only.
    default = pod_spec(one(documents({}), "Deployment"))
    assert "nodeAffinity" not in default["affinity"]
    # Both ways of placing the controller at once: a clear failure.
    with pytest.raises(HelmRenderError, match="runOnControlPlane"):
        render(
            {
                "controller": {
                    "runOnControlPlane": True,
                    "affinity": {
                        "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
                    },
                }
            }
        )


def test_empty_priority_class_name_is_left_out() -> None:
    for workload in workloads(documents(SCENARIOS["operator"])):
        assert "priorityClassName" not in pod_spec(workload), workload["metadata"]["name"]
    for workload in workloads(documents(SCENARIOS["windows"])):
        assert pod_spec(workload)["priorityClassName"].startswith("system-")


def test_name_overrides() -> None:
    docs = documents(SCENARIOS["operator"])
    names = {d["metadata"]["name"] for d in docs if d["kind"] not in ("StorageClass", "CSIDriver")}
    names -= {"snaps"}
    assert names
    assert all(name.startswith("files-") for name in names), names
    renamed = documents(SCENARIOS["name-override"])
    for workload in workloads(renamed):
        assert workload["metadata"]["name"].startswith("csi-smb-nfs-files-")
        assert workload["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "files"


def test_upstream_style_storage_class_parameters() -> None:
    classes = {
        c["metadata"]["name"]: c
        for c in of_kind(documents(SCENARIOS["upstream-storage-classes"]), "StorageClass")
    }
    smb = classes["smb"]
    assert (
        smb["parameters"]
        == SCENARIOS["upstream-storage-classes"]["storageClasses"][0]["parameters"]
    )
    # Numbers become the strings a StorageClass needs.
    assert classes["nfs"]["parameters"] == {
        "source": "nfs.example.com:/export/k8s",
        "mountPermissions": "775",
    }
    for storage_class in classes.values():
        parse_params(
            "pvc-1",
            {
                **storage_class["parameters"],
                "csi.storage.k8s.io/pvc/name": "data",
                "csi.storage.k8s.io/pvc/namespace": "default",
                "csi.storage.k8s.io/pv/name": "pvc-1",
            },
            storage_class.get("mountOptions", []),
        )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "smb"}, "source is required"),
        ({"name": "smb", "parameters": {"subDir": "x"}}, "source is required"),
        ({"name": "smb", "source": "//s/x", "parameters": {"Source": "//s/y"}}, "both"),
        (
            {
                "name": "smb",
                "source": "//s/x",
                "secretName": "c",
                "parameters": {"csi.storage.k8s.io/node-stage-secret-name": "d"},
            },
            "both",
        ),
        ({"name": "nfs", "parameters": {"server": "nfs.example.com", "share": "/k8s"}}, "source:"),
    ],
    ids=[
        "no source",
        "no source in parameters",
        "source twice",
        "secret twice",
        "nfs server/share",
    ],
)
def test_storage_class_mistakes_fail_clearly(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmRenderError, match=message):
        render({"storageClasses": [entry]})


def test_snapshot_classes_need_the_snapshot_api() -> None:
    values = SCENARIOS["snapshots"]
    assert len(of_kind(documents(values), "VolumeSnapshotClass")) == 2
    with pytest.raises(HelmRenderError, match=r"snapshot\.storage\.k8s\.io/v1 API.*--api-versions"):
        render(values, api_versions=())
    # Snapshots on without classes: nothing needs the API at install time.
    render({"snapshots": {"enabled": True}}, api_versions=())


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_inline_volumes_are_off_by_default(scenario: str) -> None:
    """Inline volumes let any pod author mount shares: only when asked."""
    spec = one(documents(SCENARIOS[scenario]), "CSIDriver")["spec"]
    assert spec["volumeLifecycleModes"] == ["Persistent"]


def test_inline_volumes_when_asked() -> None:
    values = {"driver": {"volumeLifecycleModes": ["Persistent", "Ephemeral"]}}
    spec = one(documents(values), "CSIDriver")["spec"]
    assert spec["volumeLifecycleModes"] == ["Persistent", "Ephemeral"]
    assert spec["podInfoOnMount"] is True  # kubelet marks inline requests only with it
