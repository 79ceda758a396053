"""Each mode imports only what it needs (start-up time and idle RSS, issue 18).

A fresh interpreter builds the driver for a mode exactly as ``serve`` does
(``DriverServer`` with its services, not started) and reports the modules
it loaded.  Import cost itself is measured in ``make bench``; this checks the
behaviour that keeps it low.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from driver.plugin import BUILTIN, ENTRY_POINT_GROUP

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys
from driver.cli import parse
from driver.config import config_from_args
from driver.server import DriverServer
_parser, args = parse(["serve", "--endpoint", "unix:///unused.sock", *sys.argv[1:]])
DriverServer(config_from_args(args))
print(json.dumps(sorted(sys.modules)))
"""

#: Never needed by a node: the controller's share clients and snapshot code.
CONTROLLER_ONLY = (
    "smbprotocol",
    "smbclient",
    "cryptography",
    "spnego",
    "controller",
    "controller.nfs.libnfs",
    "controller.archive",
    "controller.snapshots",
    "tarfile",
)
#: Loaded on first use only, in any mode.
LATE = (
    "importlib.metadata",  # the version is a constant; the services are found by name
    "prometheus_client",  # only with --metrics-address
    "smbprotocol",  # the first SMB CreateVolume
    "controller.nfs.libnfs",  # the first NFS CreateVolume
    "controller.archive",  # the first snapshot, restore or clone
    "controller.snapshots",
    "tarfile",
    "psutil",
    "driver.ctl.main",  # the operator's client: `ctl` only, never `serve`
)


def loaded(*argv: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_node_mode_loads_no_controller_code() -> None:
    modules = loaded("--mode", "node")
    assert "node.service" in modules
    assert not [m for m in CONTROLLER_ONLY if m in modules]
    assert not [m for m in modules if m.startswith(("controller.", "smbprotocol."))]


@pytest.mark.parametrize("mode", ["node", "controller", "all"])
def test_what_every_mode_leaves_for_later(mode: str) -> None:
    modules = loaded("--mode", mode)
    assert not [m for m in LATE if m in modules]


def test_metrics_load_with_the_flag() -> None:
    assert "prometheus_client" in loaded("--mode", "node", "--metrics-address", "127.0.0.1:9809")


def test_builtin_services_are_the_entry_points() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"][ENTRY_POINT_GROUP] == BUILTIN


def test_the_version_is_the_distributions() -> None:
    from importlib import metadata

    from driver.version import package_version

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert package_version() == pyproject["project"]["version"]
    assert metadata.version("csi-driver-smb-nfs") == package_version()
