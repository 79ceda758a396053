"""What the rendered workloads must get right for the driver to work and stay safe."""

from __future__ import annotations

import posixpath
import re

import pytest

from driver.cli import build_parser
from driver.config import Config, config_from_args
from tests.chart.support import (
    SCENARIOS,
    Doc,
    container,
    containers,
    documents,
    expand_env,
    flag,
    merged_values,
    of_kind,
    one,
    os_of,
    pod_spec,
    rendered_text,
    workloads,
)

IDS = list(SCENARIOS)


def _driver_config(workload: Doc) -> Config:
    """Parse a driver container's command line with the driver's own parser."""
    driver = container(workload, "driver")
    args = expand_env(driver["args"], driver.get("env", []))
    assert args[0] == "serve"
    parsed = build_parser().parse_args(args)  # exits (SystemExit) on an unknown flag
    return config_from_args(parsed)  # raises InvalidArgument on a bad value


def _driver_name(docs: list[Doc]) -> str:
    name: str = one(docs, "CSIDriver")["metadata"]["name"]
    return name


@pytest.mark.parametrize("scenario", IDS)
def test_driver_args_parse_with_the_driver_parser(scenario: str) -> None:
    values = merged_values(SCENARIOS[scenario])
    docs = documents(SCENARIOS[scenario])
    seen = set()
    for workload in workloads(docs):
        config = _driver_config(workload)
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
    assert _driver_config(controller).backend_workers == 8
    assert _driver_config(controller).backend_timeout == 45
    assert _driver_config(linux).mount_timeout == 60
    assert _driver_config(linux).health_timeout == 3
    assert _driver_config(windows).grace_period == 20
    assert _driver_config(controller).metrics_address == ("::", 29671)


@pytest.mark.parametrize("scenario", IDS)
def test_driver_name_is_the_same_everywhere(scenario: str) -> None:
    docs = documents(SCENARIOS[scenario])
    name = _driver_name(docs)
    for workload in workloads(docs):
        assert _driver_config(workload).driver_name == name
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


def _linux_nodes(docs: list[Doc]) -> list[Doc]:
    return [w for w in of_kind(docs, "DaemonSet") if os_of(w) == "linux"]


def _windows_nodes(docs: list[Doc]) -> list[Doc]:
    return [w for w in of_kind(docs, "DaemonSet") if os_of(w) == "windows"]


def _volume(workload: Doc, name: str) -> Doc:
    for volume in pod_spec(workload).get("volumes", []):
        if volume["name"] == name:
            return volume
    raise AssertionError(f"no volume {name!r}")


def _mount_source(workload: Doc, c: Doc, mount_path: str) -> Doc:
    for mount in c.get("volumeMounts", []):
        if mount["mountPath"] == mount_path:
            return _volume(workload, mount["name"])
    raise AssertionError(f"{c['name']}: nothing mounted at {mount_path}")


@pytest.mark.parametrize("scenario", IDS)
def test_linux_node(scenario: str) -> None:
    values = merged_values(SCENARIOS[scenario])
    docs = documents(SCENARIOS[scenario])
    nodes = _linux_nodes(docs)
    assert len(nodes) == (1 if values["linux"]["enabled"] else 0)
    name = _driver_name(docs)
    kubelet = values["linux"]["kubeletDir"].rstrip("/")
    for node in nodes:
        spec = pod_spec(node)
        assert spec["hostNetwork"] is True
        assert spec.get("priorityClassName", "") == values["linux"]["priorityClassName"]
        assert spec["automountServiceAccountToken"] is False
        driver = container(node, "driver")
        assert driver["securityContext"]["privileged"] is True
        # The kubelet directory, Bidirectional, at the same path as on the host.
        mounts = [m for m in driver["volumeMounts"] if m["mountPath"] == kubelet]
        assert len(mounts) == 1
        assert mounts[0]["mountPropagation"] == "Bidirectional"
        assert _volume(node, mounts[0]["name"])["hostPath"]["path"] == kubelet
        # Nothing else propagates: sidecars get plain mounts.
        for c in containers(node):
            if c["name"] != "driver":
                assert all("mountPropagation" not in m for m in c.get("volumeMounts", []))
                assert c["securityContext"]["privileged"] is False
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
        # The socket the driver serves is the one the registrar registers.
        plugin_dir = posixpath.join(kubelet, "plugins", name)
        assert _mount_source(node, driver, "/csi")["hostPath"]["path"] == plugin_dir
        # Node RPCs accept kubelet's paths only: the driver knows where they are.
        assert _driver_config(node).kubelet_dir == kubelet
        registrar = container(node, "node-driver-registrar")
        args = expand_env(registrar["args"], registrar.get("env", []))
        assert flag(args, "--csi-address") == "/csi/csi.sock"
        assert flag(args, "--kubelet-registration-path") == f"{plugin_dir}/csi.sock"
        assert _mount_source(node, registrar, "/csi")["hostPath"]["path"] == plugin_dir
        registration = _mount_source(node, registrar, "/registration")["hostPath"]["path"]
        assert registration == f"{kubelet}/plugins_registry"
        # The registrar's own /healthz (not the deprecated, always-passing
        # --mode=kubelet-registration-probe), on the host's loopback.
        assert "exec" not in registrar["livenessProbe"]
        assert all(not a.startswith("--mode") for a in args)
        reg_port = {p["name"]: p["containerPort"] for p in registrar["ports"]}["reg-healthz"]
        assert flag(args, "--http-endpoint") == f"127.0.0.1:{reg_port}"
        assert registrar["livenessProbe"]["httpGet"] == {
            "host": "127.0.0.1",
            "path": "/healthz",
            "port": "reg-healthz",
        }
        # livenessprobe serves, on loopback, the port the driver's probe asks.
        liveness = container(node, "liveness-probe")
        health = {p["name"]: p["containerPort"] for p in driver["ports"]}["healthz"]
        assert flag(liveness["args"], "--http-endpoint") == f"127.0.0.1:{health}"
        assert flag(liveness["args"], "--health-port") is None
        assert driver["livenessProbe"]["httpGet"]["port"] == "healthz"
        assert driver["livenessProbe"]["httpGet"]["host"] == "127.0.0.1"


def _is_relative_exe(command: str) -> bool:
    return not re.match(r"^([A-Za-z]:)?[\\/]", command)


@pytest.mark.parametrize("scenario", IDS)
def test_windows_node_is_hostprocess(scenario: str) -> None:
    values = merged_values(SCENARIOS[scenario])
    docs = documents(SCENARIOS[scenario])
    nodes = _windows_nodes(docs)
    assert len(nodes) == (1 if values["windows"]["enabled"] else 0)
    name = _driver_name(docs)
    kubelet = values["windows"]["kubeletDir"].rstrip("\\")
    plugin_dir = f"{kubelet}\\plugins\\{name}"
    socket = f"{plugin_dir}\\csi.sock"
    for node in nodes:
        spec = pod_spec(node)
        assert spec["securityContext"]["windowsOptions"] == {
            "hostProcess": True,
            "runAsUserName": "NT AUTHORITY\\SYSTEM",
        }
        assert spec["hostNetwork"] is True
        assert spec["nodeSelector"]["kubernetes.io/os"] == "windows"
        assert spec["os"] == {"name": "windows"}
        assert spec.get("priorityClassName", "") == values["windows"]["priorityClassName"]
        assert "volumes" not in spec
        for c in containers(node):
            assert "volumeMounts" not in c, c["name"]
            # Every container is HostProcess: none may opt out or ask for non-root.
            security = c.get("securityContext", {})
            assert security.get("windowsOptions", {}).get("hostProcess", True) is True
            assert security.get("runAsNonRoot") is not True
            for command in c.get("command", []):
                assert _is_relative_exe(command) or command.startswith("-") or " " in command
        # The init container creates the plugin directory.
        (init,) = spec["initContainers"]
        assert init["command"][0] == "powershell.exe"
        assert f"'{plugin_dir}\\'" in init["command"][-1]
        assert "New-Item -ItemType Directory" in init["command"][-1]
        # The registrar: relative .exe, registration path and plugin registration path.
        registrar = container(node, "node-driver-registrar")
        assert registrar["command"] == ["csi-node-driver-registrar.exe"]
        assert flag(registrar["args"], "--csi-address") == f"unix://{socket}"
        assert flag(registrar["args"], "--kubelet-registration-path") == socket
        assert flag(registrar["args"], "--plugin-registration-path") == (
            f"{kubelet}\\plugins_registry"
        )
        # csi-grpc-proxy serves that socket and forwards to the driver's loopback port.
        proxy = container(node, "csi-grpc-proxy")
        env = {e["name"]: e["value"] for e in proxy["env"]}
        config = _driver_config(node)
        assert env["BIND_TO"] == f"unix://{socket}"
        assert env["PROXY_TO"] == f"tcp://127.0.0.1:{config.endpoint.port}"
        # livenessprobe probes through the same socket kubelet uses.
        liveness = container(node, "liveness-probe")
        assert liveness["command"] == ["livenessprobe.exe"]
        assert flag(liveness["args"], "--csi-address") == f"unix://{socket}"
        # Health endpoints on the host's loopback, probed there by kubelet.
        driver_ports = {p["name"]: p["containerPort"] for p in container(node, "driver")["ports"]}
        assert flag(liveness["args"], "--http-endpoint") == f"127.0.0.1:{driver_ports['healthz']}"
        assert container(node, "driver")["livenessProbe"]["httpGet"]["host"] == "127.0.0.1"
        reg_port = {p["name"]: p["containerPort"] for p in registrar["ports"]}["reg-healthz"]
        assert flag(registrar["args"], "--http-endpoint") == f"127.0.0.1:{reg_port}"
        assert registrar["livenessProbe"]["httpGet"] == {
            "host": "127.0.0.1",
            "path": "/healthz",
            "port": "reg-healthz",
        }
        # The registrar's first calls cross csi-grpc-proxy to a starting driver.
        assert _seconds(flag(registrar["args"], "--timeout") or "0s") >= 30
        driver = container(node, "driver")
        assert driver["command"] == values["windows"]["command"]
        # hcsshim ends the job 5 s after CTRL_SHUTDOWN_EVENT: the drain fits in that.
        grace = values["windows"]["gracePeriod"]
        assert grace <= 4
        assert f"--grace-period={grace}" in driver["args"]  # extraArgs may still override
        assert spec["terminationGracePeriodSeconds"] == grace + 1 <= 5
        assert config.kubelet_dir == kubelet
        assert _is_relative_exe(driver["command"][0])


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


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"([0-9.]+)(ms|s|m|h)", duration):
        total += float(number) * units[unit]
    return total


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
    assert _seconds(flag(args, "--timeout") or "0s") >= 60
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
    driver_endpoint = str(_driver_config(controller).endpoint)
    assert driver_endpoint.startswith("unix://")
    socket = flag(args, "--csi-address")
    assert socket == driver_endpoint.removeprefix("unix://")
    socket_dir = posixpath.dirname(socket)
    assert _mount_source(controller, snapshotter, socket_dir) == _mount_source(
        controller, container(controller, "driver"), socket_dir
    )
    # Leader election in the pod's own namespace (where the Role grants leases).
    namespace_var = next(e for e in snapshotter["env"] if e["name"] == "NAMESPACE")
    assert namespace_var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert "--leader-election-namespace=$(NAMESPACE)" in snapshotter["args"]
    assert flag(args, "--timeout") == values["controller"]["snapshotterTimeout"]
    assert _seconds(flag(args, "--timeout") or "0s") >= 60
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


@pytest.mark.parametrize("scenario", ["defaults", "snapshots"])
def test_rbac_is_least_privilege(scenario: str) -> None:
    docs = documents(SCENARIOS[scenario])
    text = rendered_text(SCENARIOS[scenario])
    controller_sa = one(docs, "ServiceAccount", "-controller")["metadata"]["name"]
    node_sa = one(docs, "ServiceAccount", "-node")
    assert node_sa["automountServiceAccountToken"] is False
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"].endswith("Role")}
    assert roles
    for (_, role_name), role in roles.items():
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], (role_name, rule)
            resources = set(rule["resources"])
            assert resources.isdisjoint({"nodes", "csinodes", "volumeattachments", "pods"})
            if "secrets" in resources:
                assert rule["verbs"] == ["get"]
    # Every rule carries a comment saying why (in the rendered manifest).
    rule_lines = [i for i, line in enumerate(text.splitlines()) if "- apiGroups:" in line]
    lines = text.splitlines()
    assert rule_lines
    for index in rule_lines:
        assert lines[index - 1].strip().startswith("#"), lines[index]
    # Bindings: only the controller's account, only to this chart's roles.
    for binding in docs:
        if not binding["kind"].endswith("RoleBinding"):
            continue
        assert [s["name"] for s in binding["subjects"]] == [controller_sa]
        role_kind = binding["roleRef"]["kind"]
        assert (role_kind, binding["roleRef"]["name"]) in roles
    leases = roles[next(k for k in roles if k[0] == "Role")]
    assert leases["rules"][0]["resources"] == ["leases"]

    # Snapshot rules: exactly these when on, none when off; never group snapshots.
    granted: dict[str, set[tuple[str, str]]] = {}
    for (_, role_name), role in roles.items():
        for rule in role["rules"]:
            assert "groupsnapshot.storage.k8s.io" not in rule["apiGroups"], role_name
            if rule["apiGroups"] != ["snapshot.storage.k8s.io"]:
                assert "snapshot.storage.k8s.io" not in rule["apiGroups"]
                continue
            suffix = role_name.rsplit("-", 1)[1]
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.setdefault(suffix, set()).add((resource, verb))
    if not merged_values(SCENARIOS[scenario])["snapshots"]["enabled"]:
        assert granted == {}
        return
    assert granted == {
        # dataSource: VolumeSnapshot -> bound content -> snapshot handle; the
        # source-protection finalizer (update) and v6.3's sweep of orphaned
        # finalizers (list/watch).
        "provisioner": {
            *(("volumesnapshots", v) for v in ("get", "list", "watch", "update")),
            ("volumesnapshotcontents", "get"),
        },
        "snapshotter": {
            *(("volumesnapshotclasses", v) for v in ("get", "list", "watch")),
            *(("volumesnapshotcontents", v) for v in ("get", "list", "watch", "update", "patch")),
            ("volumesnapshotcontents/status", "update"),
            ("volumesnapshotcontents/status", "patch"),
        },
    }
    snapshotter = next(r for (k, n), r in roles.items() if n.endswith("-snapshotter"))
    core = {
        (res, verb)
        for rule in snapshotter["rules"]
        if rule["apiGroups"] == [""]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }
    assert core == {
        ("secrets", "get"),
        *(("events", v) for v in ("list", "watch", "create", "update", "patch")),
    }
    bound = {b["roleRef"]["name"] for b in docs if b["kind"] == "ClusterRoleBinding"}
    assert snapshotter["metadata"]["name"] in bound


def test_service_account_names() -> None:
    docs = documents(SCENARIOS["custom"])
    names = {d["metadata"]["name"] for d in of_kind(docs, "ServiceAccount")}
    assert names == {"smbnfs-ctrl", "smbnfs-node"}
    for workload in workloads(docs):
        expected = "smbnfs-ctrl" if workload["kind"] == "Deployment" else "smbnfs-node"
        assert pod_spec(workload)["serviceAccountName"] == expected
