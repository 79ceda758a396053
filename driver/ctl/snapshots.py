"""``ctl`` commands for snapshots: create, delete, list.

Parameters (VolumeSnapshotClass) come from ``--param KEY=VALUE`` and/or
``--params-file``; secrets only from ``--secrets-file``, as for volumes.
``create-volume --from-snapshot/--from-volume`` lives with the volume
commands (``driver.ctl.volumes``).
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from driver.ctl.inputs import add_volume_args, params_of, secrets_of
from driver.ctl.spec import CommandSpec, Stubs
from driver.errors import InvalidArgument


def _create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="snapshot name (Kubernetes uses snapshot-<uid>)")
    p.add_argument("volume_id", help="ID of the volume to snapshot")
    add_volume_args(p, params=True, secrets=True)


def _create(args: argparse.Namespace, stubs: Stubs) -> Any:
    from driver.csi import csi_pb2

    request = csi_pb2.CreateSnapshotRequest(
        name=args.name,
        source_volume_id=args.volume_id,
        parameters=params_of(args),
        secrets=secrets_of(args),
    )
    return stubs.controller.CreateSnapshot(request, timeout=args.timeout)


def _delete_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("snapshot_id")
    add_volume_args(p, params=False, secrets=True)


def _delete(args: argparse.Namespace, stubs: Stubs) -> Any:
    from driver.csi import csi_pb2

    request = csi_pb2.DeleteSnapshotRequest(snapshot_id=args.snapshot_id, secrets=secrets_of(args))
    return stubs.controller.DeleteSnapshot(request, timeout=args.timeout)


def _list_args(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--snapshot-id", default="", help="only this snapshot")
    which.add_argument("--volume-id", default="", help="only snapshots of this volume")
    p.add_argument(
        "--max-entries", type=int, default=0, help="one page of at most N (default: all pages)"
    )
    p.add_argument("--starting-token", default="", help="next_token of the previous page")
    add_volume_args(p, params=False, secrets=True)


def _list(args: argparse.Namespace, stubs: Stubs) -> Any:
    from google.protobuf import json_format

    from driver.csi import csi_pb2

    if args.max_entries < 0:
        raise InvalidArgument("--max-entries must not be negative")
    request = csi_pb2.ListSnapshotsRequest(
        snapshot_id=args.snapshot_id,
        source_volume_id=args.volume_id,
        max_entries=args.max_entries,
        starting_token=args.starting_token,
        secrets=secrets_of(args),
    )
    if args.max_entries:
        return stubs.controller.ListSnapshots(request, timeout=args.timeout)
    entries: list[Any] = []
    while True:  # every page
        response = stubs.controller.ListSnapshots(request, timeout=args.timeout)
        entries += [
            json_format.MessageToDict(e, preserving_proto_field_name=True) for e in response.entries
        ]
        if not response.next_token:
            return {"entries": entries}
        request.starting_token = response.next_token


COMMANDS: Final = {
    "create-snapshot": CommandSpec("CreateSnapshot", _create_args, _create),
    "delete-snapshot": CommandSpec("DeleteSnapshot", _delete_args, _delete),
    "list-snapshots": CommandSpec("ListSnapshots (all pages)", _list_args, _list),
}
