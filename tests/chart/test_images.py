"""Every image the chart can render exists: sidecars only at confirmed releases,
the driver images only where the operator says they were pushed."""

from __future__ import annotations

import re

import pytest
from helm_python import HelmRenderError

from tests.chart.support import (
    ROOT,
    SCENARIOS,
    containers,
    default_values,
    documents,
    render_raw,
    workloads,
)

# Releases confirmed from the upstream repositories' tags (and, for the
# grpc proxy, its published Windows images). A tag that is not here fails:
# an image that cannot be pulled leaves a node unregistered. Where each was
# confirmed is written in docs/helm.md ("Sidecar images"); to move a sidecar,
# confirm the release there first, then add it here and to the docs table.
CONFIRMED: dict[str, set[str]] = {
    "registry.k8s.io/sig-storage/csi-provisioner": {"v6.3.0"},
    "registry.k8s.io/sig-storage/csi-resizer": {"v2.2.1"},
    "registry.k8s.io/sig-storage/csi-snapshotter": {"v8.6.0"},
    "registry.k8s.io/sig-storage/livenessprobe": {"v2.19.0"},
    "registry.k8s.io/sig-storage/csi-node-driver-registrar": {"v2.17.0"},
    # v0.5.7: the first with a Windows Server 2025 image.
    "docker.io/democraticcsi/csi-grpc-proxy": {"v0.5.7"},
}
SIDECAR_VALUES = {
    "csiProvisioner",
    "csiResizer",
    "csiSnapshotter",
    "livenessProbe",
    "nodeDriverRegistrar",
    "csiGrpcProxy",
}
HELM_DOC = ROOT / "docs" / "helm.md"


def _split(image: str) -> tuple[str, str]:
    repository, _, tag = image.rpartition(":")
    return repository, tag


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sidecars_are_confirmed_releases(scenario: str) -> None:
    values = SCENARIOS[scenario]
    if any(values.get("image", {}).get(k) for k in SIDECAR_VALUES):
        pytest.skip("the scenario overrides sidecar images on purpose")
    seen = set()
    for workload in workloads(documents(values)):
        for c in containers(workload):
            if c["name"] in ("driver", "gssd", "init-plugin-dir"):
                continue  # the driver's own image: the operator's registry
            repository, tag = _split(c["image"])
            assert repository in CONFIRMED, c["image"]
            assert tag in CONFIRMED[repository], f"{c['image']}: not a confirmed release"
            seen.add(repository)
    assert seen


def test_every_sidecar_default_is_confirmed_and_used() -> None:
    images = default_values()["image"]
    assert set(images) == SIDECAR_VALUES | {"driver", "windowsDriver"}
    defaults = {images[k]["repository"]: images[k]["tag"] for k in SIDECAR_VALUES}
    assert set(defaults) == set(CONFIRMED)
    for repository, tag in defaults.items():
        assert tag in CONFIRMED[repository], (repository, tag)
    # Every sidecar is rendered by some toggle (nothing confirmed for nothing).
    rendered = {
        _split(c["image"])[0]
        for values in (SCENARIOS["windows"], SCENARIOS["snapshots"])
        for w in workloads(documents(values))
        for c in containers(w)
    }
    assert set(CONFIRMED) <= rendered


def test_docs_list_the_confirmed_releases() -> None:
    """docs/helm.md's table names every confirmed tag and where it was confirmed."""
    text = HELM_DOC.read_text()
    section = text.split("## Sidecar images", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented: dict[str, str] = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        image = cells[0].strip("`")
        assert len(cells) >= 3, row
        assert cells[2], f"{image}: say where the release was confirmed"
        repository, tag = _split(image)
        documented[repository] = tag
    assert documented == {repo: next(iter(tags)) for repo, tags in CONFIRMED.items()}


def test_driver_image_has_no_unpublishable_default() -> None:
    """No repository: the install fails and says how to build and push."""
    images = default_values()["image"]
    assert images["driver"]["repository"] == ""
    assert images["windowsDriver"]["repository"] == ""
    with pytest.raises(HelmRenderError, match=r"image\.driver\.repository is required.*make image"):
        render_raw({})
    only_linux = {"image": {"driver": {"repository": "registry.example.com/x"}}}
    render_raw(only_linux)  # Windows off: its image is not needed
    with pytest.raises(
        HelmRenderError, match=r"image\.windowsDriver\.repository is required.*deploy/windows"
    ):
        render_raw({**only_linux, "windows": {"enabled": True}})


def test_readme_install_sets_both_driver_images() -> None:
    for path in (ROOT / "README.md", HELM_DOC):
        text = path.read_text()
        installs = re.findall(r"helm (?:install|upgrade)(?:[^\n\\]|\\\n)*", text)
        assert installs, path
        first = installs[0]
        assert "image.driver.repository=" in first, (path, first)
        assert "image.windowsDriver.repository=" in first, (path, first)
