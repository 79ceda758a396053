"""The CSI Node service: request validation, locks, and the platform.

This module knows CSI; the platform (``node/linux/`` or ``node/windows/``,
chosen in :func:`build`) knows the OS.  The volume's location comes from the
volume context the controller returned (``protocol``, ``source``,
``subDir``); for a static PV without a context, from a volume ID in this
driver's format.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Mapping
from typing import Any

import grpc

from driver import paths, rpc
from driver.config import DEFAULT_KUBELET_DIR, Config
from driver.csi import csi_pb2, csi_pb2_grpc
from driver.dual import scoped_options
from driver.errors import (
    DriverError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from driver.locks import VolumeLocks
from driver.log import get_logger
from driver.modes import parse_octal_mode
from driver.rpc import Ctx
from driver.source import Source, parse_source
from driver.volume_id import parse_volume_id
from node.dual import HelperFinder, find_helper, locate_dual, refuse_single
from node.ephemeral import ephemeral_volume, is_ephemeral
from node.kubelet import KubeletPaths
from node.platform import NodePlatform, PublishRequest, Reconciling, StageRequest
from node.stage_auth import with_auth

log = get_logger("node")

AccessMode = csi_pb2.VolumeCapability.AccessMode
_READ_ONLY_MODES = frozenset(
    {AccessMode.SINGLE_NODE_READER_ONLY, AccessMode.MULTI_NODE_READER_ONLY}
)
_KNOWN_MODES = frozenset(AccessMode.Mode.values()) - {AccessMode.UNKNOWN}
# Modes that allow one target path per node at a time (CSI NodePublishVolume:
# a second target is FAILED_PRECONDITION); SINGLE_NODE_MULTI_WRITER and the
# MULTI_NODE modes allow many.
_ONE_TARGET_MODES = frozenset(
    {
        AccessMode.SINGLE_NODE_WRITER,
        AccessMode.SINGLE_NODE_READER_ONLY,
        AccessMode.SINGLE_NODE_SINGLE_WRITER,
    }
)
RpcType = csi_pb2.NodeServiceCapability.RPC.Type


def split_mount_flags(flags: Any) -> tuple[str, ...]:
    out: list[str] = []
    for flag in flags:
        out.extend(item.strip() for item in str(flag).split(",") if item.strip())
    return tuple(out)


def check_capability(cap: csi_pb2.VolumeCapability, *, required: bool = True) -> None:
    if not cap.ByteSize():
        if required:
            raise InvalidArgument("volume_capability: required")
        return
    kind = cap.WhichOneof("access_type")
    if kind == "block":
        # CSI NodeStage/NodePublish "Exceeds capabilities": the volume (a
        # directory) cannot be a block device.
        raise FailedPrecondition("volume_capability: block access is not supported (file shares)")
    if kind != "mount":
        raise InvalidArgument("volume_capability: access_type mount is required")
    if cap.access_mode.mode not in _KNOWN_MODES:
        raise InvalidArgument("volume_capability: access_mode is missing or unknown")


def context_mode(context: Mapping[str, str]) -> int | None:
    """``mountPermissions`` from the volume context, if given."""
    text = next((v for k, v in context.items() if k.lower() == "mountpermissions"), "")
    return parse_octal_mode(text) if text else None


def locate(volume_id: str, context: Mapping[str, str]) -> tuple[Source, str, int | None]:
    """(share root, directory under it, mountPermissions) for a volume."""
    ctx = {k.lower(): v for k, v in context.items()}
    mode = context_mode(context)
    if ctx.get("source"):
        src = parse_source(ctx["source"], ctx.get("protocol") or None)
        subdir = ctx.get("subdir", "").strip("/")
        if subdir:
            paths.safe_relpath(subdir, what="volume context subDir")
        return src.share_root, paths.join(src.base, subdir), mode
    try:
        vid = parse_volume_id(volume_id)
    except InvalidArgument as exc:
        raise InvalidArgument(
            f"volume_context has no 'source' and the volume ID is not this driver's: {exc.message}"
        ) from None
    return vid.source, vid.dir, mode


class NodeService(csi_pb2_grpc.NodeServicer):
    def __init__(
        self,
        node_id: str,
        platform: NodePlatform | None,
        *,
        kubelet_dir: str = DEFAULT_KUBELET_DIR,
        helpers: HelperFinder = find_helper,
    ) -> None:
        self._node_id = node_id
        self._platform = platform
        self._locks = VolumeLocks()
        # Without a platform every node RPC is Unimplemented before a path is looked at.
        self.kubelet = KubeletPaths(kubelet_dir)
        if platform is not None:
            root = platform.check_path(kubelet_dir, what="--kubelet-dir")
            self.kubelet = KubeletPaths(root, windows=platform.name == "windows")
        self._helpers = helpers  # finds mount helpers (dual volumes pick a protocol by them)

    def _require_platform(self, method: str, **required: str) -> NodePlatform:
        """The platform for ``method``, once every field in ``required`` is set
        (InvalidArgument names the first that is empty)."""
        if self._platform is None:
            raise Unimplemented(f"{method}: no mounter for this platform ({sys.platform})")
        for name, value in required.items():
            if not value:
                raise InvalidArgument(f"{name}: required")
        return self._platform

    def _staging_path(self, platform: NodePlatform, path: str) -> str:
        """kubelet's staging path, normalised and checked to be under its plugin directory."""
        staging = platform.check_path(path, what="staging_target_path")
        self.kubelet.check_staging(staging, what="staging_target_path")
        return staging

    def _target_path(self, platform: NodePlatform, path: str) -> str:
        """A pod's target path, normalised and checked to be under kubelet's pods directory."""
        target = platform.check_path(path, what="target_path")
        self.kubelet.check_target(target, what="target_path")
        return target

    def _stage_request(
        self,
        platform: NodePlatform,
        volume_id: str,
        context: Mapping[str, str],
        cap: csi_pb2.VolumeCapability,
        staging: str,
    ) -> tuple[StageRequest, str, bool]:
        """Where a persistent volume lives and how to mount it, without
        credentials, how to name its node-stage secret in errors, and
        whether it is a dual-protocol volume."""
        options = split_mount_flags(cap.mount.mount_flags)
        which = "node-stage secret"
        choice = locate_dual(volume_id, context, platform.name, helpers=self._helpers)
        if choice is None:
            source, subdir, mode = locate(volume_id, context)
            refuse_single(source.protocol, platform.name)
        else:
            source, subdir = choice.root, choice.dir
            mode = context_mode(context)
            options = scoped_options(options, choice.protocol)
            which = f"node-stage secret ({platform.name} node, {choice.reason})"
        stage = StageRequest(
            volume_id=volume_id,
            source=source,
            subdir=subdir,
            staging_path=staging,
            mount_options=options,
            mount_group=cap.mount.volume_mount_group,
            read_only=cap.access_mode.mode in _READ_ONLY_MODES,
            mount_permissions=mode,
        )
        return stage, which, choice is not None

    async def NodeStageVolume(
        self, request: csi_pb2.NodeStageVolumeRequest, context: Ctx
    ) -> csi_pb2.NodeStageVolumeResponse:
        platform = self._require_platform(
            "NodeStageVolume",
            volume_id=request.volume_id,
            staging_target_path=request.staging_target_path,
        )
        staging = self._staging_path(platform, request.staging_target_path)
        cap = request.volume_capability
        check_capability(cap)
        stage, which, dual = self._stage_request(
            platform, request.volume_id, request.volume_context, cap, staging
        )
        rpc.set_protocol(stage.source.protocol)
        stage = with_auth(stage, request.secrets, which=which, dual=dual)
        with self._locks.hold(request.volume_id):
            await platform.stage(stage)
        return csi_pb2.NodeStageVolumeResponse()

    async def NodeUnstageVolume(
        self, request: csi_pb2.NodeUnstageVolumeRequest, context: Ctx
    ) -> csi_pb2.NodeUnstageVolumeResponse:
        platform = self._require_platform(
            "NodeUnstageVolume",
            volume_id=request.volume_id,
            staging_target_path=request.staging_target_path,
        )
        staging = self._staging_path(platform, request.staging_target_path)
        with self._locks.hold(request.volume_id):
            await platform.unstage(request.volume_id, staging)
        return csi_pb2.NodeUnstageVolumeResponse()

    async def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: Ctx
    ) -> csi_pb2.NodePublishVolumeResponse:
        platform = self._require_platform(
            "NodePublishVolume", volume_id=request.volume_id, target_path=request.target_path
        )
        ephemeral = is_ephemeral(request.volume_context)
        if not ephemeral and not request.staging_target_path:
            # CSI's own row for this case ("Staging target path not set").
            raise FailedPrecondition(
                "staging_target_path: not set, and this driver stages volumes: "
                "NodeStageVolume first"
            )
        target = self._target_path(platform, request.target_path)
        cap = request.volume_capability
        check_capability(cap)
        read_only = request.readonly or cap.access_mode.mode in _READ_ONLY_MODES
        staging = ""
        volume: StageRequest | None
        if ephemeral:
            volume = ephemeral_volume(
                request.volume_id,
                request.volume_context,
                request.secrets,
                target_path=target,
                read_only=read_only,
                mount_group=cap.mount.volume_mount_group,
            )
        else:
            staging = self._staging_path(platform, request.staging_target_path)
            try:
                volume, _, _ = self._stage_request(
                    platform, request.volume_id, request.volume_context, cap, staging
                )
            except DriverError:
                volume = None  # publishing needs no location; only a repair would
        if volume is not None:
            rpc.set_protocol(volume.source.protocol)
        publish = PublishRequest(
            volume_id=request.volume_id,
            staging_path=staging,
            target_path=target,
            read_only=read_only,
            readonly_flag=request.readonly,
            mount_options=split_mount_flags(cap.mount.mount_flags),
            volume=volume,
            ephemeral=ephemeral,
        )
        with contextlib.ExitStack() as held:
            held.enter_context(self._locks.hold(f"{request.volume_id}@{target}", what="target"))
            if cap.access_mode.mode in _ONE_TARGET_MODES and not ephemeral:
                # One check-and-publish at a time per volume, or two targets
                # could each see the other not yet published.
                held.enter_context(self._locks.hold(f"{request.volume_id}@one-target"))
                await self._check_one_target(platform, request.volume_id, staging, target, cap)
            await platform.publish(publish)
        return csi_pb2.NodePublishVolumeResponse()

    @staticmethod
    async def _check_one_target(
        platform: NodePlatform,
        volume_id: str,
        staging: str,
        target: str,
        cap: csi_pb2.VolumeCapability,
    ) -> None:
        others = await platform.published_elsewhere(staging, target)
        if others:
            mode = AccessMode.Mode.Name(cap.access_mode.mode)
            raise FailedPrecondition(
                f"volume {volume_id} is already published at {others[0]}, and access mode "
                f"{mode} allows one target path at a time: unpublish it there first"
            )

    async def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: Ctx
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        platform = self._require_platform(
            "NodeUnpublishVolume", volume_id=request.volume_id, target_path=request.target_path
        )
        target = self._target_path(platform, request.target_path)
        with self._locks.hold(f"{request.volume_id}@{target}", what="target"):
            await platform.unpublish(request.volume_id, target)
        return csi_pb2.NodeUnpublishVolumeResponse()

    async def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest, context: Ctx
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        platform = self._require_platform(
            "NodeGetVolumeStats", volume_id=request.volume_id, volume_path=request.volume_path
        )
        try:
            path = platform.check_path(request.volume_path, what="volume_path")
            self.kubelet.check_volume_path(path, what="volume_path")
        except InvalidArgument as exc:
            # A path no volume can be at (relative, outside kubelet's
            # directories...): the spec's answer is "volume not found there".
            raise NotFound(f"no volume at volume_path: {exc.message}") from None
        usage = await platform.usage(request.volume_id, path)
        unit = csi_pb2.VolumeUsage.Unit
        items = [
            csi_pb2.VolumeUsage(
                unit=unit.BYTES,
                total=usage.total_bytes,
                available=usage.available_bytes,
                used=usage.used_bytes,
            )
        ]
        if usage.total_inodes is not None:
            items.append(
                csi_pb2.VolumeUsage(
                    unit=unit.INODES,
                    total=usage.total_inodes,
                    available=usage.free_inodes or 0,
                    used=usage.used_inodes or 0,
                )
            )
        return csi_pb2.NodeGetVolumeStatsResponse(
            usage=items,
            volume_condition=csi_pb2.VolumeCondition(
                abnormal=usage.health.abnormal, message=usage.health.message
            ),
        )

    async def NodeExpandVolume(
        self, request: csi_pb2.NodeExpandVolumeRequest, context: Ctx
    ) -> csi_pb2.NodeExpandVolumeResponse:
        raise Unimplemented("NodeExpandVolume: directory volumes need no node expansion")

    async def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest, context: Ctx
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        names = sorted(self._platform.capabilities) if self._platform is not None else []
        return csi_pb2.NodeGetCapabilitiesResponse(
            capabilities=[
                csi_pb2.NodeServiceCapability(
                    rpc=csi_pb2.NodeServiceCapability.RPC(type=RpcType.Value(name))
                )
                for name in names
            ]
        )

    async def NodeGetInfo(
        self, request: csi_pb2.NodeGetInfoRequest, context: Ctx
    ) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(node_id=self._node_id)


class NodePlugin:
    name = "node"

    def __init__(self, config: Config, platform: NodePlatform | None) -> None:
        self.platform = platform
        self.service = NodeService(config.node_id, platform, kubelet_dir=config.kubelet_dir)
        self.reconciling: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        csi_pb2_grpc.add_NodeServicer_to_server(self.service, server)

    async def start(self) -> None:
        """The platform's start-up reconcile, beside serving (kubelet's
        retries must not wait for it; it takes the locks it needs)."""
        platform: object = self.platform  # a NodePlatform that may also be Reconciling
        if isinstance(platform, Reconciling):
            self.reconciling = asyncio.ensure_future(platform.reconcile())

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        if self.reconciling is not None:
            self.reconciling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reconciling
        if self.platform is not None:
            await self.platform.aclose()


def select_platform(config: Config) -> NodePlatform | None:
    """The one place that picks the OS implementation."""
    platform: NodePlatform | None = None
    if sys.platform == "win32":
        from node.windows import WindowsPlatform

        platform = WindowsPlatform(config)
    elif sys.platform.startswith("linux"):
        from node.linux import LinuxPlatform

        platform = LinuxPlatform(config)
    return platform


def build(config: Config) -> NodePlugin:
    return NodePlugin(config, select_platform(config))
