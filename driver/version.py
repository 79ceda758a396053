"""The package version, from the installed distribution's metadata."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "csi-driver-smb-nfs"


def package_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0.0.0+unknown"
