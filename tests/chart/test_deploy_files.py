"""deploy/examples and deploy/Dockerfile agree with the chart and the driver."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.params import parse_params, parse_snapshot_params
from tests.chart.support import (
    DOCKERFILE,
    EXAMPLES_DIR,
    ROOT,
    SCENARIOS,
    SNAPSHOT_GROUP,
    Doc,
    default_values,
    documents,
    of_kind,
    supported_kube_versions,
    validate,
    validate_volume_snapshot,
    validate_volume_snapshot_class,
)

OLDEST, NEWEST = supported_kube_versions()
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
SNAPSHOT_EXAMPLE = EXAMPLES_DIR / "snapshot.yaml"
# StorageClass + claim + pod; snapshot.yaml builds on smb.yaml's claim;
# mixed.yaml (two Deployments) is checked by tests/chart/test_mixed_example.py.
VOLUME_EXAMPLES = [p for p in EXAMPLES if p not in (SNAPSHOT_EXAMPLE, EXAMPLES_DIR / "mixed.yaml")]


def _load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _check_storage_class(storage_class: Doc) -> None:
    """The driver's own parameter parser accepts what the StorageClass passes."""
    params = parse_params(
        "pvc-0b5e7c2a",
        {
            **storage_class["parameters"],
            # What csi-provisioner --extra-create-metadata adds.
            "csi.storage.k8s.io/pvc/name": "data",
            "csi.storage.k8s.io/pvc/namespace": "default",
            "csi.storage.k8s.io/pv/name": "pvc-0b5e7c2a",
        },
        storage_class.get("mountOptions", []),
    )
    secret_keys = {k for k in storage_class["parameters"] if "secret" in k}
    if params.source.protocol == "smb":
        assert secret_keys == {
            "csi.storage.k8s.io/provisioner-secret-name",
            "csi.storage.k8s.io/provisioner-secret-namespace",
            "csi.storage.k8s.io/node-stage-secret-name",
            "csi.storage.k8s.io/node-stage-secret-namespace",
        }


def _check_snapshot_class(snapshot_class: Doc) -> None:
    """The driver's own parser accepts what the class passes to CreateSnapshot."""
    parameters = snapshot_class.get("parameters", {})
    parse_snapshot_params(
        {
            **parameters,
            # What csi-snapshotter --extra-create-metadata adds.
            "csi.storage.k8s.io/volumesnapshot/name": "data-snap",
            "csi.storage.k8s.io/volumesnapshot/namespace": "default",
            "csi.storage.k8s.io/volumesnapshotcontent/name": "snapcontent-0b5e7c2a",
        }
    )
    secret_keys = {k for k in parameters if "secret" in k}
    assert secret_keys in (
        set(),
        {
            "csi.storage.k8s.io/snapshotter-secret-name",
            "csi.storage.k8s.io/snapshotter-secret-namespace",
            "csi.storage.k8s.io/snapshotter-list-secret-name",
            "csi.storage.k8s.io/snapshotter-list-secret-namespace",
        },
    )
    # csi-snapshotter refuses unknown keys in its reserved prefix.
    reserved = {k for k in parameters if k.startswith("csi.storage.k8s.io/")}
    assert reserved == secret_keys


def test_there_are_smb_and_nfs_examples() -> None:
    assert {p.stem for p in EXAMPLES} >= {"smb", "nfs", "snapshot"}


@pytest.mark.parametrize("path", VOLUME_EXAMPLES, ids=[p.name for p in VOLUME_EXAMPLES])
def test_example(path: Path) -> None:
    docs = _load(path)
    assert sorted(d["kind"] for d in docs) == ["PersistentVolumeClaim", "Pod", "StorageClass"]
    for doc in docs:
        for version in sorted({OLDEST, NEWEST}):
            validate(doc, version)
    (storage_class,) = of_kind(docs, "StorageClass")
    (claim,) = of_kind(docs, "PersistentVolumeClaim")
    (pod,) = of_kind(docs, "Pod")
    assert storage_class["provisioner"] == default_values()["driver"]["name"]
    _check_storage_class(storage_class)
    assert claim["spec"]["storageClassName"] == storage_class["metadata"]["name"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]]
    assert claims == [claim["metadata"]["name"]]
    # No credentials in an example file.
    assert "password:" not in path.read_text().replace("--from-literal=password", "")


def test_snapshot_example() -> None:
    docs = _load(SNAPSHOT_EXAMPLE)
    assert sorted(d["kind"] for d in docs) == [
        "PersistentVolumeClaim",
        "PersistentVolumeClaim",
        "VolumeSnapshot",
        "VolumeSnapshotClass",
    ]
    (snapshot_class,) = of_kind(docs, "VolumeSnapshotClass")
    (snapshot,) = of_kind(docs, "VolumeSnapshot")
    claims = {c["metadata"]["name"]: c for c in of_kind(docs, "PersistentVolumeClaim")}
    # The snapshot CRDs are not known to kubernetes-validate: checked by hand.
    validate_volume_snapshot_class(snapshot_class)
    validate_volume_snapshot(snapshot)
    assert snapshot_class["driver"] == default_values()["driver"]["name"]
    _check_snapshot_class(snapshot_class)
    assert snapshot["spec"]["volumeSnapshotClassName"] == snapshot_class["metadata"]["name"]
    # The claims, dataSource included, are standard objects: strict validation.
    for claim in claims.values():
        for version in sorted({OLDEST, NEWEST}):
            validate(claim, version)

    # The snapshot is of smb.yaml's claim; restore and clone stay on its class.
    smb = _load(EXAMPLES_DIR / "smb.yaml")
    (source,) = of_kind(smb, "PersistentVolumeClaim")
    source_name = source["metadata"]["name"]
    namespace = source["metadata"]["namespace"]
    assert snapshot["spec"]["source"] == {"persistentVolumeClaimName": source_name}
    assert snapshot["metadata"]["namespace"] == namespace
    sources = {}
    for claim in claims.values():
        assert claim["metadata"]["namespace"] == namespace  # dataSource is same-namespace
        assert claim["spec"]["storageClassName"] == source["spec"]["storageClassName"]
        size = claim["spec"]["resources"]["requests"]["storage"]
        assert size == source["spec"]["resources"]["requests"]["storage"]
        sources[claim["metadata"]["name"]] = claim["spec"]["dataSource"]
    assert sorted(sources.values(), key=lambda s: s["kind"]) == [
        {"kind": "PersistentVolumeClaim", "name": source_name},
        {
            "apiGroup": SNAPSHOT_GROUP,
            "kind": "VolumeSnapshot",
            "name": snapshot["metadata"]["name"],
        },
    ]
    assert "password:" not in SNAPSHOT_EXAMPLE.read_text()


def test_chart_volume_snapshot_classes_parse() -> None:
    for scenario in ("snapshots", "custom"):
        classes = of_kind(documents(SCENARIOS[scenario]), "VolumeSnapshotClass")
        assert classes
        for snapshot_class in classes:
            _check_snapshot_class(snapshot_class)


def test_chart_storage_classes_parse() -> None:
    classes = of_kind(documents(SCENARIOS["storage-classes"]), "StorageClass")
    assert len(classes) == 2
    for storage_class in classes:
        _check_storage_class(storage_class)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    steps = _instructions(DOCKERFILE.read_text())
    known = {"ARG", "FROM", "ENV", "WORKDIR", "COPY", "RUN", "LABEL", "USER", "ENTRYPOINT", "CMD"}
    assert {k for k, _ in steps} <= known
    froms = [rest for k, rest in steps if k == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    args = dict(rest.split("=", 1) for k, rest in steps if k == "ARG" and "=" in rest)
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")

    # The builder copies everything the wheel needs.
    pyproject: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = " ".join(rest for k, rest in steps if k == "COPY")
    for package in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert f"{package.rstrip('*')}/" in copied
    assert "pyproject.toml" in copied
    assert pyproject["project"]["readme"] in copied

    runs = " ".join(rest for k, rest in steps if k == "RUN")
    for package in ("cifs-utils", "nfs-common", "libnfs13", "mount", "tini", "util-linux"):
        assert re.search(rf"(^|\s){re.escape(package)}(\s|$)", runs), package
    assert "--no-index" in runs  # the final stage installs only the builder's wheels

    # The entrypoint is the project's console script, as the chart's command.
    (entrypoint,) = [rest for k, rest in steps if k == "ENTRYPOINT"]
    assert entrypoint == '["csi-smb-nfs"]'
    assert "csi-smb-nfs" in pyproject["project"]["scripts"]
    controller = next(w for w in documents({}) if w["kind"] == "Deployment")
    assert controller["spec"]["template"]["spec"]["containers"][0]["command"] == ["csi-smb-nfs"]
    # The Linux node runs under tini (installed above), which reaps orphaned mount helpers.
    node = next(w for w in documents({}) if w["kind"] == "DaemonSet")  # Linux (Windows is off)
    driver = next(
        c for c in node["spec"]["template"]["spec"]["containers"] if c["name"] == "driver"
    )
    assert driver["command"] == ["tini", "--", "csi-smb-nfs"]

    # A numeric non-root user, the one the chart's controller runs as.
    (user,) = [rest for k, rest in steps if k == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert int(uid) == default_values()["controller"]["runAsUser"]
    assert int(gid) == default_values()["controller"]["runAsGroup"]
