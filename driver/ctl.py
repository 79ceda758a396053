"""``csi-smb-nfs ctl``: a small CSI client for operators.

Prints JSON on stdout.  On failure prints the gRPC status name and message on
stderr and exits 1 (2 for bad command-line use).  Commands are registered in
``COMMANDS``; volume commands are added as the services grow.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from driver.config import parse_endpoint
from driver.errors import InvalidArgument


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


def _no_args(_: argparse.ArgumentParser) -> None:
    return None


def _info(args: argparse.Namespace, stubs: Stubs) -> Any:
    from driver.csi import csi_pb2

    return stubs.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=args.timeout)


def _probe(args: argparse.Namespace, stubs: Stubs) -> Any:
    from driver.csi import csi_pb2

    return stubs.identity.Probe(csi_pb2.ProbeRequest(), timeout=args.timeout)


def _capabilities(args: argparse.Namespace, stubs: Stubs) -> dict[str, Any]:
    import grpc

    from driver.csi import csi_pb2

    out: dict[str, Any] = {}
    plugin = stubs.identity.GetPluginCapabilities(
        csi_pb2.GetPluginCapabilitiesRequest(), timeout=args.timeout
    )
    out["plugin"] = _to_json(plugin).get("capabilities", [])
    for key, call, request in (
        (
            "controller",
            stubs.controller.ControllerGetCapabilities,
            csi_pb2.ControllerGetCapabilitiesRequest(),
        ),
        ("node", stubs.node.NodeGetCapabilities, csi_pb2.NodeGetCapabilitiesRequest()),
    ):
        try:
            out[key] = _to_json(call(request, timeout=args.timeout)).get("capabilities", [])
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            out[key] = None  # that service does not run on this endpoint
    return out


COMMANDS: dict[str, CommandSpec] = {
    "info": CommandSpec("plugin name and version (GetPluginInfo)", _no_args, _info),
    "probe": CommandSpec("readiness (Probe)", _no_args, _probe),
    "capabilities": CommandSpec(
        "plugin, controller and node capabilities", _no_args, _capabilities
    ),
}


def register(name: str, spec: CommandSpec) -> None:
    COMMANDS[name] = spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from driver import ctl_node, ctl_snapshots, ctl_volumes

    ctl_volumes.install()
    ctl_snapshots.install()
    ctl_node.install()
    parser.add_argument("--endpoint", required=True, help="unix://PATH or tcp://HOST:PORT")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-call timeout, seconds")
    sub = parser.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    for name, spec in COMMANDS.items():
        spec.add_args(sub.add_parser(name, help=spec.help))


def _to_json(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    result: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=False
    )
    return result


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
    payload = result if isinstance(result, dict) else _to_json(result)
    json.dump(payload, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0
