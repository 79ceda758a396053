"""The controller Deployment: unprivileged, its sidecars and the snapshotter."""

from __future__ import annotations

import posixpath

import pytest

from tests.chart.support import (
    SCENARIOS,
    container,
    containers,
    documents,
    expand_env,
    flag,
    merged_values,
    of_kind,
    one,
    pod_spec,
)
from tests.chart.workloads import IDS, driver_config, duration_seconds, mount_source


@pytest.mark.parametrize("scenario", IDS)
def test_controller_is_unprivileged(scenario: str) -> None:
    values = merged_values(SCENARIOS[scenario])
    controller = one(documents(SCENARIOS[scenario]), "Deployment", "-controller")
    spec = pod_spec(controller)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["hostNetwork"] is values["controller"]["hostNetwork"]
    assert spec.get("priorityClassName", "") == values["controller"]["priorityClassName"]
    assert spec["nodeSelector"]["kubernetes.io/os"] == "linux"
    assert "automountServiceAccountToken" not in spec  # the sidecars need the API
    for volume in spec["volumes"]:
        assert "hostPath" not in volume
    for c in containers(controller):
        security = c["securityContext"]
        assert security["privileged"] is False
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert all("mountPropagation" not in m for m in c.get("volumeMounts", []))
    sysctls = {s["name"]: s["value"] for s in spec["securityContext"].get("sysctls", [])}
    if values["controller"]["hostNetwork"]:
        assert sysctls == {}  # a host-network pod cannot set namespaced net sysctls
    else:
        assert sysctls == {"net.ipv4.ip_unprivileged_port_start": "512"}


@pytest.mark.parametrize("scenario", IDS)
def test_controller_sidecars(scenario: str) -> None:
    values = merged_values(SCENARIOS[scenario])
    docs = documents(SCENARIOS[scenario])
    controller = one(docs, "Deployment", "-controller")
    assert controller["spec"]["replicas"] == values["controller"]["replicas"]
    provisioner = container(controller, "csi-provisioner")
    args = provisioner["args"]
    assert "--leader-election" in args
    assert "--extra-create-metadata" in args
    assert duration_seconds(flag(args, "--timeout") or "0s") >= 60
    assert expand_env(args, provisioner["env"])[0] == "--csi-address=/csi/csi.sock"
    resizer = container(controller, "csi-resizer")
    assert "--leader-election" in resizer["args"]
    # Soft anti-affinity spreads replicas without blocking a one-node cluster.
    anti = pod_spec(controller)["affinity"]["podAntiAffinity"]
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selector.items() <= controller["spec"]["template"]["metadata"]["labels"].items()
    budgets = of_kind(docs, "PodDisruptionBudget")
    assert len(budgets) == (1 if values["controller"]["replicas"] > 1 else 0)
    # Every sidecar talks to the socket the driver serves.
    driver = container(controller, "driver")
    socket_dir = next(m["name"] for m in driver["volumeMounts"] if m["mountPath"] == "/csi")
    for c in containers(controller):
        assert any(
            m["name"] == socket_dir and m["mountPath"] == "/csi" for m in c["volumeMounts"]
        ), c["name"]


# Flags csi-snapshotter (v8) knows. It is not our program: check the chart
# only passes flags from this set, with the values below.
SNAPSHOTTER_FLAGS = {
    "--csi-address",
    "--v",
    "--timeout",
    "--leader-election",
    "--leader-election-namespace",
    "--leader-election-lease-duration",
    "--leader-election-renew-deadline",
    "--leader-election-retry-period",
    "--extra-create-metadata",
    "--feature-gates",
    "--kube-api-qps",
    "--kube-api-burst",
    "--worker-threads",
    "--resync-period",
    "--retry-interval-start",
    "--retry-interval-max",
    "--http-endpoint",
    "--metrics-path",
    "--snapshot-name-prefix",
    "--snapshot-name-uuid-length",
}


@pytest.mark.parametrize("scenario", IDS)
def test_snapshotter_sidecar(scenario: str) -> None:
    values = merged_values(SCENARIOS[scenario])
    controller = one(documents(SCENARIOS[scenario]), "Deployment", "-controller")
    names = [c["name"] for c in containers(controller)]
    if not values["snapshots"]["enabled"]:
        assert "csi-snapshotter" not in names
        return
    snapshotter = container(controller, "csi-snapshotter")
    args = expand_env(snapshotter["args"], snapshotter["env"])
    for arg in args:
        assert arg.startswith("--"), arg
        assert arg.split("=", 1)[0] in SNAPSHOTTER_FLAGS, arg
    # Boolean flags stand alone (a Go bool flag takes no separate value).
    for name in ("--leader-election", "--extra-create-metadata"):
        assert name in args, name
    # The socket the controller's driver serves, through the shared volume.
    driver_endpoint = str(driver_config(controller).endpoint)
    assert driver_endpoint.startswith("unix://")
    socket = flag(args, "--csi-address")
    assert socket == driver_endpoint.removeprefix("unix://")
    socket_dir = posixpath.dirname(socket)
    assert mount_source(controller, snapshotter, socket_dir) == mount_source(
        controller, container(controller, "driver"), socket_dir
    )
    # Leader election in the pod's own namespace (where the Role grants leases).
    namespace_var = next(e for e in snapshotter["env"] if e["name"] == "NAMESPACE")
    assert namespace_var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert "--leader-election-namespace=$(NAMESPACE)" in snapshotter["args"]
    assert flag(args, "--timeout") == values["controller"]["snapshotterTimeout"]
    assert duration_seconds(flag(args, "--timeout") or "0s") >= 60
    assert flag(args, "--v") == str(values["sidecars"]["logLevel"])
    # No group snapshots: the driver has no GroupController service.
    assert flag(args, "--feature-gates") == "CSIVolumeGroupSnapshot=false"
    for extra in values["controller"]["snapshotterExtraArgs"]:
        assert extra in args
    image = values["image"]["csiSnapshotter"]
    assert snapshotter["image"] == f"{image['repository']}:{image['tag']}"
    assert snapshotter["imagePullPolicy"] == image["pullPolicy"]
    assert snapshotter["resources"] == values["controller"]["resources"]["csiSnapshotter"]
    assert names.index("csi-snapshotter") > names.index("driver")
