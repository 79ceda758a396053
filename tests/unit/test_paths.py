from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driver import paths
from driver.errors import FailedPrecondition, InvalidArgument
from driver.paths import parent_and_leaf, safe_relpath


@pytest.mark.parametrize("good", ["a", "a/b", "pvc-123", "ns/pvc name", "ü/ß", "a.b"])
def test_accepts(good: str) -> None:
    assert safe_relpath(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "/a",
        "a/",
        "a//b",
        ".",
        "..",
        "a/..",
        "../a",
        "a/./b",
        "a\\b",
        "a\x00b",
        "c:x",
        "NUL",
        "com1.txt",
        "a*",
        "x\n",
        " a",
        "a.",
        "x" * 256,
    ],
)
def test_rejects(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        safe_relpath(bad)


def test_empty_allowed_on_request() -> None:
    assert safe_relpath("", allow_empty=True) == ""


def test_parent_and_leaf() -> None:
    assert parent_and_leaf("a/b/c") == ("a/b", "c")
    assert parent_and_leaf("c") == ("", "c")


@given(st.text(max_size=60))
def test_accepted_paths_stay_inside(text: str) -> None:
    try:
        safe_relpath(text)
    except InvalidArgument:
        return
    import posixpath

    norm = posixpath.normpath("/share/" + text)
    assert norm.startswith("/share/")
    assert norm == "/share/" + text


# -- share_parts: the backends' and the tree walker's last line of defence --------


@given(st.text())
def test_share_parts_never_lets_through_traversal(path: str) -> None:
    try:
        parts = paths.share_parts(path)
    except InvalidArgument:
        return
    assert "/".join(parts) == path
    for part in parts:
        assert part not in ("", ".", "..")
        assert not set(part) & {"\\", "\x00", "/"}


def test_share_parts_refuses_with_the_callers_error() -> None:
    with pytest.raises(FailedPrecondition, match="clone: 'a:b': colon not allowed"):
        paths.share_parts("a:b", what="clone: 'a:b'", forbid=":", error=FailedPrecondition)
