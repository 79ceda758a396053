from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driver.errors import InvalidArgument
from driver.source import Source, parse_source


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("//srv/share", Source("smb", "srv", None, "share", "")),
        ("//srv:4450/share/base/dir/", Source("smb", "srv", 4450, "share", "base/dir")),
        ("smb://10.0.0.1/s", Source("smb", "10.0.0.1", None, "s", "")),
        ("//[::1]:4450/s", Source("smb", "::1", 4450, "s", "")),
        ("srv:/export", Source("nfs", "srv", None, "/export")),
        ("srv:/export/base/", Source("nfs", "srv", None, "/export/base")),
        ("srv:/", Source("nfs", "srv", None, "/")),
        ("nfs://srv:2050/export", Source("nfs", "srv", 2050, "/export")),
        ("[::1]:/export", Source("nfs", "::1", None, "/export")),
    ],
)
def test_parse(text: str, expected: Source) -> None:
    assert parse_source(text) == expected
    assert parse_source(str(expected)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "//srv",
        "//srv/",
        "//srv/../x",
        "//srv/share/../../x",
        "\\\\srv\\share",
        "//srv:abc/s",
        "//srv:0/s",
        "srv:export",
        "srv:/a/../b",
        "srv:2049:/export",
        "ftp://x/y",
        "//-bad/s",
        "//[zz]/s",
        "//srv/sh:are",
        "//srv/share\x00",
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_source(text)


def test_protocol_must_agree() -> None:
    assert parse_source("//s/x", "SMB").protocol == "smb"
    with pytest.raises(InvalidArgument, match="contradicts"):
        parse_source("//s/x", "nfs")
    with pytest.raises(InvalidArgument, match="not one of"):
        parse_source("//s/x", "ceph")


@given(st.text(max_size=80))
def test_never_crashes_and_never_escapes(text: str) -> None:
    try:
        src = parse_source(text)
    except InvalidArgument:
        return
    for part in (src.share + "/" + src.base).split("/"):
        assert part not in ("..", ".")
    assert "\\" not in src.base
    assert "\x00" not in src.base
