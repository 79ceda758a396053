"""RBAC: least privilege, and the service account names."""

from __future__ import annotations

import pytest

from tests.chart.support import (
    SCENARIOS,
    documents,
    merged_values,
    of_kind,
    one,
    pod_spec,
    rendered_text,
    workloads,
)


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
