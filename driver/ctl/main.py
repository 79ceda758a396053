"""``csi-smb-nfs ctl``: a small CSI client for operators.

Prints JSON on stdout.  On failure prints the gRPC status name and message on
stderr and exits 1 (2 for bad command-line use).  Each module of this package
exports its ``COMMANDS``; :data:`COMMANDS` here is their union.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Final

from driver.config import parse_endpoint
from driver.ctl import identity, node, snapshots, volumes
from driver.ctl.spec import CommandSpec, Stubs, to_json
from driver.errors import InvalidArgument


def merge(*groups: Mapping[str, CommandSpec]) -> dict[str, CommandSpec]:
    merged: dict[str, CommandSpec] = {}
    for group in groups:
        clash = merged.keys() & group.keys()
        if clash:
            msg = f"ctl commands defined twice: {sorted(clash)}"
            raise ValueError(msg)
        merged.update(group)
    return merged


COMMANDS: Final = merge(identity.COMMANDS, volumes.COMMANDS, snapshots.COMMANDS, node.COMMANDS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", required=True, help="unix://PATH or tcp://HOST:PORT")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-call timeout, seconds")
    sub = parser.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    for name, spec in COMMANDS.items():
        spec.add_args(sub.add_parser(name, help=spec.help))


def run(args: argparse.Namespace) -> int:
    import grpc

    from driver.csi import csi_pb2_grpc

    try:
        endpoint = parse_endpoint(args.endpoint)
    except InvalidArgument as exc:
        print(f"INVALID_ARGUMENT: {exc.message}", file=sys.stderr)
        return 2
    spec = COMMANDS[args.ctl_command]
    with grpc.insecure_channel(endpoint.grpc_target) as channel:
        stubs = Stubs(
            identity=csi_pb2_grpc.IdentityStub(channel),
            controller=csi_pb2_grpc.ControllerStub(channel),
            node=csi_pb2_grpc.NodeStub(channel),
        )
        try:
            result = spec.run(args, stubs)
        except grpc.RpcError as exc:
            print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        except InvalidArgument as exc:
            print(f"INVALID_ARGUMENT: {exc.message}", file=sys.stderr)
            return 2
    payload = result if isinstance(result, dict) else to_json(result)
    json.dump(payload, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0
