"""Dual-protocol volume and snapshot IDs (v2/s2) and StorageClass parameters.

v1/s1 IDs keep parsing exactly as before (tests/unit/test_volume_id.py);
here: v2/s2 round trips, traversal attempts in either source, and the
parameter errors that name their keys.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.params import parse_params
from controller.snapshot_id import SnapshotId, parse_snapshot_id
from driver.dual import DualSources, scoped_options
from driver.errors import InvalidArgument
from driver.paths import check_component
from driver.source import Source
from driver.volume_id import VolumeId, parse_volume_id
from tests.unit.test_volume_id import component, hosts, ports, rel_dir, volume_ids


def _share_ok(name: str) -> bool:
    try:
        check_component(name)
    except InvalidArgument:
        return False
    return True


share_names = component.filter(_share_ok)
EXAMPLE = "v2#nfs#nfs#files.example#data#k8s#files.example#/srv/data/k8s#pvc-3#delete"
DUAL = {"smbSource": "//files.example/data/k8s", "nfsSource": "files.example:/srv/data/k8s"}


@st.composite
def dual_trees(draw: st.DrawFn) -> DualSources:
    smb = Source(
        "smb",
        draw(hosts),
        draw(ports),
        draw(share_names),
        draw(st.one_of(st.just(""), rel_dir)),
    )
    nfs = Source("nfs", draw(hosts), draw(ports), "/" + draw(rel_dir))
    return DualSources(
        smb, nfs, draw(st.sampled_from(["nfs", "smb"])), draw(st.sampled_from(["nfs", "smb"]))
    )


@st.composite
def dual_volume_ids(draw: st.DrawFn) -> VolumeId:
    tree = draw(dual_trees())
    via = tree.provision_via
    options: tuple[tuple[str, str], ...] = ()
    if draw(st.booleans()):
        options = (("vers", draw(st.sampled_from(["3", "4.0", "4.1"]))),)
    return VolumeId(
        tree.root(via),
        tree.path(via, draw(rel_dir)),
        draw(st.sampled_from(["delete", "retain", "archive"])),
        options,
        tree,
    )


# Generating a dual ID draws two sources of filtered names: legitimately slow
# (more so on a loaded machine), which is no finding about the code under test.
SLOW_GENERATION = settings(suppress_health_check=[HealthCheck.too_slow])


@SLOW_GENERATION
@given(dual_volume_ids())
def test_v2_round_trip(vid: VolumeId) -> None:
    text = vid.format()
    assert text.startswith("v2#")
    parsed = parse_volume_id(text)
    assert parsed == vid
    assert parsed.format() == text
    assert parsed.dual is not None
    # Both sides name the same subdir of the tree.
    for protocol in ("smb", "nfs"):
        assert parsed.dual.relative(protocol, parsed.dual.path(protocol, vid.subdir)) == vid.subdir


@SLOW_GENERATION
@given(volume_ids())
def test_v1_ids_stay_v1(vid: VolumeId) -> None:
    text = vid.format()
    assert text.startswith("v1#")
    assert parse_volume_id(text).dual is None


@SLOW_GENERATION
@given(dual_volume_ids())
def test_s2_round_trip_keeps_both_sources(vid: VolumeId) -> None:
    area = vid.dual.path(vid.source.protocol, ".snapshots") if vid.dual else ".snapshots"
    sid = SnapshotId(
        vid.source, area + "/snap-1.tar.gz", vid.dir, vid.on_delete, vid.options, vid.dual
    )
    text = sid.format()
    assert text.startswith("s2#")
    parsed = parse_snapshot_id(text)
    assert parsed == sid
    assert parsed.source_volume() == vid
    assert parsed.source_volume().format() == vid.format()


def test_example() -> None:
    vid = parse_volume_id(EXAMPLE)
    assert vid.dual is not None
    assert (str(vid.source), vid.dir, vid.subdir) == (
        "files.example:/srv/data/k8s",
        "pvc-3",
        "pvc-3",
    )
    smb_side = vid.dual.root("smb"), vid.dual.path("smb", vid.subdir)
    assert (str(smb_side[0]), smb_side[1]) == ("//files.example/data", "k8s/pvc-3")
    assert vid.format() == EXAMPLE


FIELDS = 10  # of a v2 volume ID without options


def _with(field: int, value: str) -> str:
    parts = EXAMPLE.split("#")
    parts[field] = value
    return "#".join(parts)


@pytest.mark.parametrize(
    "text",
    [
        _with(1, "ftp"),  # provisionVia
        _with(2, "iscsi"),  # linuxProtocol
        _with(1, "NFS"),  # not canonical
        _with(3, "bad host"),
        _with(4, ".."),  # smb share
        _with(4, "a/b"),
        _with(5, "../etc"),  # smb base
        _with(5, "/abs"),
        _with(5, "k8s/../.."),
        _with(5, "a%5Cb"),  # backslash
        _with(5, "a%00b"),
        _with(7, "srv/data"),  # export not absolute
        _with(7, "/srv/../etc"),
        _with(7, "/srv//x"),
        _with(8, ""),  # subdir
        _with(8, ".."),
        _with(8, "a/../../b"),
        _with(8, "a%2F..%2F.."),
        _with(8, "CON"),
        _with(9, "destroy"),
        EXAMPLE + "#",
        EXAMPLE + "#vers",
        EXAMPLE + "#x#y",
        "#".join(EXAMPLE.split("#")[:-1]),
        "v3" + EXAMPLE[2:],
    ],
)
def test_v2_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_volume_id(text)


_TRAVERSAL = st.sampled_from(
    ["..", "../..", "a/../..", "%2E%2E", "..%2F..", "%00", "%5C..", "/", ""]
)


@given(st.integers(1, FIELDS - 1), _TRAVERSAL, st.text(max_size=12))
def test_traversal_in_either_source_never_escapes(field: int, attack: str, noise: str) -> None:
    """A field of the example replaced by a traversal attempt (plus noise)."""
    text = _with(field, attack + noise.replace("#", ""))
    try:
        vid = parse_volume_id(text)
    except InvalidArgument:
        return
    assert vid.dual is not None
    assert vid.format() == text
    for protocol in ("smb", "nfs"):
        for part in vid.dual.path(protocol, vid.subdir).split("/"):
            assert part not in ("", ".", "..")
        assert ".." not in vid.dual.root(protocol).share.split("/")


@given(st.text(max_size=300))
def test_v2_parser_never_crashes(text: str) -> None:
    try:
        vid = parse_volume_id("v2#" + text)
    except InvalidArgument:
        return
    assert vid.format() == "v2#" + text
    assert ".." not in vid.dir.split("/")


# ---------------------------------------------------------------- parameters


def test_params_defaults_and_subdir_template_apply_to_both() -> None:
    params = parse_params(
        "pv-1",
        {
            **DUAL,
            "subDir": "${pvc.metadata.namespace}/${pvc.metadata.name}",
            "csi.storage.k8s.io/pvc/name": "data",
            "csi.storage.k8s.io/pvc/namespace": "team",
        },
        ["nfs:nfsvers=4.1", "smb:vers=3.1.1", "hard"],
    )
    assert params.dual is not None
    assert (params.dual.provision_via, params.dual.linux_protocol) == ("nfs", "nfs")
    assert params.subdir == "team/data"
    assert str(params.source) == "files.example:/srv/data/k8s"
    assert params.dir == "team/data"
    assert params.dual.path("smb", params.subdir) == "k8s/team/data"
    assert params.nfs_version == "4.1"


def test_provision_via_smb() -> None:
    params = parse_params("pv-1", {**DUAL, "provisionVia": "SMB", "linuxProtocol": "smb"})
    assert params.dual is not None
    assert (params.dual.provision_via, params.dual.linux_protocol) == ("smb", "smb")
    assert str(params.source) == "//files.example/data/k8s"
    assert params.dir == "k8s/pv-1"


def test_scoped_ports() -> None:
    params = parse_params("pv-1", DUAL, ["smb:port=4450", "nfs:port=2050"])
    assert params.dual is not None
    assert (params.dual.smb.port, params.dual.nfs.port) == (4450, 2050)


@pytest.mark.parametrize(
    ("parameters", "flags", "words"),
    [
        ({**DUAL, "source": "//x/y"}, [], ["'source'", "smbSource", "nfsSource"]),
        ({"smbSource": DUAL["smbSource"]}, [], ["'nfsSource'", "'smbSource'"]),
        ({"nfsSource": DUAL["nfsSource"]}, [], ["'smbSource'", "'nfsSource'"]),
        ({"source": "//x/y", "provisionVia": "nfs"}, [], ["'source'", "smbSource"]),
        ({"provisionVia": "nfs"}, [], ["provisionVia", "smbSource", "nfsSource"]),
        ({**DUAL, "protocol": "smb"}, [], ["'protocol'", "provisionVia"]),
        ({**DUAL, "provisionVia": "ftp"}, [], ["provisionVia", "'ftp'"]),
        ({**DUAL, "linuxProtocol": "iscsi"}, [], ["linuxProtocol", "'iscsi'"]),
        ({**DUAL, "smbSource": "files:/srv"}, [], ["smbSource"]),
        ({**DUAL, "nfsSource": "//files/share"}, [], ["nfsSource"]),
        ({**DUAL, "smbSource": "//files/data/../etc"}, [], ["smbSource"]),
        ({**DUAL, "nfsSource": "files:/srv/../etc"}, [], ["nfsSource"]),
        ({**DUAL, "smbSource": " "}, [], ["smbSource"]),
        ({**DUAL, "subDir": "../x"}, [], ["subDir"]),
        (DUAL, ["vers=3"], ["nfs:vers", "smb:vers"]),
        (DUAL, ["smb:port=70000"], ["smb:port"]),
        ({**DUAL, "smbSource": "//files:4450/data"}, ["smb:port=445"], ["smb:port", "smbSource"]),
        ({**DUAL, "linuxprotocol": "nfs", "LinuxProtocol": "smb"}, [], ["given twice"]),
    ],
)
def test_param_errors_name_their_keys(
    parameters: dict[str, str], flags: list[str], words: list[str]
) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_params("pv-1", parameters, flags)
    for word in words:
        assert word in err.value.message


def test_single_protocol_params_unchanged() -> None:
    params = parse_params("pv-1", {"source": "//srv/share/base"}, ["vers=3.0"])
    assert params.dual is None
    assert str(params.source) == "//srv/share/base"


def test_scoped_options() -> None:
    flags = ["nfs:nfsvers=4.1,smb:vers=3.1.1", "hard", "SMB:seal", "context=system_u:object_r:x"]
    assert scoped_options(flags, "nfs") == ("nfsvers=4.1", "hard", "context=system_u:object_r:x")
    assert scoped_options(flags, "smb") == (
        "vers=3.1.1",
        "hard",
        "seal",
        "context=system_u:object_r:x",
    )


_ATTACKS = st.sampled_from(["..", "../..", "a/../..", "\x00", "\\", "//", "CON", "a:b", " "])


@given(
    st.sampled_from(["smbSource", "nfsSource", "subDir"]),
    _ATTACKS,
    st.sampled_from(["prefix", "suffix"]),
)
def test_params_fuzz_traversal_never_escapes(key: str, attack: str, where: str) -> None:
    base = {**DUAL, "subDir": "pvc"}
    base[key] = base[key] + "/" + attack if where == "suffix" else attack + base[key]
    try:
        params = parse_params("pv-1", base)
    except InvalidArgument:
        return
    assert params.dual is not None
    for protocol in ("smb", "nfs"):
        path = params.dual.path(protocol, params.subdir)
        assert all(p not in ("", ".", "..") for p in path.split("/"))
        assert ".." not in str(params.dual.tree(protocol)).split("/")


@given(
    st.dictionaries(
        st.sampled_from(
            sorted(
                {
                    "smbSource",
                    "nfsSource",
                    "provisionVia",
                    "linuxProtocol",
                    "subDir",
                    "source",
                    "protocol",
                }
            )
        ),
        st.text(max_size=40),
        max_size=6,
    )
)
def test_params_fuzz_never_crash(parameters: dict[str, str]) -> None:
    try:
        params = parse_params("pv-1", parameters)
    except InvalidArgument:
        return
    vid = VolumeId(
        Source(
            params.source.protocol, params.source.server, params.source.port, params.source.share
        ),
        params.dir,
        params.on_delete,
        (),
        params.dual,
    )
    assert parse_volume_id(vid.format()) == vid
