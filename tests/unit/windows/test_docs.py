"""What the Windows documentation says stays true (issue 15's corrections)."""

from __future__ import annotations

import node.windows
from tests.harness import ROOT

WINDOWS_README = (ROOT / "deploy" / "windows" / "README.md").read_text()
README = (ROOT / "README.md").read_text()


def test_error_1219_is_explained_as_credentials_not_subdirectories() -> None:
    doc = node.windows.__doc__ or ""
    assert "subdirectories separately fails" not in doc
    assert "One identity per server" in doc
    assert "## One identity per SMB server (error 1219)" in WINDOWS_README
    assert "FAILED_PRECONDITION" in WINDOWS_README.split("(error 1219)", 1)[1]


def test_helm_docs_say_how_the_windows_image_is_built() -> None:
    helm = (ROOT / "docs" / "helm.md").read_text()
    assert "not built here" not in helm
    assert "deploy/windows/Dockerfile" in helm


def test_readme_says_what_is_enforced_where_on_windows() -> None:
    section = README.split("What is enforced where on Windows nodes:", 1)[1].split("\n## ", 1)[0]
    for row in ("read-only pod volume", "reader-only access mode", "--kubelet-dir", "loopback"):
        assert row in section, row
