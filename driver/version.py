"""The package version, as a constant.

It equals ``[project] version`` in ``pyproject.toml`` (a unit test compares
it with the installed distribution's), so the driver does not need
``importlib.metadata`` (with its email/zipfile/csv imports: ~6 MiB RSS and
~15 ms, measured) to answer GetPluginInfo or ``--version``.
"""

from __future__ import annotations

VERSION = "0.1.0"


def package_version() -> str:
    return VERSION
