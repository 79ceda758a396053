"""The Windows image's Python packages keep resolving as win_amd64 wheels.

CI builds no Windows image (it needs a registry and a Windows base layer),
but ``deploy/windows/Dockerfile`` installs the driver's dependencies into an
embeddable CPython for Windows with ``pip install --platform win_amd64
--only-binary=:all:``.  A new dependency without a Windows wheel, or a
release that drops one, would break that image only.  This test runs the
same installation, for the Python version and extras the Dockerfile names,
into a temporary directory (it needs PyPI, as the image build does), and
checks what the embedded interpreter will find.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.integration

DOCKERFILE = ROOT / "deploy" / "windows" / "Dockerfile"


def _arg(text: str, name: str) -> str:
    found = re.search(rf"^ARG {name}=(\S+)$", text, re.MULTILINE)
    assert found, f"{DOCKERFILE}: no ARG {name}=..."
    return found.group(1)


def test_the_embedded_python_layout_matches_the_install() -> None:
    """python3XX._pth names Lib\\site-packages, where the wheels are installed."""
    text = DOCKERFILE.read_text()
    version, tag = _arg(text, "PYTHON_VERSION"), _arg(text, "PYTHON_TAG")
    major, minor = version.split(".")[:2]
    assert tag == f"{major}{minor}"
    assert f"python:{major}.{minor}-" in _arg(text, "BUILD_IMAGE")  # byte-compiles for it
    assert '"Lib\\\\site-packages"' in text  # a line of the ._pth file
    assert '"import site"' in text  # .pth files in site-packages are processed
    assert "--target /out/python/Lib/site-packages" in text
    assert 'ENTRYPOINT ["python\\\\python.exe", "-m", "driver"]' in text


def test_the_dependencies_install_as_win_amd64_wheels(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    version, tag = _arg(text, "PYTHON_VERSION"), _arg(text, "PYTHON_TAG")
    py_version = ".".join(version.split(".")[:2])
    # What the image adds for Windows only (environment markers are evaluated
    # for the Linux build interpreter, so these are named in the Dockerfile).
    extras = re.findall(r'^\s+"([A-Za-z0-9_.-]+[<>=!~][^"]*)" \\$', text, re.MULTILINE)
    assert extras, "the Dockerfile's pip install names no Windows-only requirement"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    target = tmp_path / "site-packages"
    argv = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--target", str(target),
        "--platform", "win_amd64",
        "--python-version", py_version,
        "--implementation", "cp",
        "--abi", f"cp{tag}",
        "--only-binary=:all:",
        "--no-compile",
        *project["dependencies"],
        *extras,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Every installed distribution is a wheel for Windows or for any platform.
    wheels = sorted(target.glob("*.dist-info/WHEEL"))
    assert len(wheels) >= len(project["dependencies"])
    for wheel in wheels:
        tags = re.findall(r"^Tag: (\S+)$", wheel.read_text(), re.MULTILINE)
        assert tags, wheel
        assert any(t.endswith(("-win_amd64", "-any")) for t in tags), (wheel.parent.name, tags)
    # The native parts the driver imports on Windows are Windows binaries.
    assert list(target.glob(f"grpc/_cython/cygrpc.cp{tag}-win_amd64.pyd"))
    assert list(target.glob("psutil/_psutil_windows*.pyd"))
    assert list(target.glob("sspilib/raw/*.pyd"))  # pyspnego's SSPI binding
    assert not list(target.rglob("*.so")), "a Linux binary in the Windows site-packages"
    for package in ("google/protobuf", "smbprotocol", "spnego", "structlog", "prometheus_client"):
        assert (target / package).is_dir(), package
