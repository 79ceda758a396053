"""``ctl`` commands for the Identity service: info, probe, capabilities."""

from __future__ import annotations

import argparse
from typing import Any

from driver.ctl.spec import CommandSpec, Stubs, no_args, to_json


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
    out["plugin"] = to_json(plugin).get("capabilities", [])
    for key, call, request in (
        (
            "controller",
            stubs.controller.ControllerGetCapabilities,
            csi_pb2.ControllerGetCapabilitiesRequest(),
        ),
        ("node", stubs.node.NodeGetCapabilities, csi_pb2.NodeGetCapabilitiesRequest()),
    ):
        try:
            out[key] = to_json(call(request, timeout=args.timeout)).get("capabilities", [])
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            out[key] = None  # that service does not run on this endpoint
    return out


COMMANDS: dict[str, CommandSpec] = {
    "info": CommandSpec("plugin name and version (GetPluginInfo)", no_args, _info),
    "probe": CommandSpec("readiness (Probe)", no_args, _probe),
    "capabilities": CommandSpec("plugin, controller and node capabilities", no_args, _capabilities),
}
