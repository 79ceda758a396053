"""What a ``ctl`` command is: its help, its arguments and the call it makes."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Stubs:
    identity: Any
    controller: Any
    node: Any


Command = Callable[[argparse.Namespace, Stubs], Any]


@dataclass(frozen=True)
class CommandSpec:
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Command


def no_args(_: argparse.ArgumentParser) -> None:
    return None


def to_json(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    result: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=False
    )
    return result
