"""Snapshot IDs, page tokens, and the tree guard that keeps archive members inside the volume."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller import archive
from controller.snapshot_id import SnapshotId, parse_snapshot_id
from controller.snapshots import decode_token, encode_token
from controller.tree import TreeGuard
from driver.errors import Aborted, InvalidArgument
from tests.unit.snapshots.support import MTIME, ROOT

# -- snapshot IDs --------------------------------------------------------------


def test_snapshot_id_format_and_source_volume() -> None:
    sid = SnapshotId(ROOT, ".snapshots/s1.tar.gz", "pvc-1", "retain", (("vers", "3"),))
    text = sid.format()
    assert text == "s1#nfs#srv#/export#.snapshots/s1.tar.gz#pvc-1#retain#vers=3"
    assert parse_snapshot_id(text) == sid
    assert sid.name == "s1"
    assert sid.area == ".snapshots"
    assert sid.source_volume().format() == "v1#nfs#srv#/export#pvc-1#retain#vers=3"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "v1#nfs#srv#/export#pvc#delete",
        "s1#nfs#srv#/export#../x.tar.gz#pvc#delete",
        "s1#nfs#srv#/export#/abs.tar.gz#pvc#delete",
        "s1#nfs#srv#/export#a/../../x.tar.gz#pvc#delete",
        "s1#nfs#srv#/export#s.zip#pvc#delete",
        "s1#nfs#srv#/export#.tar.gz#pvc#delete",
        "s1#nfs#srv#/export#pvc/s.tar.gz#pvc#delete",  # inside its source volume
        "s1#nfs#srv#/export#s.tar.gz#..#delete",
        "s1#nfs#srv#/export#s.tar.gz#pvc#never",
        "s1#smb#srv#sh%2Fare#s.tar.gz#pvc#delete",
        "s1#nfs#srv#/export#s%2Etar.gz#pvc#delete",  # not canonical
        "s1#nfs#srv:2049#/export#s.tar.gz#pvc#delete#x",
        "s1#nfs#srv#/export#a%5Cb.tar.gz#pvc#delete",
        "s1#nfs#srv#/export#a%00.tar.gz#pvc#delete",
    ],
)
def test_snapshot_id_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_snapshot_id(text)


_part = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 ._#%-]{0,12}[A-Za-z0-9]", fullmatch=True)


@given(
    area=st.lists(_part, max_size=3),
    name=_part,
    source=st.lists(_part, min_size=1, max_size=3),
    on_delete=st.sampled_from(["delete", "retain", "archive"]),
)
def test_snapshot_id_roundtrip(
    area: list[str], name: str, source: list[str], on_delete: Any
) -> None:
    archive_path = "/".join([*area, name + ".tar.gz"])
    source_dir = "/".join(source)
    try:
        sid = SnapshotId(ROOT, archive_path, source_dir, on_delete)
    except InvalidArgument:
        return  # e.g. the archive lies inside the source volume
    assert parse_snapshot_id(sid.format()) == sid


def test_page_tokens() -> None:
    sid = SnapshotId(ROOT, ".snapshots/s.tar.gz", "pvc").format()
    assert decode_token(encode_token(sid)) == sid
    for bad in ("x", "n1.", "n1.!!!", "n1." + "Z2FyYmFnZQ=="):
        with pytest.raises(Aborted):
            decode_token(bad)


# -- the guard -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a//b", "a\\b", "a/./b"])
def test_guard_refuses_member_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        TreeGuard(InvalidArgument, "t").member_path(name)


def test_guard_normalises_member_names() -> None:
    guard = TreeGuard(InvalidArgument, "t")
    assert guard.member_path("./a/b/") == "a/b"
    assert guard.member_path(".") == ""
    assert guard.member_path("./") == ""


def test_guard_links() -> None:
    guard = TreeGuard(InvalidArgument, "t")
    guard.admit("d", "dir")
    guard.link("d/ok", "../x")
    for rel, target in (("esc", "../x"), ("abs", "/etc"), ("d/up", "../../x")):
        with pytest.raises(InvalidArgument):
            guard.link(rel, target)
    guard.admit("ln", "symlink")
    guard.link("ln", "d")
    with pytest.raises(InvalidArgument, match="below"):
        guard.admit("ln/file", "file")  # would write through the link
    with pytest.raises(InvalidArgument, match="twice"):
        guard.admit("ln", "file")  # would follow the link when written
    guard.check_links()


def test_guard_resolves_links_through_links() -> None:
    guard = TreeGuard(InvalidArgument, "t")
    guard.link("a", ".")  # harmless alone
    guard.link("b", "a/..")  # harmless alone lexically; a/.. is the parent
    with pytest.raises(InvalidArgument, match="leaves"):
        guard.check_links()
    loop = TreeGuard(InvalidArgument, "t")
    loop.link("x", "y")
    loop.link("y", "x")
    with pytest.raises(InvalidArgument, match="levels"):
        loop.check_links()


def test_global_header_parser() -> None:
    meta = archive.meta_for(source_volume_id="v1#nfs#s#/e#p#delete", name="n", created_ns=MTIME)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT, pax_headers=meta):
        pass
    parsed = archive.global_header(buf.getvalue())
    assert {k: v for k, v in parsed.items() if k.startswith(archive.META_PREFIX)} == meta
    assert archive.global_header(b"") == {}
    assert archive.global_header(b"x" * 1024) == {}
