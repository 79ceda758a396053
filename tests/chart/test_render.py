"""The chart renders, lints clean and produces valid Kubernetes objects for every toggle."""

from __future__ import annotations

import base64
import copy
from typing import Any

import kubernetes_validate
import pytest
from helm_python.chart import lint

from tests.chart.support import (
    CHART_DIR,
    DRIVER_REPOSITORY,
    NAMESPACE,
    SCENARIOS,
    SECRET_PASSWORD,
    Doc,
    chart_metadata,
    documents,
    of_kind,
    one,
    render,
    rendered_text,
    supported_kube_versions,
    validate,
    validate_volume_snapshot_class,
    with_base,
)

OLDEST, NEWEST = supported_kube_versions()
VERSIONS = sorted({OLDEST, NEWEST})
IDS = list(SCENARIOS)


def test_kube_versions_are_shipped_by_the_validator() -> None:
    shipped = {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()}
    assert OLDEST in shipped, f"kubernetes-validate has no schemas for {OLDEST}"
    assert NEWEST != OLDEST


def test_chart_metadata() -> None:
    meta = chart_metadata()
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "csi-driver-smb-nfs"
    assert meta["appVersion"] == "0.1.0"


@pytest.mark.parametrize("kube_version", VERSIONS)
@pytest.mark.parametrize("scenario", IDS)
def test_lint_strict(scenario: str, kube_version: str) -> None:
    report = lint(
        CHART_DIR,
        with_base(SCENARIOS[scenario]),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{kube_version}.0",
    )
    assert report["errors"] == []
    # Severity 2 = warning, 3 = error; 1 (info: "icon is recommended") is fine.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def _validate_service_monitor(doc: Doc) -> None:
    # Not a built-in kind: kubernetes-validate has no schema; check its shape.
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    spec = doc["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints"}
    assert spec["selector"]["matchLabels"]
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval"}
        assert endpoint["port"] == "metrics"


@pytest.mark.parametrize("kube_version", VERSIONS)
@pytest.mark.parametrize("scenario", IDS)
def test_every_document_validates(scenario: str, kube_version: str) -> None:
    docs = documents(SCENARIOS[scenario])
    assert docs
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            _validate_service_monitor(doc)
            continue
        if doc["kind"] == "VolumeSnapshotClass":
            # A CRD kubernetes-validate does not know: checked by hand (cluster-scoped).
            validate_volume_snapshot_class(doc)
            continue
        validate(doc, kube_version)
        if doc["kind"] not in ("CSIDriver", "StorageClass", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


_GOOD_CLASS: Doc = {
    "apiVersion": "snapshot.storage.k8s.io/v1",
    "kind": "VolumeSnapshotClass",
    "metadata": {"name": "snaps"},
    "driver": "smb-nfs.csi.io",
    "deletionPolicy": "Delete",
    "parameters": {"snapshotDir": "k8s/snaps"},
}


@pytest.mark.parametrize(
    "change",
    [
        {"deletionPolicy": "Keep"},
        {"deletionPolicy": None},
        {"driver": None},
        {"parameters": {"snapshotDir": 1}},
        {"parameters": ["snapshotDir"]},
        {"apiVersion": "snapshot.storage.k8s.io/v1beta1"},
        {"spec": {"driver": "smb-nfs.csi.io"}},
        {"metadata": {"name": "snaps", "namespace": "kube-system"}},
        {"metadata": {"name": "Snaps"}},
    ],
    ids=repr,
)
def test_snapshot_class_check_is_strict(change: dict[str, Any]) -> None:
    validate_volume_snapshot_class(_GOOD_CLASS)
    broken = copy.deepcopy(_GOOD_CLASS)
    for key, value in change.items():
        if value is None:
            del broken[key]
        else:
            broken[key] = value
    with pytest.raises(AssertionError):
        validate_volume_snapshot_class(broken)


def test_validator_is_strict() -> None:
    """Guard against a validator that accepts anything: a misspelt field fails."""
    deployment = one(documents({}), "Deployment", "-controller")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken, NEWEST)
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken, NEWEST)


def test_expected_objects_by_toggle() -> None:
    kinds = sorted(d["kind"] for d in documents({}))
    assert kinds == sorted(
        [
            "CSIDriver",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "DaemonSet",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceAccount",
        ]
    )
    assert len(of_kind(documents(SCENARIOS["windows"]), "DaemonSet")) == 2
    only_windows = of_kind(documents(SCENARIOS["windows-only"]), "DaemonSet")
    assert [d["metadata"]["name"].endswith("-node-win") for d in only_windows] == [True]
    assert of_kind(documents(SCENARIOS["metrics-off"]), "Service") == []
    assert of_kind(documents({}), "ServiceMonitor") == []
    monitor = one(documents(SCENARIOS["service-monitor"]), "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert of_kind(documents({}), "PodDisruptionBudget") == []
    assert len(of_kind(documents(SCENARIOS["replicas"]), "PodDisruptionBudget")) == 1
    assert of_kind(documents({}), "Secret") == []
    assert of_kind(documents({}), "StorageClass") == []
    assert len(of_kind(documents(SCENARIOS["storage-classes"]), "StorageClass")) == 2
    no_rbac = documents({"rbac": {"create": False}, "serviceAccount": {"create": False}})
    assert {d["kind"] for d in no_rbac}.isdisjoint(
        {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"}
    )
    # Snapshots: one more ClusterRole and binding, and the classes asked for.
    snapshots = documents(SCENARIOS["snapshots"])
    assert sorted(d["kind"] for d in snapshots if d["kind"] != "PodDisruptionBudget") == sorted(
        kinds + ["ClusterRole", "ClusterRoleBinding"] + ["VolumeSnapshotClass"] * 2
    )
    classes = {d["metadata"]["name"]: d for d in of_kind(snapshots, "VolumeSnapshotClass")}
    assert set(classes) == {"smb-snapshots", "nfs-snapshots-kept"}
    smb = classes["smb-snapshots"]
    assert smb["deletionPolicy"] == "Delete"
    assert smb["metadata"]["annotations"] == {
        "snapshot.storage.kubernetes.io/is-default-class": "true"
    }
    assert smb["parameters"] == {
        "csi.storage.k8s.io/snapshotter-secret-name": "smb-creds",
        "csi.storage.k8s.io/snapshotter-secret-namespace": NAMESPACE,
        "csi.storage.k8s.io/snapshotter-list-secret-name": "smb-creds",
        "csi.storage.k8s.io/snapshotter-list-secret-namespace": NAMESPACE,
    }
    kept = classes["nfs-snapshots-kept"]
    assert kept["deletionPolicy"] == "Retain"
    assert kept["parameters"] == {"snapshotDir": "k8s/.archives"}
    assert kept["metadata"]["labels"]["tier"] == "files"
    assert kept["metadata"]["annotations"] == {"example.com/owner": "storage"}
    # RBAC off: the snapshot roles go too, the sidecar stays.
    no_rbac = documents({**SCENARIOS["snapshots"], "rbac": {"create": False}})
    assert {d["kind"] for d in no_rbac}.isdisjoint({"ClusterRole", "ClusterRoleBinding"})


def _snapshots_on(values: dict[str, Any]) -> bool:
    return bool(values.get("snapshots", {}).get("enabled", False))


@pytest.mark.parametrize("scenario", IDS)
def test_nothing_of_snapshots_when_off(scenario: str) -> None:
    values = SCENARIOS[scenario]
    docs = documents(values)
    text = rendered_text(values)
    names = [
        c["name"]
        for w in docs
        if w["kind"] in ("Deployment", "DaemonSet")
        for c in w["spec"]["template"]["spec"]["containers"]
    ]
    rules = [r for d in docs if d["kind"].endswith("Role") for r in d["rules"]]
    snapshot_rules = [r for r in rules if "snapshot.storage.k8s.io" in r["apiGroups"]]
    if _snapshots_on(values):
        assert "csi-snapshotter" in names
        assert snapshot_rules
        return
    assert "csi-snapshotter" not in names
    assert snapshot_rules == []
    assert of_kind(docs, "VolumeSnapshotClass") == []
    assert not [d for d in docs if d["metadata"]["name"].endswith("-snapshotter")]
    assert "snapshot.storage.k8s.io" not in text
    assert "csi-snapshotter" not in text
    assert "snapshotter-secret" not in text


def test_metrics_services_select_pods_that_expose_metrics() -> None:
    docs = documents(SCENARIOS["windows"])
    for service in of_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        matched = [
            w
            for w in docs
            if w["kind"] in ("Deployment", "DaemonSet")
            and selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matched, service["metadata"]["name"]
        for workload in matched:
            driver = next(
                c
                for c in workload["spec"]["template"]["spec"]["containers"]
                if c["name"] == "driver"
            )
            assert "metrics" in {p["name"] for p in driver["ports"]}


def test_demo_secret_only_when_enabled() -> None:
    encoded = base64.b64encode(SECRET_PASSWORD.encode()).decode()
    for name, values in SCENARIOS.items():
        text = rendered_text(values)
        enabled = values.get("demoSecret", {}).get("enabled", False)
        if enabled:
            continue
        assert SECRET_PASSWORD not in text, name
        assert encoded not in text, name
        assert "demo" not in [s["metadata"]["name"] for s in of_kind(documents(values), "Secret")]

    docs = documents(SCENARIOS["demo-secret"])
    secret = one(docs, "Secret")
    assert base64.b64decode(secret["data"]["password"]).decode() == SECRET_PASSWORD
    assert base64.b64decode(secret["data"]["username"]).decode() == "demo"
    assert base64.b64decode(secret["data"]["domain"]).decode() == "EXAMPLE"
    # The value appears in the Secret and nowhere else.
    elsewhere = [
        path
        for path, text in render(SCENARIOS["demo-secret"]).items()
        if not path.endswith("demo-secret.yaml") and (SECRET_PASSWORD in text or encoded in text)
    ]
    assert elsewhere == []


def test_image_references() -> None:
    docs = documents(SCENARIOS["windows"])
    images = {
        c["image"]
        for w in docs
        if w["kind"] in ("Deployment", "DaemonSet")
        for c in w["spec"]["template"]["spec"]["containers"]
        + w["spec"]["template"]["spec"].get("initContainers", [])
    }
    sidecars = {i for i in images if "sig-storage" in i}
    assert {i.rsplit(":", 1)[0] for i in sidecars} == {
        "registry.k8s.io/sig-storage/csi-provisioner",
        "registry.k8s.io/sig-storage/csi-resizer",
        "registry.k8s.io/sig-storage/livenessprobe",
        "registry.k8s.io/sig-storage/csi-node-driver-registrar",
    }
    for image in sidecars:
        assert image.rsplit(":", 1)[1].startswith("v"), image
    snapshotter = {
        c["image"]
        for c in one(documents(SCENARIOS["snapshots"]), "Deployment")["spec"]["template"]["spec"][
            "containers"
        ]
        if c["name"] == "csi-snapshotter"
    }
    assert snapshotter == {"registry.k8s.io/sig-storage/csi-snapshotter:v8.6.0"}
    assert f"{DRIVER_REPOSITORY}:0.1.0" in images
    assert f"{DRIVER_REPOSITORY}:0.1.0-windows-hostprocess" in images
    assert any(i.startswith("docker.io/democraticcsi/csi-grpc-proxy:v") for i in images)

    pinned = documents(SCENARIOS["custom"])
    digest = "registry.example.com/storage/csi-smb-nfs@sha256:" + "a" * 64
    for workload in pinned:
        if workload["kind"] == "Deployment" or (
            workload["kind"] == "DaemonSet" and workload["metadata"]["name"].endswith("-node")
        ):
            driver = workload["spec"]["template"]["spec"]["containers"][0]
            assert driver["image"] == digest
            assert driver["imagePullPolicy"] == "Always"
            assert workload["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


def _labels(doc: Doc) -> dict[str, Any]:
    labels: dict[str, Any] = doc["metadata"]["labels"]
    return labels


def test_selectors_match_pod_labels() -> None:
    for workload in documents(SCENARIOS["custom"]):
        if workload["kind"] not in ("Deployment", "DaemonSet"):
            continue
        selector = workload["spec"]["selector"]["matchLabels"]
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["example.com/team"] == "storage"
        assert _labels(workload)["app.kubernetes.io/instance"] == "csi-smb-nfs"
