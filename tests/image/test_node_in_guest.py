"""The node plugin from the image's root filesystem, with real kernel cifs and
NFS mounts: one UML guest boot that runs tests/image/inside_node.py against
Samba and the kernel NFS server on the guest's loopback.

The guest sees the host's files (hostfs), so the image's filesystem
(``podman image mount``) is there at the same path; the guest's /var is a
throw-away overlay, so nothing the run does reaches the stored image.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.inside_run import check_junit, run_inside
from tests.image.rootfs import ImageConfig
from tests.secret_scan import register_secret

pytestmark = [pytest.mark.image, pytest.mark.e2e]

INSIDE = "tests/image/inside_node.py"
PASSWORD = register_secret('image p,a"s`s $w\\rd')
EXPECTED = {"test_image_node_cifs", "test_image_node_nfs"}


def test_image_node_in_guest(tmp_path: Path, image_config: ImageConfig, image_lower: Path) -> None:
    res, tail = run_inside(
        INSIDE,
        tmp_path,
        password=PASSWORD,
        pytest_timeout=240,
        timeout=420,
        env={"IMAGE_ROOTFS": str(image_lower), "IMAGE_ENV": json.dumps(image_config.env)},
    )
    assert res.returncode == 0, f"guest pytest exit {res.returncode}:\n{tail}"
    check_junit(tmp_path / "junit.xml", EXPECTED, tail)
