"""Package the Helm chart as `helm package` does, stamped with the Python
package's version (chart version and appVersion), into a directory.

    python -m tests.tools.package_chart [--destination dist]

Uses Helm's own packager (PyPI helm-python-sdk): no helm binary needed.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from helm_python.chart import package

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "deploy" / "chart" / "csi-driver-smb-nfs"


def project_version() -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    version: str = pyproject["project"]["version"]
    return version


def package_chart(destination: Path) -> Path:
    """The chart archive, version and appVersion = the project's version."""
    destination.mkdir(parents=True, exist_ok=True)
    version = project_version()
    archive = package(CHART_DIR, destination=destination, version=version, app_version=version)
    return Path(archive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--destination", type=Path, default=ROOT / "dist")
    args = parser.parse_args()
    print(package_chart(args.destination))


if __name__ == "__main__":
    main()
