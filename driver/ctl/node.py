"""``ctl`` commands for the Node service: stage, publish, unpublish, unstage, stats.

What kubelet does, by hand: handy to debug a node without a cluster.  The
volume context (what CreateVolume returned: ``protocol``, ``source``,
``subDir``) comes from ``--context KEY=VALUE`` flags and/or
``--context-file``; secrets only from ``--secrets-file``, never from flags.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from driver.ctl.inputs import (
    add_capability_args,
    add_map_args,
    add_volume_args,
    capability,
    merged_map,
    secrets_of,
)
from driver.ctl.spec import CommandSpec, Stubs


def _add_context_args(p: argparse.ArgumentParser) -> None:
    item = "volume context from CreateVolume: protocol, source, subDir"
    add_map_args(p, "--context", "--context-file", item=item, whole="volume context")


def _context(args: argparse.Namespace) -> dict[str, str]:
    return merged_map(args.context_file, args.context, file_what="context file", flag="--context")


def _stage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume_id")
    p.add_argument(
        "--staging-path",
        required=True,
        help="staging_target_path: under the driver's <kubelet-dir>/plugins/kubernetes.io/csi/",
    )
    _add_context_args(p)
    add_volume_args(p, params=False, secrets=True)  # the node-stage secret
    add_capability_args(p)


def _stage(args: argparse.Namespace, stubs: Stubs) -> Any:
    from driver.csi import csi_pb2

    request = csi_pb2.NodeStageVolumeRequest(
        volume_id=args.volume_id,
        staging_target_path=args.staging_path,
        volume_capability=capability(args),
        secrets=secrets_of(args),
        volume_context=_context(args),
    )
    return stubs.node.NodeStageVolume(request, timeout=args.timeout)


def _publish_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume_id")
    p.add_argument("--staging-path", required=True, help="where the volume is staged")
    p.add_argument(
        "--target-path", required=True, help="target_path: under the driver's <kubelet-dir>/pods/"
    )
    p.add_argument("--readonly", action="store_true", help="publish read-only")
    _add_context_args(p)
    add_capability_args(p)


def _publish(args: argparse.Namespace, stubs: Stubs) -> Any:
    from driver.csi import csi_pb2

    request = csi_pb2.NodePublishVolumeRequest(
        volume_id=args.volume_id,
        staging_target_path=args.staging_path,
        target_path=args.target_path,
        volume_capability=capability(args),
        readonly=args.readonly,
        volume_context=_context(args),
    )
    return stubs.node.NodePublishVolume(request, timeout=args.timeout)


def _unpublish_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume_id")
    p.add_argument("--target-path", required=True)


def _unpublish(args: argparse.Namespace, stubs: Stubs) -> Any:
    from driver.csi import csi_pb2

    request = csi_pb2.NodeUnpublishVolumeRequest(
        volume_id=args.volume_id, target_path=args.target_path
    )
    return stubs.node.NodeUnpublishVolume(request, timeout=args.timeout)


def _unstage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume_id")
    p.add_argument("--staging-path", required=True)


def _unstage(args: argparse.Namespace, stubs: Stubs) -> Any:
    from driver.csi import csi_pb2

    request = csi_pb2.NodeUnstageVolumeRequest(
        volume_id=args.volume_id, staging_target_path=args.staging_path
    )
    return stubs.node.NodeUnstageVolume(request, timeout=args.timeout)


def _stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume_id")
    p.add_argument("--path", required=True, help="a staging or target path of the volume")


def _stats(args: argparse.Namespace, stubs: Stubs) -> Any:
    from driver.csi import csi_pb2

    request = csi_pb2.NodeGetVolumeStatsRequest(volume_id=args.volume_id, volume_path=args.path)
    return stubs.node.NodeGetVolumeStats(request, timeout=args.timeout)


COMMANDS: Final = {
    "stage": CommandSpec("NodeStageVolume", _stage_args, _stage),
    "publish": CommandSpec("NodePublishVolume", _publish_args, _publish),
    "unpublish": CommandSpec("NodeUnpublishVolume", _unpublish_args, _unpublish),
    "unstage": CommandSpec("NodeUnstageVolume", _unstage_args, _unstage),
    "stats": CommandSpec("NodeGetVolumeStats (usage and health)", _stats_args, _stats),
}
