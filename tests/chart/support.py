"""Render the Helm chart with the real Helm engine and pick the rendered objects apart.

Rendering goes through ``helm-python-sdk`` (Helm's Go SDK behind ctypes): the
same template engine, value coalescing and ``values.schema.json`` checks as
``helm install``, without a cluster.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from helm_python import _native
from helm_python.chart import Chart

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "deploy" / "chart" / "csi-driver-smb-nfs"
EXAMPLES_DIR = ROOT / "deploy" / "examples"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
RELEASE = "csi-smb-nfs"
NAMESPACE = "kube-system"

# A password used to check that secret values never leak into rendered output.
SECRET_PASSWORD = "Pa55w0rd-never-rendered-7f3c"

# The driver images have no default repository (nobody publishes them): every
# render starts from these, as every real install must set them.
DRIVER_REPOSITORY = "registry.example.com/storage/csi-driver-smb-nfs"
BASE_VALUES: dict[str, Any] = {
    "image": {
        "driver": {"repository": DRIVER_REPOSITORY},
        "windowsDriver": {"repository": DRIVER_REPOSITORY},
    }
}

# What a cluster with the snapshot CRDs serves (.Capabilities.APIVersions);
# render(..., api_versions=()) is a cluster without them.
SNAPSHOT_API_VERSIONS = (
    "snapshot.storage.k8s.io/v1",
    "snapshot.storage.k8s.io/v1/VolumeSnapshotClass",
)

Doc = dict[str, Any]

# Values for every toggle the chart has; each scenario is rendered, linted and validated.
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "windows": {"windows": {"enabled": True}},
    "windows-only": {"linux": {"enabled": False}, "windows": {"enabled": True}},
    "metrics-off": {"metrics": {"enabled": False}, "windows": {"enabled": True}},
    "service-monitor": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}}
    },
    "replicas": {"controller": {"replicas": 3}},
    "krb5-nfs-gssd": {"krb5": {"defaultRealm": "CORP.EXAMPLE", "nfsGssd": True}},
    "kubelet-dir": {
        "linux": {"kubeletDir": "/var/snap/microk8s/common/var/lib/kubelet/"},
        "windows": {"enabled": True, "kubeletDir": "D:\\kubelet\\"},
    },
    "demo-secret": {
        "demoSecret": {
            "enabled": True,
            "username": "demo",
            "password": SECRET_PASSWORD,
            "domain": "EXAMPLE",
        }
    },
    # Secret values given but the toggle off: nothing of them may be rendered.
    "demo-secret-off": {
        "demoSecret": {"enabled": False, "username": "demo", "password": SECRET_PASSWORD}
    },
    "storage-classes": {
        "storageClasses": [
            {
                "name": "smb",
                "source": "//fileserver.example.com/data/k8s",
                "subDir": "${pvc.metadata.namespace}/${pvc.metadata.name}",
                "onDelete": "archive",
                "secretName": "smb-creds",
                "mountOptions": ["vers=3.1.1", "dir_mode=0777", "file_mode=0666"],
                "isDefault": True,
            },
            {
                "name": "nfs",
                "source": "nfs.example.com:/export/k8s",
                "protocol": "nfs",
                "mountPermissions": "0775",
                "mountOptions": ["nfsvers=3"],
                "reclaimPolicy": "Retain",
                "volumeBindingMode": "WaitForFirstConsumer",
                "allowVolumeExpansion": False,
                "labels": {"tier": "files"},
            },
        ]
    },
    "snapshots": {
        "snapshots": {
            "enabled": True,
            "volumeSnapshotClasses": [
                {"name": "smb-snapshots", "secretName": "smb-creds", "isDefault": True},
                {
                    "name": "nfs-snapshots-kept",
                    "deletionPolicy": "Retain",
                    "snapshotDir": "k8s/.archives",
                    "secretNamespace": "storage",
                    "labels": {"tier": "files"},
                    "annotations": {"example.com/owner": "storage"},
                },
            ],
        },
        "controller": {"replicas": 2, "snapshotterTimeout": "5m"},
    },
    # Classes given but the toggle off: no snapshot object, container or rule.
    "snapshots-off": {
        "snapshots": {
            "enabled": False,
            "volumeSnapshotClasses": [{"name": "smb-snapshots", "secretName": "smb-creds"}],
        }
    },
    "custom": {
        "driver": {"name": "files.example.com"},
        "log": {"level": 4, "format": "text"},
        "controller": {
            "extraArgs": ["--backend-workers=8", "--backend-timeout=45"],
            "snapshotterExtraArgs": ["--worker-threads=4", "--kube-api-qps=20"],
            "hostNetwork": True,
            "dnsPolicy": "ClusterFirstWithHostNet",
        },
        "linux": {"extraArgs": ["--mount-timeout=60", "--health-timeout=3"]},
        "windows": {"enabled": True, "extraArgs": ["--grace-period=20"], "driverPort": 10123},
        "metrics": {"bindAddress": "::"},
        "image": {
            "driver": {
                "repository": "registry.example.com/storage/csi-smb-nfs",
                "tag": "",
                "digest": "sha256:" + "a" * 64,
                "pullPolicy": "Always",
            }
        },
        "snapshots": {"enabled": True, "volumeSnapshotClasses": [{"name": "files-snapshots"}]},
        "imagePullSecrets": [{"name": "regcred"}],
        "podAnnotations": {"example.com/team": "storage"},
        "serviceAccount": {"controllerName": "smbnfs-ctrl", "nodeName": "smbnfs-node"},
    },
    # What operators of upstream charts expect: control-plane placement, no
    # priority class, their own labels and names.
    "operator": {
        "fullnameOverride": "files",
        "customLabels": {"team": "storage", "cost-center": "42"},
        "podLabels": {"team": "storage-pods", "sidecar.istio.io/inject": "false"},
        "controller": {"runOnControlPlane": True, "priorityClassName": "", "replicas": 2},
        "linux": {"priorityClassName": ""},
        "windows": {"enabled": True, "priorityClassName": ""},
        "storageClasses": [{"name": "smb", "source": "//fs/k8s", "labels": {"tier": "files"}}],
        "snapshots": {"enabled": True, "volumeSnapshotClasses": [{"name": "snaps"}]},
    },
    "name-override": {"nameOverride": "files"},
    # storageClasses[].parameters as csi-driver-smb's chart takes them.
    "upstream-storage-classes": {
        "storageClasses": [
            {
                "name": "smb",
                "parameters": {
                    "source": "//fileserver.example.com/data/k8s",
                    "subDir": "${pvc.metadata.namespace}/${pvc.metadata.name}",
                    "onDelete": "archive",
                    "csi.storage.k8s.io/provisioner-secret-name": "smb-creds",
                    "csi.storage.k8s.io/provisioner-secret-namespace": "storage",
                    "csi.storage.k8s.io/node-stage-secret-name": "smb-creds",
                    "csi.storage.k8s.io/node-stage-secret-namespace": "storage",
                },
                "mountOptions": ["vers=3.1.1"],
            },
            {
                "name": "nfs",
                "source": "nfs.example.com:/export/k8s",
                "parameters": {"mountPermissions": 775},
            },
        ]
    },
}


@functools.cache
def chart() -> Chart:
    return Chart.load(CHART_DIR)


@functools.cache
def chart_metadata() -> dict[str, Any]:
    return chart().metadata


@functools.cache
def default_values() -> dict[str, Any]:
    return chart().values


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, maps merged key by key (as Helm coalesces values)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def with_base(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values an install passes: BASE_VALUES under ``values``."""
    return deep_merge(BASE_VALUES, values)


def merged_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return chart().merge_values(with_base(values))


@functools.cache
def _render_json(values_json: str, api_versions: tuple[str, ...]) -> dict[str, str]:
    # helm_python's Chart.render has no api_versions option; its native call
    # takes the same options as `helm template --api-versions`.
    options = {"name": RELEASE, "namespace": NAMESPACE, "api_versions": list(api_versions)}
    rendered = _native.call_string("helm_render", chart()._raw(), values_json, json.dumps(options))
    result: dict[str, str] = json.loads(rendered)
    return result


def render_raw(
    values: Mapping[str, Any], *, api_versions: tuple[str, ...] = SNAPSHOT_API_VERSIONS
) -> dict[str, str]:
    """Render exactly these values (no BASE_VALUES)."""
    return dict(_render_json(json.dumps(values, sort_keys=True), tuple(api_versions)))


def render(
    values: Mapping[str, Any], *, api_versions: tuple[str, ...] = SNAPSHOT_API_VERSIONS
) -> dict[str, str]:
    """Template path → rendered text (NOTES.txt included), BASE_VALUES under ``values``."""
    return render_raw(with_base(values), api_versions=api_versions)


def rendered_text(values: Mapping[str, Any]) -> str:
    return "\n".join(render(values).values())


def documents(values: Mapping[str, Any]) -> list[Doc]:
    """Every Kubernetes object the chart renders for these values."""
    docs: list[Doc] = []
    for path, text in sorted(render(values).items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, name_suffix: str = "") -> Doc:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {len(found)}"
    return found[0]


def workloads(docs: list[Doc]) -> Iterator[Doc]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "DaemonSet"):
            yield doc


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Doc, *, init: bool = True) -> list[Doc]:
    spec = pod_spec(workload)
    found = list(spec.get("containers", []))
    if init:
        found += spec.get("initContainers", [])
    return found


def container(workload: Doc, name: str) -> Doc:
    for c in containers(workload):
        if c["name"] == name:
            return c
    raise AssertionError(f"{workload['metadata']['name']}: no container {name!r}")


def os_of(workload: Doc) -> str:
    return str(pod_spec(workload)["nodeSelector"]["kubernetes.io/os"])


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand_env(args: list[str], env: list[Doc]) -> list[str]:
    """Expand ``$(VAR)`` as kubelet does: literal env values, and a stand-in
    node name for the downward API (``fieldRef: spec.nodeName``)."""
    values: dict[str, str] = {}
    for item in env:
        if "value" in item:
            values[item["name"]] = str(item["value"])
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            values[item["name"]] = "node-1.example.com"
        else:
            values[item["name"]] = "from-downward-api"

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in values, f"$({name}) is not defined in the container's env"
        return values[name]

    return [_VAR.sub(sub, a) for a in args]


def flag(args: list[str], name: str) -> str | None:
    """The value of ``--name=value`` (last one wins), or None."""
    value = None
    for a in args:
        if a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def supported_kube_versions() -> tuple[str, str]:
    """(oldest the chart supports, newest kubernetes-validate ships), as 'major.minor'."""
    match = re.search(r">=\s*v?(\d+)\.(\d+)", chart_metadata()["kubeVersion"])
    assert match, "Chart.yaml kubeVersion must have a lower bound"
    oldest = f"{match.group(1)}.{match.group(2)}"
    newest = ".".join(kubernetes_validate.latest_version().split(".")[:2])
    return oldest, newest


def validate(doc: Doc, version: str) -> None:
    """kubernetes-validate, strict: unknown or mistyped fields fail."""
    kubernetes_validate.validate(doc, version, strict=True)


SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
SNAPSHOT_API = f"{SNAPSHOT_GROUP}/v1"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _check_metadata(doc: Doc, *, namespaced: bool) -> None:
    meta = doc["metadata"]
    assert set(meta) <= {"name", "namespace", "labels", "annotations"}, meta
    assert isinstance(meta["name"], str), meta
    assert _DNS_SUBDOMAIN.match(meta["name"]), meta
    assert len(meta["name"]) <= 253
    assert ("namespace" in meta) is namespaced, meta
    for key in ("labels", "annotations"):
        values = meta.get(key, {})
        assert isinstance(values, dict), meta
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()), meta


def validate_volume_snapshot_class(doc: Doc) -> None:
    """By hand: kubernetes-validate has no schema for this CRD. The shape is
    snapshot.storage.k8s.io/v1 VolumeSnapshotClass (cluster-scoped): driver
    and deletionPolicy (Delete|Retain) required, parameters a map of strings."""
    assert doc["apiVersion"] == SNAPSHOT_API
    assert doc["kind"] == "VolumeSnapshotClass"
    assert set(doc) <= {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"}
    assert {"metadata", "driver", "deletionPolicy"} <= set(doc)
    _check_metadata(doc, namespaced=False)
    assert isinstance(doc["driver"], str)
    assert doc["driver"]
    assert doc["deletionPolicy"] in ("Delete", "Retain")
    parameters = doc.get("parameters", {})
    assert isinstance(parameters, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parameters.items()), parameters


def validate_volume_snapshot(doc: Doc) -> None:
    """By hand, as snapshot.storage.k8s.io/v1 VolumeSnapshot (namespaced):
    spec.source names exactly one of a claim or a pre-provisioned content."""
    assert doc["apiVersion"] == SNAPSHOT_API
    assert doc["kind"] == "VolumeSnapshot"
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    _check_metadata(doc, namespaced=True)
    spec = doc["spec"]
    assert set(spec) <= {"source", "volumeSnapshotClassName"}
    class_name = spec.get("volumeSnapshotClassName", "")
    assert isinstance(class_name, str)
    source = spec["source"]
    assert len(source) == 1, source
    assert set(source) <= {"persistentVolumeClaimName", "volumeSnapshotContentName"}, source
    assert all(isinstance(v, str) and v for v in source.values()), source
