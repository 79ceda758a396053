"""Health endpoints bind where kubelet can probe them and nothing else can,
on ports no other SMB/NFS CSI driver of the usual migration path uses."""

from __future__ import annotations

import pytest

from tests.chart.support import (
    SCENARIOS,
    Doc,
    container,
    containers,
    documents,
    expand_env,
    flag,
    merged_values,
    one,
    os_of,
    pod_spec,
    workloads,
)

# Defaults of the drivers operators run beside this one while migrating:
# csi-driver-smb (controller/node health and metrics 29641-29644),
# csi-driver-nfs (health 29652/29653), csi-driver-nfs's and
# csi-driver-smb's Windows/registrar endpoints (19809), livenessprobe's own
# default (9808).
UPSTREAM_PORTS = {29641, 29642, 29643, 29644, 29652, 29653, 19809, 9808}


def _ports(workload: Doc) -> list[int]:
    found = [p["containerPort"] for c in containers(workload) for p in c.get("ports", [])]
    for c in containers(workload):
        for arg in c.get("args", []):
            for name in ("--http-endpoint", "--metrics-address", "--endpoint"):
                value = flag([arg], name)
                if value and not value.startswith("unix:"):
                    found.append(int(value.rsplit(":", 1)[1]))
    return found


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_ports_collide_with_no_upstream_default(scenario: str) -> None:
    for workload in workloads(documents(SCENARIOS[scenario])):
        ports = _ports(workload)
        assert ports
        assert UPSTREAM_PORTS.isdisjoint(ports), (workload["metadata"]["name"], ports)
        # Within a pod, each declared port once (host network: on the node).
        declared = [p["containerPort"] for c in containers(workload) for p in c.get("ports", [])]
        assert len(declared) == len(set(declared)), declared


def test_linux_and_windows_node_ports_are_distinct_from_the_controller() -> None:
    """A hostNetwork controller shares a node with a node pod."""
    docs = documents({**SCENARIOS["windows"], "controller": {"hostNetwork": True}})
    controller = one(docs, "Deployment")
    for node in (w for w in workloads(docs) if w["kind"] == "DaemonSet"):
        assert set(_ports(controller)).isdisjoint(_ports(node)), os_of(node)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_node_health_endpoints_are_loopback(scenario: str) -> None:
    """Node pods share the host network: /healthz listens on 127.0.0.1 only
    and kubelet (in the host's network namespace) probes 127.0.0.1."""
    for node in (w for w in workloads(documents(SCENARIOS[scenario])) if w["kind"] == "DaemonSet"):
        assert pod_spec(node)["hostNetwork"] is True
        for c in containers(node):
            endpoint = flag(c.get("args", []), "--http-endpoint")
            if endpoint is not None:
                assert endpoint.startswith("127.0.0.1:"), (c["name"], endpoint)
            probe = c.get("livenessProbe")
            if probe:
                assert probe["httpGet"]["host"] == "127.0.0.1", c["name"]


@pytest.mark.parametrize("host_network", [False, True])
def test_controller_health_endpoint(host_network: bool) -> None:
    values = {"controller": {"hostNetwork": host_network}}
    controller = one(documents(values), "Deployment")
    port = merged_values(values)["controller"]["healthPort"]
    liveness = container(controller, "liveness-probe")
    endpoint = flag(liveness["args"], "--http-endpoint")
    probe = container(controller, "driver")["livenessProbe"]["httpGet"]
    declared = {p["name"]: p["containerPort"] for p in container(controller, "driver")["ports"]}
    assert declared[probe["port"]] == port
    if host_network:
        assert endpoint == f"127.0.0.1:{port}"
        assert probe["host"] == "127.0.0.1"
        return
    # Pod network: kubelet's httpGet goes to the pod IP, which loopback would
    # not answer; brackets keep an IPv6 pod IP apart from the port (Go's
    # listener takes "[10.1.2.3]:port" as well).
    assert "host" not in probe
    assert endpoint == f"[$(POD_IP)]:{port}"
    env = {e["name"]: e for e in liveness["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    for pod_ip in ("10.244.1.7", "fd00:10:244::7"):
        resolved = expand_env(liveness["args"], [{"name": "POD_IP", "value": pod_ip}])
        assert flag(resolved, "--http-endpoint") == f"[{pod_ip}]:{port}"


def test_registrar_timeout_covers_the_windows_path() -> None:
    values = merged_values(SCENARIOS["windows"])
    for node in (w for w in workloads(documents(SCENARIOS["windows"])) if w["kind"] == "DaemonSet"):
        registrar = container(node, "node-driver-registrar")
        timeout = flag(registrar["args"], "--timeout")
        assert timeout == values[os_of(node)]["registrarTimeout"]
    assert values["windows"]["registrarTimeout"] == "60s"
