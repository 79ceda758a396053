"""The ``ctl`` command table: each module exports its commands, the package merges them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from driver.ctl import identity, main, node, snapshots, volumes
from driver.ctl.inputs import params_of
from driver.ctl.spec import CommandSpec, Stubs, no_args
from driver.errors import InvalidArgument


def test_every_module_command_is_offered_once() -> None:
    groups = (identity.COMMANDS, volumes.COMMANDS, snapshots.COMMANDS, node.COMMANDS)
    assert list(main.COMMANDS) == [name for group in groups for name in group]
    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    args = parser.parse_args(["--endpoint", "unix:///x.sock", "stats", "v", "--path", "/p"])
    assert (args.ctl_command, args.volume_id, args.path) == ("stats", "v", "/p")


def test_a_name_defined_twice_is_refused() -> None:
    spec = CommandSpec("x", no_args, lambda _args, _stubs: None)
    with pytest.raises(ValueError, match="defined twice"):
        main.merge({"info": spec}, identity.COMMANDS)


class _RecordingNode:
    """A node stub that keeps the requests it was sent."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def NodeStageVolume(self, request: Any, timeout: float) -> Any:
        self.sent.append(request)
        return request


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    return parser.parse_args(["--endpoint", "unix:///x.sock", *argv])


def test_context_and_secrets_come_from_files_and_flags(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.write_text('{"protocol": "smb", "source": "//a/s", "subDir": "old"}')
    secrets = tmp_path / "secrets"
    secrets.write_text("# the node-stage secret\nusername=u\npassword=p=w\n")
    args = _parse(
        ["stage", "v", "--staging-path", "/s", "--context-file", str(context),
         "--context", "subDir=new", "--secrets-file", str(secrets)]
    )  # fmt: skip
    stub = _RecordingNode()
    node.COMMANDS["stage"].run(args, Stubs(identity=None, controller=None, node=stub))
    (request,) = stub.sent
    assert dict(request.volume_context) == {"protocol": "smb", "source": "//a/s", "subDir": "new"}
    assert dict(request.secrets) == {"username": "u", "password": "p=w"}


def test_a_flag_without_equals_is_refused_before_any_call() -> None:
    args = _parse(["stage", "v", "--staging-path", "/s", "--context", "subDir"])
    stub = _RecordingNode()
    with pytest.raises(InvalidArgument, match="--context 'subDir': expected KEY=VALUE"):
        node.COMMANDS["stage"].run(args, Stubs(identity=None, controller=None, node=stub))
    assert stub.sent == []


def test_parameters_merge_file_then_flags(tmp_path: Path) -> None:
    params = tmp_path / "params"
    params.write_text("source=//a/s\nsubDir=x\n")
    args = _parse(["capacity", "--params-file", str(params), "--param", "subDir=y"])
    assert params_of(args) == {"source": "//a/s", "subDir": "y"}
