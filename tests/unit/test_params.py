from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.params import PV_NAME, PVC_NAME, PVC_NAMESPACE, parse_params, render_template
from driver.errors import InvalidArgument
from driver.paths import safe_relpath

META = {PVC_NAME: "data", PVC_NAMESPACE: "team-a", PV_NAME: "pvc-123"}


def test_defaults_use_the_volume_name() -> None:
    p = parse_params("pvc-1", {"source": "//srv/share/base"})
    assert p.source.protocol == "smb"
    assert p.subdir == "pvc-1"
    assert p.dir == "base/pvc-1"
    assert p.on_delete == "delete"
    assert p.mount_permissions is None


def test_case_insensitive_keys_and_templates() -> None:
    p = parse_params(
        "pvc-123",
        {
            "Source": "srv:/export",
            "SUBDIR": "${pvc.metadata.namespace}/${pvc.metadata.name}-${pv.metadata.name}",
            "onDelete": "Archive",
            "mountPermissions": "0775",
            **META,
        },
        ["nfsvers=3", "hard"],
    )
    assert p.dir == "team-a/data-pvc-123"
    assert p.on_delete == "archive"
    assert p.mount_permissions == 0o775
    assert p.nfs_version == "3"


@pytest.mark.parametrize(
    ("params", "flags", "match"),
    [
        ({}, [], "'source' is required"),
        ({"source": "//s/x", "color": "red"}, [], "unknown parameter 'color'"),
        ({"source": "//s/x", "SOURCE": "//s/y"}, [], "given twice"),
        ({"source": "//s/x", "protocol": "nfs"}, [], "contradicts"),
        ({"source": "//s/x", "subDir": "../x"}, [], "subDir"),
        ({"source": "//s/x", "subDir": "a/../../b"}, [], "subDir"),
        ({"source": "//s/x", "subDir": "${pvc.metadata.labels}"}, [], "unknown placeholder"),
        ({"source": "//s/x", "subDir": "${pvc.metadata.name}"}, [], "extra-create-metadata"),
        ({"source": "//s/x", "subDir": "${pvc.metadata.name"}, [], "unbalanced"),
        ({"source": "//s/x", "onDelete": "shred"}, [], "onDelete"),
        ({"source": "//s/x", "mountPermissions": "rwx"}, [], "mountPermissions"),
        ({"source": "//s/x", "mountPermissions": "99999"}, [], "mountPermissions"),
        ({"source": "s:/e"}, ["nfsvers=5"], "NFS version"),
        ({"source": "//s:445/x"}, ["port=446"], "contradicts"),
        ({"source": "//s/x", "subDir": "archived-old"}, [], "archived-"),
        ({"source": "//s/x", "subDir": "a\\b"}, [], "subDir"),
    ],
)
def test_rejections(params: dict[str, str], flags: list[str], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        parse_params("pvc-x", params, flags)


def test_port_from_mount_options() -> None:
    assert parse_params("v", {"source": "//s/x"}, ["port=4450"]).source.port == 4450


def test_template_value_with_slash_rejected() -> None:
    with pytest.raises(InvalidArgument, match="contains '/'"):
        render_template("${pvc.metadata.name}", {PVC_NAME: "../../etc"})


@given(
    template=st.text(max_size=60),
    name=st.text(max_size=30),
    namespace=st.text(max_size=30),
)
def test_fuzzed_templates_never_escape(template: str, name: str, namespace: str) -> None:
    meta = {PVC_NAME: name, PVC_NAMESPACE: namespace, PV_NAME: "pv"}
    try:
        p = parse_params("pv", {"source": "//s/share/base", "subDir": template, **meta})
    except InvalidArgument:
        return
    assert safe_relpath(p.dir) == p.dir
    assert p.dir.startswith("base/")
