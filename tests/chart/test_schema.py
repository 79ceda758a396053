"""values.schema.json rejects misspelt and mistyped values before anything renders."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml
from helm_python import HelmValuesError

from tests.chart.support import CHART_DIR, SCENARIOS, chart, render

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())

BAD_VALUES: dict[str, dict[str, Any]] = {
    "misspelt top-level key": {"replica": 2},
    "replicas as a word": {"controller": {"replicas": "two"}},
    "misspelt nested key": {"controller": {"replica": 2}},
    "misspelt kubelet dir": {"linux": {"kubeletdir": "/var/lib/kubelet"}},
    "relative kubelet dir": {"linux": {"kubeletDir": "var/lib/kubelet"}},
    "windows kubelet dir with a quote": {"windows": {"kubeletDir": "C:\\k'; Remove-Item C:\\"}},
    "windows enabled as a string": {"windows": {"enabled": "true"}},
    "bad lifecycle mode": {"driver": {"volumeLifecycleModes": ["Persistent", "Inline"]}},
    "lifecycle modes empty": {"driver": {"volumeLifecycleModes": []}},
    "selector label in customLabels": {"customLabels": {"app.kubernetes.io/instance": "x"}},
    "selector label in podLabels": {"podLabels": {"app.kubernetes.io/component": "node"}},
    "label value not a string": {"customLabels": {"team": 1}},
    "runOnControlPlane as a string": {"controller": {"runOnControlPlane": "yes"}},
    "storage class parameters as a list": {
        "storageClasses": [{"name": "smb", "parameters": ["source=//s/x"]}]
    },
    "storage class parameter as a map": {
        "storageClasses": [{"name": "smb", "parameters": {"source": {"server": "s"}}}]
    },
    "bad registrar timeout": {"linux": {"registrarTimeout": "30"}},
    "windows grace beyond hcsshim's 5 s": {"windows": {"gracePeriod": 5}},
    "bad driver name": {"driver": {"name": "-smb_nfs"}},
    "bad log format": {"log": {"format": "xml"}},
    "log level out of range": {"log": {"level": 11}},
    "bad pull policy": {"image": {"driver": {"pullPolicy": "Sometimes"}}},
    "unknown image": {"image": {"csiAttacher": {"repository": "x", "tag": "v1"}}},
    "bad port": {"controller": {"metricsPort": 70000}},
    "bad duration": {"controller": {"provisionerTimeout": "two minutes"}},
    "extra arg without a dash": {"controller": {"extraArgs": ["backend-workers=4"]}},
    "storage class without name": {"storageClasses": [{"source": "//s/x"}]},
    "misspelt storage class key": {"storageClasses": [{"name": "smb", "sorce": "//s/x"}]},
    "bad onDelete": {"storageClasses": [{"name": "smb", "source": "//s/x", "onDelete": "keep"}]},
    "mountPermissions as a number": {
        "storageClasses": [{"name": "nfs", "source": "s:/x", "mountPermissions": 775}]
    },
    "demo secret without values": {"demoSecret": {"enabled": True}},
    "misspelt service monitor": {"metrics": {"servicemonitor": {"enabled": True}}},
    "resources typo": {"controller": {"resources": {"driver": {"limit": {"memory": "1Gi"}}}}},
    "misspelt snapshots toggle": {"snapshots": {"enable": True}},
    "misspelt snapshots key": {"snapshots": {"enabled": True, "volumeSnapshotClass": []}},
    "snapshots enabled as a string": {"snapshots": {"enabled": "true"}},
    "snapshot class without name": {"snapshots": {"volumeSnapshotClasses": [{"isDefault": True}]}},
    "misspelt snapshot class key": {
        "snapshots": {"volumeSnapshotClasses": [{"name": "s", "snapshotdir": "x"}]}
    },
    "bad deletionPolicy": {
        "snapshots": {"volumeSnapshotClasses": [{"name": "s", "deletionPolicy": "delete"}]}
    },
    "absolute snapshotDir": {
        "snapshots": {"volumeSnapshotClasses": [{"name": "s", "snapshotDir": "/snaps"}]}
    },
    "snapshotDir with a backslash": {
        "snapshots": {"volumeSnapshotClasses": [{"name": "s", "snapshotDir": "k8s\\snaps"}]}
    },
    "snapshotDir with an empty part": {
        "snapshots": {"volumeSnapshotClasses": [{"name": "s", "snapshotDir": "k8s//snaps"}]}
    },
    "bad snapshotter timeout": {"controller": {"snapshotterTimeout": "2 minutes"}},
    "snapshot class as a string": {"snapshots": {"volumeSnapshotClasses": ["smb-snapshots"]}},
    "bad snapshotter pull policy": {"image": {"csiSnapshotter": {"pullPolicy": "Sometimes"}}},
}


@pytest.mark.parametrize("values", BAD_VALUES.values(), ids=list(BAD_VALUES))
def test_schema_rejects(values: dict[str, Any]) -> None:
    with pytest.raises(HelmValuesError):
        chart().validate_schema(values)
    with pytest.raises(HelmValuesError):
        render(values)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_schema_accepts_the_scenarios(scenario: str) -> None:
    chart().validate_schema(SCENARIOS[scenario])


def test_schema_is_draft07_and_closed() -> None:
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, where
            for key, child in node.items():
                walk(child, f"{where}/{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{where}/{index}")

    walk(SCHEMA, "#")


def test_values_yaml_matches_the_schema() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    jsonschema.Draft7Validator(SCHEMA).validate(values)
    # Every documented value has a schema entry (no silently ignored keys).
    assert set(values) <= set(SCHEMA["properties"])
