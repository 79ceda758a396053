"""The Linux and Windows node DaemonSets: what the driver and the registrar need
from the host, and a Windows HostProcess pod."""

from __future__ import annotations

import posixpath
import re

import pytest

from tests.chart.support import (
    SCENARIOS,
    container,
    containers,
    documents,
    expand_env,
    flag,
    merged_values,
    pod_spec,
)
from tests.chart.workloads import (
    IDS,
    driver_config,
    driver_name,
    duration_seconds,
    linux_nodes,
    mount_source,
    volume_named,
    windows_nodes,
)


@pytest.mark.parametrize("scenario", IDS)
def test_linux_node(scenario: str) -> None:
    values = merged_values(SCENARIOS[scenario])
    docs = documents(SCENARIOS[scenario])
    nodes = linux_nodes(docs)
    assert len(nodes) == (1 if values["linux"]["enabled"] else 0)
    name = driver_name(docs)
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
        assert volume_named(node, mounts[0]["name"])["hostPath"]["path"] == kubelet
        # Nothing else propagates: sidecars get plain mounts.  rpc.gssd (only
        # with krb5.nfsGssd) must mount rpc_pipefs: privileged, no propagation.
        for c in containers(node):
            if c["name"] != "driver":
                assert all("mountPropagation" not in m for m in c.get("volumeMounts", []))
            if c["name"] not in ("driver", "gssd"):
                assert c["securityContext"]["privileged"] is False
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert ("gssd" in [c["name"] for c in containers(node)]) is values["krb5"]["nfsGssd"]
        # The socket the driver serves is the one the registrar registers.
        plugin_dir = posixpath.join(kubelet, "plugins", name)
        assert mount_source(node, driver, "/csi")["hostPath"]["path"] == plugin_dir
        # Node RPCs accept kubelet's paths only: the driver knows where they are.
        assert driver_config(node).kubelet_dir == kubelet
        registrar = container(node, "node-driver-registrar")
        args = expand_env(registrar["args"], registrar.get("env", []))
        assert flag(args, "--csi-address") == "/csi/csi.sock"
        assert flag(args, "--kubelet-registration-path") == f"{plugin_dir}/csi.sock"
        assert mount_source(node, registrar, "/csi")["hostPath"]["path"] == plugin_dir
        registration = mount_source(node, registrar, "/registration")["hostPath"]["path"]
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
    nodes = windows_nodes(docs)
    assert len(nodes) == (1 if values["windows"]["enabled"] else 0)
    name = driver_name(docs)
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
        config = driver_config(node)
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
        assert duration_seconds(flag(registrar["args"], "--timeout") or "0s") >= 30
        driver = container(node, "driver")
        assert driver["command"] == values["windows"]["command"]
        # hcsshim ends the job 5 s after CTRL_SHUTDOWN_EVENT: the drain fits in that.
        grace = values["windows"]["gracePeriod"]
        assert grace <= 4
        assert f"--grace-period={grace}" in driver["args"]  # extraArgs may still override
        assert spec["terminationGracePeriodSeconds"] == grace + 1 <= 5
        assert config.kubelet_dir == kubelet
        assert _is_relative_exe(driver["command"][0])
