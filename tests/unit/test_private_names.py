"""No module of the driver uses another module's private (``_x``) names.

A leading underscore says "only this module relies on it": the name may
change or go without notice.  Another module that imports it, or reaches it
through an imported name (``module._helper``, ``Class._field``), couples
itself to that module's insides (issue 19 found ``smb_worker`` subclassing
``smb._Channel`` and importing its private steps).  Checked on the source
text with :mod:`ast`, so it covers both platforms' code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.harness import ROOT

PACKAGES = ("controller", "driver", "node")
GENERATED = ("csi_pb2.py", "csi_pb2_grpc.py")


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_ours(module: str) -> bool:
    return module.split(".", 1)[0] in PACKAGES


def absolute(module: str | None, level: int, here: str, *, package: bool) -> str:
    """The absolute name of ``from <level dots><module> import ...`` in ``here``."""
    if level == 0:
        return module or ""
    base = here.split(".")
    base = base[: len(base) - level + (1 if package else 0)]
    return ".".join([*base, module] if module else base)


def private_uses(source: str, here: str, *, package: bool = False) -> list[str]:
    """Uses in module ``here`` of private names of the driver's other modules."""
    found: list[str] = []
    bound: dict[str, str] = {}  # local name → what of ours it stands for

    def note(line: int, what: str) -> None:
        found.append(f"{here}:{line}: {what}")

    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not is_ours(alias.name):
                    continue
                parts = alias.name.split(".")
                if any(is_private(p) for p in parts):
                    note(node.lineno, f"import {alias.name}")
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    bound[parts[0]] = parts[0]
        elif isinstance(node, ast.ImportFrom):
            source_module = absolute(node.module, node.level, here, package=package)
            if not is_ours(source_module) or source_module == here:
                continue
            if any(is_private(p) for p in source_module.split(".")):
                note(node.lineno, f"from {source_module} import ...")
            for alias in node.names:
                if is_private(alias.name):
                    note(node.lineno, f"from {source_module} import {alias.name}")
                bound[alias.asname or alias.name] = f"{source_module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            chain: list[str] = []
            value: ast.expr = node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in bound:
                target = ".".join([bound[value.id], *reversed(chain)])
                if target != here and not target.startswith(here + "."):
                    note(node.lineno, f"{target}.{node.attr}")
    return found


def sources() -> list[Path]:
    return sorted(
        path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if path.name not in GENERATED
    )


def test_the_tree_is_read() -> None:
    names = {module_name(p) for p in sources()}
    assert {"driver.aio", "node.windows.platform", "node.linux.platform"} <= names
    assert "controller.smb.channel" in names


def test_no_module_uses_another_modules_private_names() -> None:
    found = [
        use
        for path in sources()
        for use in private_uses(
            path.read_text(), module_name(path), package=path.name == "__init__.py"
        )
    ]
    assert found == []


@pytest.mark.parametrize(
    ("source", "what"),
    [
        ("from controller.smb.channel import _open_step", "_open_step"),
        ("from .channel import _open_step", "controller.smb.channel import _open_step"),
        ("from ..nfs import _pump", "controller.nfs import _pump"),
        ("import driver._hidden", "import driver._hidden"),
        ("from driver._hidden import thing", "from driver._hidden"),
        ("from driver import rpc\nrpc._state = 1", "driver.rpc._state"),
        ("import driver.rpc as r\nx = r._state", "driver.rpc._state"),
        ("import driver.rpc\nx = driver.rpc._state", "driver.rpc._state"),
        ("from controller.smb.channel import Channel\nChannel._fields", "Channel._fields"),
    ],
)
def test_private_uses_are_found(source: str, what: str) -> None:
    found = private_uses(source, "controller.smb.worker")
    assert len(found) == 1
    assert what in found[0]


@pytest.mark.parametrize(
    "source",
    [
        "from controller.smb.worker import _mine",  # its own names (a re-import)
        "import os\nos._exit(0)",  # the standard library's own documented names
        "from smbclient import _os",  # a library's choice, not ours
        "class A:\n    def f(self) -> None:\n        self._x = 1",
        "from driver.aio import SingleFlight\nSingleFlight.__init__",
    ],
)
def test_allowed_uses_are_not_found(source: str) -> None:
    assert private_uses(source, "controller.smb.worker") == []
