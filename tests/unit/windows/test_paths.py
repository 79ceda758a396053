"""Windows path handling: kubelet paths, link targets, share roots, user names."""

from __future__ import annotations

import pytest

from driver.credentials import Credentials
from driver.errors import (
    InvalidArgument,
)
from node.windows import (
    WindowsPlatform,
    is_within,
    normalize_link_target,
    normalize_path,
    smb_user,
    unc_host,
    unc_root,
)
from tests.unit.windows.fake import (
    CREDS,
)

# ------------------------------------------------------------------ paths


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (r"\var\lib\kubelet\plugins\x\globalmount", r"C:\var\lib\kubelet\plugins\x\globalmount"),
        ("/var/lib/kubelet/pods/p/mount", r"C:\var\lib\kubelet\pods\p\mount"),
        (r"c:\var\lib\kubelet\pods\p\volumes\kubernetes.io~csi\pv\mount", None),
        ("D:\\k\\\\x\\", r"D:\k\x"),
    ],
)
def test_paths_are_normalised(given: str, expected: str | None) -> None:
    want = expected or "C" + given[1:]
    assert normalize_path(given, what="p") == want


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("", "required"),
        (r"\var\lib\..\kubelet", "'..'"),
        (r"C:\var\.\x", "'.'"),
        (r"C:\var\a<b", "not allowed"),
        (r"C:\var\a>b", "not allowed"),
        ('C:\\var\\a"b', "not allowed"),
        (r"C:\var\a|b", "not allowed"),
        (r"C:\var\a?b", "not allowed"),
        (r"C:\var\a*b", "not allowed"),
        (r"C:\var\a:b", "':' is only allowed"),
        ("C:\\var\\a\x00b", "control characters"),
        (r"\\server\share\x", "not a UNC"),
        (r"\\?\C:\var\x", "not a UNC"),
        (r"var\lib", "absolute"),
        (r"C:var", "absolute"),
        ("1:\\x", "absolute"),
        ("C:\\", "drive root"),
        (r"C:\var\con", "reserved device name"),
        ("C:\\" + "\\".join(["a" * 200] * 2), "MAX_PATH"),
    ],
)
def test_bad_paths_are_rejected(platform: WindowsPlatform, given: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match="staging") as info:
        platform.check_path(given, what="staging_target_path")
    assert complaint in info.value.message


def test_path_length_limit_is_max_path() -> None:
    ok = "C:\\" + "a" * 200 + "\\" + "b" * 55  # 259 characters: the longest Windows path
    assert normalize_path(ok, what="p") == ok
    with pytest.raises(InvalidArgument):
        normalize_path(ok + "b", what="p")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (r"\\?\UNC\fileserver\share\base", r"\\fileserver\share\base"),
        (r"\??\UNC\fileserver\share\base", r"\\fileserver\share\base"),
        (r"UNC\fileserver\share\base", r"\\fileserver\share\base"),
        ("\\\\?\\unc\\fileserver\\share\\", r"\\fileserver\share"),
        ("\\\\fileserver\\share\\base\\\\", r"\\fileserver\share\base"),
        (r"\\?\C:\var\lib\x", r"C:\var\lib\x"),
        (r"\??\C:\var\lib\x", r"C:\var\lib\x"),
        ("C:/var/lib/x", r"C:\var\lib\x"),
        ("C:\\", "C:\\"),
    ],
)
def test_link_targets_are_normalised(target: str, expected: str) -> None:
    assert normalize_link_target(target) == expected


def test_share_roots_and_hosts() -> None:
    assert unc_root(r"\\?\UNC\FileServer\Share\a\b") == r"\\FileServer\Share"
    assert unc_root(r"\\fileserver") is None
    assert unc_root(r"C:\x") is None
    assert is_within(r"\\?\UNC\FILESERVER\share\base", r"\\fileserver\SHARE")
    assert not is_within(r"\\fileserver\share2\x", r"\\fileserver\share")
    assert unc_host("fd00::1") == "fd00--1.ipv6-literal.net"
    assert unc_host("fe80::1%4") == "fe80--1s4.ipv6-literal.net"
    assert unc_host("10.0.0.5") == "10.0.0.5"


def test_user_names_carry_a_domain() -> None:
    assert smb_user(CREDS, "fileserver") == "CORP\\alice"
    assert smb_user(Credentials("alice", "pw"), "fileserver") == "fileserver\\alice"
    assert smb_user(Credentials("alice@corp.example", "pw"), "fs") == "alice@corp.example"


def test_capabilities(platform: WindowsPlatform) -> None:
    assert platform.capabilities == {
        "STAGE_UNSTAGE_VOLUME",
        "GET_VOLUME_STATS",
        "VOLUME_CONDITION",
        "SINGLE_NODE_MULTI_WRITER",
    }
    assert platform.name == "windows"
