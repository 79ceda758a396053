"""The driver's command line in every workload parses with the driver's own
parser; one driver name everywhere; the CSIDriver object."""

from __future__ import annotations

import pytest

from tests.chart.support import (
    SCENARIOS,
    container,
    documents,
    merged_values,
    of_kind,
    one,
    os_of,
    workloads,
)
from tests.chart.workloads import IDS, driver_config, driver_name


@pytest.mark.parametrize("scenario", IDS)
def test_driver_args_parse_with_the_driver_parser(scenario: str) -> None:
    values = merged_values(SCENARIOS[scenario])
    docs = documents(SCENARIOS[scenario])
    seen = set()
    for workload in workloads(docs):
        config = driver_config(workload)
        kind = workload["kind"]
        if kind == "Deployment":
            assert config.mode == "controller"
            assert str(config.endpoint) == "unix:///csi/csi.sock"
            seen.add("controller")
        elif os_of(workload) == "linux":
            assert config.mode == "node"
            assert str(config.endpoint) == "unix:///csi/csi.sock"
            assert config.node_id == "node-1.example.com"
            seen.add("linux")
        else:
            assert config.mode == "node"
            assert config.endpoint.scheme == "tcp"
            assert config.endpoint.host == "127.0.0.1"  # loopback only
            assert config.endpoint.port == values["windows"]["driverPort"]
            assert config.node_id == "node-1.example.com"
            seen.add("windows")
        assert config.log_format == values["log"]["format"]
        assert config.verbosity == values["log"]["level"]
        # Metrics on exactly when enabled, on the port the container declares.
        ports = {p["name"]: p["containerPort"] for p in container(workload, "driver")["ports"]}
        if values["metrics"]["enabled"]:
            assert config.metrics_address is not None
            assert config.metrics_address[1] == ports["metrics"]
        else:
            assert config.metrics_address is None
            assert "metrics" not in ports
    expected = {"controller"}
    if values["linux"]["enabled"]:
        expected.add("linux")
    if values["windows"]["enabled"]:
        expected.add("windows")
    assert seen == expected


def test_extra_args_reach_the_driver() -> None:
    docs = documents(SCENARIOS["custom"])
    by_name = {w["metadata"]["name"]: w for w in workloads(docs)}
    controller = next(w for n, w in by_name.items() if n.endswith("-controller"))
    linux = next(w for n, w in by_name.items() if n.endswith("-node"))
    windows = next(w for n, w in by_name.items() if n.endswith("-node-win"))
    assert driver_config(controller).backend_workers == 8
    assert driver_config(controller).backend_timeout == 45
    assert driver_config(linux).mount_timeout == 60
    assert driver_config(linux).health_timeout == 3
    assert driver_config(windows).grace_period == 20
    assert driver_config(controller).metrics_address == ("::", 29671)


@pytest.mark.parametrize("scenario", IDS)
def test_driver_name_is_the_same_everywhere(scenario: str) -> None:
    docs = documents(SCENARIOS[scenario])
    name = driver_name(docs)
    for workload in workloads(docs):
        assert driver_config(workload).driver_name == name
    for storage_class in of_kind(docs, "StorageClass"):
        assert storage_class["provisioner"] == name
    for snapshot_class in of_kind(docs, "VolumeSnapshotClass"):
        assert snapshot_class["driver"] == name


@pytest.mark.parametrize("scenario", IDS)
def test_csidriver_spec(scenario: str) -> None:
    values = merged_values(SCENARIOS[scenario])
    spec = one(documents(SCENARIOS[scenario]), "CSIDriver")["spec"]
    assert spec["attachRequired"] is False
    assert spec["podInfoOnMount"] is True
    assert spec["fsGroupPolicy"] == "File"
    assert spec["requiresRepublish"] is True  # the node's self-healing runs at republish
    assert spec["volumeLifecycleModes"] == values["driver"]["volumeLifecycleModes"]
