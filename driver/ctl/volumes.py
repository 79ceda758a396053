"""``ctl`` commands for volumes: create, delete, validate, capacity.

Parameters come from ``--param KEY=VALUE`` flags and/or ``--params-file``;
secrets only from ``--secrets-file`` (JSON object or ``key=value`` lines),
never from flags: a flag would put the password in the process list and
in shell history.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from driver.ctl.inputs import (
    add_capability_args,
    add_volume_args,
    capability,
    params_of,
    secrets_of,
)
from driver.ctl.spec import CommandSpec, Stubs


def _create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="volume name (Kubernetes uses the PV name)")
    p.add_argument("--capacity", type=int, default=0, help="required bytes")
    origin = p.add_mutually_exclusive_group()
    origin.add_argument("--from-snapshot", metavar="SNAPSHOT_ID", help="restore this snapshot")
    origin.add_argument("--from-volume", metavar="VOLUME_ID", help="clone this volume")
    add_volume_args(p, params=True, secrets=True)
    add_capability_args(p)


def _create(args: argparse.Namespace, stubs: Stubs) -> Any:
    from driver.csi import csi_pb2

    request = csi_pb2.CreateVolumeRequest(
        name=args.name,
        parameters=params_of(args),
        secrets=secrets_of(args),
        volume_capabilities=[capability(args)],
    )
    if args.capacity:
        request.capacity_range.required_bytes = args.capacity
    if args.from_snapshot:
        request.volume_content_source.snapshot.snapshot_id = args.from_snapshot
    elif args.from_volume:
        request.volume_content_source.volume.volume_id = args.from_volume
    return stubs.controller.CreateVolume(request, timeout=args.timeout)


def _delete_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume_id")
    add_volume_args(p, params=False, secrets=True)


def _delete(args: argparse.Namespace, stubs: Stubs) -> Any:
    from driver.csi import csi_pb2

    request = csi_pb2.DeleteVolumeRequest(volume_id=args.volume_id, secrets=secrets_of(args))
    return stubs.controller.DeleteVolume(request, timeout=args.timeout)


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume_id")
    add_volume_args(p, params=True, secrets=True)
    add_capability_args(p)


def _validate(args: argparse.Namespace, stubs: Stubs) -> Any:
    from driver.csi import csi_pb2

    request = csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id=args.volume_id,
        parameters=params_of(args),
        secrets=secrets_of(args),
        volume_capabilities=[capability(args)],
    )
    return stubs.controller.ValidateVolumeCapabilities(request, timeout=args.timeout)


def _capacity_args(p: argparse.ArgumentParser) -> None:
    add_volume_args(p, params=True, secrets=False)
    add_capability_args(p)


def _capacity(args: argparse.Namespace, stubs: Stubs) -> Any:
    from driver.csi import csi_pb2

    request = csi_pb2.GetCapacityRequest(
        parameters=params_of(args), volume_capabilities=[capability(args)]
    )
    return stubs.controller.GetCapacity(request, timeout=args.timeout)


COMMANDS: Final = {
    "create-volume": CommandSpec("CreateVolume", _create_args, _create),
    "delete-volume": CommandSpec("DeleteVolume", _delete_args, _delete),
    "validate": CommandSpec("ValidateVolumeCapabilities", _validate_args, _validate),
    "capacity": CommandSpec("GetCapacity", _capacity_args, _capacity),
}
