"""The ``ctl`` command table: each module exports its commands, the package merges them."""

from __future__ import annotations

import argparse

import pytest

from driver.ctl import identity, main, node, snapshots, volumes
from driver.ctl.spec import CommandSpec, no_args


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
