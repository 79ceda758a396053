"""`helm package` gives an archive whose version and appVersion are the Python package's."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import yaml
from helm_python.chart import Chart

from tests.chart.support import ROOT, chart_metadata, documents, with_base
from tests.tools.package_chart import package_chart, project_version


def test_chart_version_is_the_python_package_version() -> None:
    """Chart.yaml itself agrees, so a plain `helm package` does too."""
    version = project_version()
    assert chart_metadata()["version"] == version
    assert chart_metadata()["appVersion"] == version


def test_package_archive(tmp_path: Path) -> None:
    archive = package_chart(tmp_path)
    version = project_version()
    assert archive.name == f"csi-driver-smb-nfs-{version}.tgz"
    packaged = Chart.load_archive(archive.read_bytes())
    assert packaged.metadata["version"] == version
    assert packaged.metadata["appVersion"] == version
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        chart_yaml = yaml.safe_load(tar.extractfile("csi-driver-smb-nfs/Chart.yaml").read())  # type: ignore[union-attr]
    assert chart_yaml["appVersion"] == version
    assert "csi-driver-smb-nfs/values.schema.json" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".orig", ".swp"))]
    # The archive renders what the directory renders.
    rendered = packaged.render(with_base({}), name="csi-smb-nfs", namespace="kube-system")
    kinds = sorted(
        d["kind"]
        for path, text in rendered.items()
        if path.endswith(".yaml")
        for d in yaml.safe_load_all(text)
        if d
    )
    assert kinds == sorted(d["kind"] for d in documents({}))
    image = f"registry.example.com/storage/csi-driver-smb-nfs:{version}"
    assert image in "".join(rendered.values())


def test_package_command(tmp_path: Path) -> None:
    """What CI runs (make chart-package)."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.tools.package_chart", "--destination", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    assert Path(out.stdout.strip()).is_file()
