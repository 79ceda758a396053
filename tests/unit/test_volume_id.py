from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driver.errors import InvalidArgument
from driver.paths import safe_relpath
from driver.source import Source
from driver.volume_id import VolumeId, parse_volume_id

_name_chars = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='\\:*?"<>|/')
component = st.text(_name_chars, min_size=1, max_size=20).filter(
    lambda s: s.strip() == s and not s.endswith(".") and s not in (".", "..")
)


def _valid(part: str) -> bool:
    try:
        safe_relpath(part)
    except InvalidArgument:
        return False
    return True


rel_dir = st.lists(component.filter(_valid), min_size=1, max_size=4).map("/".join)
hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,8}){0,2}", fullmatch=True).filter(
        lambda h: not h.endswith("-")
    ),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
ports = st.one_of(st.none(), st.integers(1, 65535))


@st.composite
def volume_ids(draw: st.DrawFn) -> VolumeId:
    protocol = draw(st.sampled_from(["smb", "nfs"]))
    share = draw(component.filter(_valid))
    if protocol == "nfs":
        share = "/" + draw(rel_dir)
    options: tuple[tuple[str, str], ...] = ()
    if protocol == "nfs" and draw(st.booleans()):
        options = (("vers", draw(st.sampled_from(["3", "4.0", "4.1"]))),)
    return VolumeId(
        source=Source(protocol, draw(hosts), draw(ports), share),
        dir=draw(rel_dir),
        on_delete=draw(st.sampled_from(["delete", "retain", "archive"])),
        options=options,
    )


@given(volume_ids())
def test_round_trip(vid: VolumeId) -> None:
    text = vid.format()
    assert parse_volume_id(text) == vid
    assert parse_volume_id(text).format() == text


@given(st.text(max_size=200))
def test_parser_never_crashes(text: str) -> None:
    try:
        vid = parse_volume_id(text)
    except InvalidArgument:
        return
    # Anything accepted is canonical and safe.
    assert vid.format() == text
    assert ".." not in vid.dir.split("/")
    assert not vid.dir.startswith("/")


def test_example_format() -> None:
    vid = VolumeId(Source("smb", "files.example", None, "data"), "k8s/pvc-1", "delete")
    assert vid.format() == "v1#smb#files.example#data#k8s/pvc-1#delete"
    nfs = VolumeId(Source("nfs", "::1", 2049, "/export"), "pvc-2", "archive", (("vers", "3"),))
    assert nfs.format() == "v1#nfs#[::1]:2049#/export#pvc-2#archive#vers=3"
    assert parse_volume_id(nfs.format()) == nfs


@pytest.mark.parametrize(
    "text",
    [
        "",
        "v2#smb#h#s#d#delete",
        "v1#smb#h#s#../etc#delete",
        "v1#smb#h#s#a/../../b#delete",
        "v1#smb#h#s#/abs#delete",
        "v1#smb#h#s#a%2F..%2F..#delete",
        "v1#smb#h#s#a%00b#delete",
        "v1#smb#h#s#a%5Cb#delete",  # backslash
        "v1#smb#h#s#..%5C..#delete",
        "v1#smb#h#s#a//b#delete",
        "v1#smb#h#s##delete",
        "v1#smb#h#s#d#destroy",
        "v1#ftp#h#s#d#delete",
        "v1#smb#h#s/x#d#delete",
        "v1#nfs#h#export#d#delete",
        "v1#nfs#h#/export/../x#d#delete",
        "v1#smb#h:0#s#d#delete",
        "v1#smb#h:99999#s#d#delete",
        "v1#smb#h#s#d#delete#",
        "v1#smb#h#s#d#delete#vers",
        "v1#smb#h#s#%64#delete",  # non-canonical encoding of "d"
        "v1#smb#h#s#d#delete#b=1,a=2",  # unsorted options
        "v1#smb#h#s#CON#delete",
        "v1#smb#h#s#a:b#delete",
        "v1#smb#h#s#d#delete#x#y",
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_volume_id(text)
