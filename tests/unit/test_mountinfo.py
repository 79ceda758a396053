from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.linux import mountinfo
from node.linux.mountinfo import MountEntry, MountinfoError

CIFS = (
    r"46 23 0:44 / /tmp/p/c\0401 rw,relatime - cifs //127.0.0.1/share/sub/dir "
    r"rw,vers=3.1.1,cache=strict,username=e2e,uid=0,noforceuid,gid=0,addr=127.0.0.1,"
    r"file_mode=0755,dir_mode=0755,soft,nounix,serverino,echo_interval=60,actimeo=1"
)
NFS4 = (
    "48 23 0:45 / /tmp/p/n4 rw,relatime shared:7 master:2 - nfs4 127.0.0.1:/v4/x "
    "rw,vers=4.1,rsize=131072,hard,proto=tcp,timeo=600,retrans=2,sec=sys,addr=127.0.0.1"
)
BIND_RO = (
    r"49 23 0:44 / /tmp/p/b ro,relatime - cifs //127.0.0.1/share/sub/dir "
    r"rw,vers=3.1.1,username=e2e"
)
ROOT = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro"


def test_parse_cifs_line_with_escaped_space() -> None:
    entry = mountinfo.parse_line(CIFS)
    assert entry.mount_id == 46
    assert entry.parent_id == 23
    assert entry.major_minor == "0:44"
    assert entry.root == "/"
    assert entry.mount_point == "/tmp/p/c 1"
    assert entry.options == ("rw", "relatime")
    assert entry.optional_fields == ()
    assert entry.fstype == "cifs"
    assert entry.source == "//127.0.0.1/share/sub/dir"
    assert entry.super_option("vers") == "3.1.1"
    assert entry.super_option("soft") == ""
    assert entry.super_option("password") is None
    assert not entry.read_only


def test_optional_fields_and_read_only() -> None:
    entry = mountinfo.parse_line(NFS4)
    assert entry.optional_fields == ("shared:7", "master:2")
    assert entry.fstype == "nfs4"
    assert entry.source == "127.0.0.1:/v4/x"
    assert mountinfo.parse_line(BIND_RO).read_only


def test_bind_mount_is_same_view() -> None:
    cifs, bind, nfs = (mountinfo.parse_line(x) for x in (CIFS, BIND_RO, NFS4))
    assert bind.same_filesystem_view(cifs)
    assert not nfs.same_filesystem_view(cifs)


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        (r"/a\040b", "/a b"),
        (r"/tab\011x", "/tab\tx"),
        (r"/nl\012x", "/nl\nx"),
        (r"/back\134slash", "/back\\slash"),
        (r"/literal\134040", "/literal\\040"),
        ("/plain", "/plain"),
    ],
)
def test_unescape(escaped: str, plain: str) -> None:
    assert mountinfo.unescape(escaped) == plain
    assert mountinfo.escape(plain) == escaped


def test_escaped_comma_in_super_options() -> None:
    line = r"50 23 0:50 / /m rw - cifs //s/x rw,prefixpath=a\054b,vers=3.0"
    entry = mountinfo.parse_line(line)
    assert entry.super_options == ("rw", "prefixpath=a,b", "vers=3.0")


def test_lookup_helpers() -> None:
    entries = mountinfo.parse("\n".join([ROOT, CIFS, NFS4, BIND_RO, ""]))
    assert len(entries) == 4
    assert mountinfo.top(entries, "/tmp/p/c 1") == entries[1]
    assert mountinfo.top(entries, "/tmp/p/none") is None
    stacked = [*entries, mountinfo.parse_line(NFS4.replace("48 23", "60 48"))]
    assert [e.mount_id for e in mountinfo.at(stacked, "/tmp/p/n4")] == [48, 60]
    assert mountinfo.top(stacked, "/tmp/p/n4") == stacked[-1]
    found = mountinfo.by_source(entries, "cifs", "//127.0.0.1/share/sub/dir")
    assert [e.mount_id for e in found] == [46, 49]


def test_top_follows_the_stack_not_the_listing_order() -> None:
    # As the guest's kernel listed a target after a repair: the new layer
    # (reusing an older, lower ID) sits on the dead one but is listed first.
    old_layer = mountinfo.parse_line(NFS4.replace("48 23", "47 23"))
    new_layer = mountinfo.parse_line(NFS4.replace("48 23", "48 47").replace("0:47", "0:60"))
    assert mountinfo.top([new_layer, old_layer], "/tmp/p/n4") == new_layer
    assert mountinfo.top([old_layer, new_layer], "/tmp/p/n4") == new_layer


@pytest.mark.parametrize(
    "line",
    ["", "1 2 3", "x 1 0:1 / /m rw - tmpfs t rw", "1 2 0:1 / /m rw tmpfs t rw"],
)
def test_malformed_lines(line: str) -> None:
    with pytest.raises(MountinfoError):
        mountinfo.parse_line(line)


def test_read_real_table() -> None:
    entries = mountinfo.read()
    assert any(e.mount_point == "/" for e in entries)


_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
)


@given(_TEXT)
def test_escape_round_trip(text: str) -> None:
    escaped = mountinfo.escape(text)
    assert not any(c in escaped for c in " \t\n")
    assert mountinfo.unescape(escaped) == text


@given(
    point=_TEXT.map(lambda t: "/" + t),
    root=_TEXT.map(lambda t: "/" + t),
    source=_TEXT.filter(bool),
    options=st.lists(_TEXT.filter(lambda t: bool(t) and "," not in t), max_size=4),
)
def test_line_round_trip(point: str, root: str, source: str, options: list[str]) -> None:
    entry = MountEntry(
        mount_id=7,
        parent_id=1,
        major_minor="0:99",
        root=root,
        mount_point=point,
        options=("rw", "relatime"),
        optional_fields=("shared:3",),
        fstype="cifs",
        source=source,
        super_options=("rw", *options),
    )
    assert mountinfo.parse_line(mountinfo.format_line(entry)) == entry
