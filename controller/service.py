"""The CSI Controller service: volumes are directories on existing shares.

Stateless by design: the volume ID carries everything DeleteVolume needs,
the snapshot ID everything DeleteSnapshot and a restore need.  The only
memory is bounded maps of recent CreateVolume/CreateSnapshot requests, used
to answer ALREADY_EXISTS when a name comes back with different parameters,
the snapshot areas seen (for an unfiltered ListSnapshots) and the running
copy jobs (``controller.jobs``).

The RPCs read the request and delegate: request checks to
``controller.checks``, reaching a share with the request's secrets to
``controller.access``, restores and clones to ``controller.populate``, the
snapshot RPCs to ``controller.snapshots``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Final

import grpc

from controller import dual
from controller.access import PROVISIONER, ShareAccess, provisioner_secret
from controller.checks import (
    capabilities_response,
    check_capabilities,
    existing,
    requested_bytes,
    to_delete,
)
from controller.jobs import Jobs
from controller.params import VolumeParams, options_from_mount_flags, parse_params
from controller.populate import Origin, Populator, content_origin
from controller.share import BackendFactory, lock_key
from controller.trash import Trash
from driver import paths, rpc
from driver.config import Config
from driver.csi import csi_pb2, csi_pb2_grpc
from driver.dual import scoped_options
from driver.errors import AlreadyExists, InvalidArgument
from driver.locks import VolumeLocks
from driver.log import get_logger
from driver.lru import Lru
from driver.rpc import Ctx
from driver.volume_id import VolumeId, parse_volume_id

if TYPE_CHECKING:
    from controller.snapshots import Snapshots

log = get_logger("controller")

_RECENT_MAX = 10_000
#: Threads that run tarfile/zlib for archives (CPU-bound; the I/O stays on the loop).
ARCHIVE_WORKERS: Final = 4
# Volume context keys handed to the node (never a secret).
CTX_PROTOCOL = "protocol"
CTX_SOURCE = "source"
CTX_SUBDIR = "subDir"


def _fingerprint(request: csi_pb2.CreateVolumeRequest) -> str:
    digest = hashlib.sha256()
    for key in sorted(request.parameters):
        digest.update(f"{key.lower()}={request.parameters[key]}\0".encode())
    digest.update(
        f"cap={request.capacity_range.required_bytes}:{request.capacity_range.limit_bytes}".encode()
    )
    if request.HasField("volume_content_source"):
        digest.update(b"\0content=" + request.volume_content_source.SerializeToString())
    return digest.hexdigest()


class ControllerService(csi_pb2_grpc.ControllerServicer):
    def __init__(self, backends: BackendFactory, *, archive_workers: int = ARCHIVE_WORKERS) -> None:
        self._archive_workers = archive_workers
        self._backends = backends
        self._access = ShareAccess(backends)
        self._locks = VolumeLocks()
        self._recent: Lru[str, tuple[str, str]] = Lru(_RECENT_MAX)
        self._jobs = Jobs()
        self._populator = Populator(locks=self._locks, jobs=self._jobs, pool=self._pool)
        self.trash = Trash()
        self._executor: ThreadPoolExecutor | None = None
        self._snapshot_rpcs: Snapshots | None = None

    @property
    def _snapshots(self) -> Snapshots:
        # Loaded on the first snapshot RPC: tarfile/gzip and the archive code
        # are not needed to provision volumes (start-up, RSS).
        if self._snapshot_rpcs is None:
            from controller import snapshots

            self._snapshot_rpcs = snapshots.Snapshots(
                access=self._access,
                locks=self._locks,
                jobs=self._jobs,
                pool=self._pool,
            )
        return self._snapshot_rpcs

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._archive_workers, thread_name_prefix="archive"
            )
        return self._executor

    async def aclose(self) -> None:
        """Stop running jobs (their temporary files are removed) and threads."""
        await self._jobs.aclose()
        await self.trash.aclose()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    # -- RPCs ----------------------------------------------------------------

    async def CreateVolume(
        self, request: csi_pb2.CreateVolumeRequest, context: Ctx
    ) -> csi_pb2.CreateVolumeResponse:
        if not request.name:
            raise InvalidArgument("name: required")
        flags = check_capabilities(request.volume_capabilities)
        capacity = requested_bytes(request)
        params: VolumeParams = parse_params(request.name, request.parameters, flags)
        rpc.set_protocol(params.source.protocol)
        options: tuple[tuple[str, str], ...] = ()
        if params.nfs_version:
            options = (("vers", params.nfs_version),)
        root = params.source.share_root
        content: csi_pb2.VolumeContentSource | None = None
        origin: Origin | None = None
        if request.HasField("volume_content_source"):
            content = request.volume_content_source
            origin = content_origin(content, root, params)
        vid = VolumeId(root, params.dir, params.on_delete, options, params.dual).format()
        fingerprint = _fingerprint(request)
        seen = self._recent.get(request.name)
        if seen is not None and seen != (fingerprint, vid):
            raise AlreadyExists(
                f"volume {request.name!r} already exists with different parameters or capacity"
            )
        via_flags = flags if params.dual is None else scoped_options(flags, root.protocol)
        backend = self._access.backend(
            params.source,
            request.secrets,
            nfs_version=params.nfs_version,
            which=provisioner_secret(params.dual),
            mount_options=options_from_mount_flags(via_flags),
        )
        key = lock_key(root, params.dir)
        self.trash.watch(backend, params.dir)  # resumes an earlier process's purge
        if origin is None:
            with self._locks.acquire(key):
                created = await backend.mkdir(params.dir, mode=params.mount_permissions)
        else:
            created = await self._populator.populate(backend, key, params, origin, context)
        self._recent.put(request.name, (fingerprint, vid))
        rpc.report(volume_id=vid, created=created)
        context_map = {
            CTX_PROTOCOL: root.protocol,
            CTX_SOURCE: str(root),
            CTX_SUBDIR: params.dir,
        }
        if params.dual is not None:
            context_map = dual.volume_context(params.dual, params.subdir)
        if params.mount_permissions is not None:
            context_map["mountPermissions"] = f"{params.mount_permissions:04o}"
        volume = csi_pb2.Volume(volume_id=vid, capacity_bytes=capacity, volume_context=context_map)
        if content is not None:
            volume.content_source.CopyFrom(content)
        return csi_pb2.CreateVolumeResponse(volume=volume)

    async def DeleteVolume(
        self, request: csi_pb2.DeleteVolumeRequest, context: Ctx
    ) -> csi_pb2.DeleteVolumeResponse:
        vid = to_delete(request.volume_id, parse_volume_id, "volume")
        if vid is None:
            return csi_pb2.DeleteVolumeResponse()
        rpc.set_protocol(vid.source.protocol)
        if vid.on_delete == "retain":
            log.info("volume retained on the share", dir=vid.dir)
            return csi_pb2.DeleteVolumeResponse()
        backend = self._access.backend(
            vid.source, request.secrets, nfs_version=vid.option("vers"), which=PROVISIONER
        )
        with self._locks.acquire(lock_key(vid.source, vid.dir)):
            if vid.on_delete == "archive":
                parent, leaf = paths.parent_and_leaf(vid.dir)
                target = paths.join(parent, f"archived-{leaf}")
                if await backend.rename(vid.dir, target, replace=True):
                    log.info("volume archived", dir=vid.dir, archive=target)
                else:
                    log.info("volume already gone; nothing to archive", dir=vid.dir)
            else:
                # An empty volume goes in one step; anything else is moved
                # into the trash and purged in the background (never times out).
                removed = await self.trash.delete(backend, vid.dir)
                log.info("volume deleted", dir=vid.dir, existed=removed)
        return csi_pb2.DeleteVolumeResponse()

    async def ValidateVolumeCapabilities(
        self, request: csi_pb2.ValidateVolumeCapabilitiesRequest, context: Ctx
    ) -> csi_pb2.ValidateVolumeCapabilitiesResponse:
        if not request.volume_id:
            raise InvalidArgument("volume_id: required")
        if not request.volume_capabilities:
            raise InvalidArgument("volume_capabilities: at least one is required")
        vid = existing(request.volume_id, parse_volume_id, "volume")
        rpc.set_protocol(vid.source.protocol)
        await self._access.require_volume(vid, request.secrets)
        try:
            check_capabilities(request.volume_capabilities)
        except InvalidArgument as exc:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message=exc.message)
        return csi_pb2.ValidateVolumeCapabilitiesResponse(
            confirmed=csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
                volume_context=request.volume_context,
                volume_capabilities=request.volume_capabilities,
                parameters=request.parameters,
            )
        )

    async def ControllerExpandVolume(
        self, request: csi_pb2.ControllerExpandVolumeRequest, context: Ctx
    ) -> csi_pb2.ControllerExpandVolumeResponse:
        if not request.volume_id:
            raise InvalidArgument("volume_id: required")
        if not request.HasField("capacity_range"):
            raise InvalidArgument("capacity_range: required")
        capacity = requested_bytes(request)
        vid = existing(request.volume_id, parse_volume_id, "volume")
        rpc.set_protocol(vid.source.protocol)
        if request.HasField("volume_capability"):
            check_capabilities([request.volume_capability])
        await self._access.require_volume(vid, request.secrets)
        # A directory has no size of its own: accept and report the new size.
        return csi_pb2.ControllerExpandVolumeResponse(
            capacity_bytes=capacity, node_expansion_required=False
        )

    async def GetCapacity(
        self, request: csi_pb2.GetCapacityRequest, context: Ctx
    ) -> csi_pb2.GetCapacityResponse:
        flags = (
            check_capabilities(request.volume_capabilities) if request.volume_capabilities else []
        )
        if not request.parameters:
            # Parameters are optional here, and CreateVolume cannot provision
            # anything without a source: no storage can be used for such a
            # request, so its capacity is 0 (implementation-defined; README).
            return csi_pb2.GetCapacityResponse(available_capacity=0)
        params = parse_params("capacity", request.parameters, flags)
        rpc.set_protocol(params.source.protocol)
        backend = self._access.for_capacity(params)
        cap = await backend.capacity()
        return csi_pb2.GetCapacityResponse(available_capacity=cap.available_bytes)

    async def ControllerGetCapabilities(
        self, request: csi_pb2.ControllerGetCapabilitiesRequest, context: Ctx
    ) -> csi_pb2.ControllerGetCapabilitiesResponse:
        return capabilities_response()

    # Not advertised in ControllerGetCapabilities: the generated servicer's own
    # methods answer (NotImplementedError, which the error boundary turns into
    # UNIMPLEMENTED).  Named here because its type stubs mark them abstract.
    ControllerPublishVolume = csi_pb2_grpc.ControllerServicer.ControllerPublishVolume
    ControllerUnpublishVolume = csi_pb2_grpc.ControllerServicer.ControllerUnpublishVolume
    ListVolumes = csi_pb2_grpc.ControllerServicer.ListVolumes
    # GetSnapshot is alpha in CSI 1.12; ListSnapshots by ID answers the same.
    GetSnapshot = csi_pb2_grpc.ControllerServicer.GetSnapshot
    ControllerGetVolume = csi_pb2_grpc.ControllerServicer.ControllerGetVolume
    ControllerModifyVolume = csi_pb2_grpc.ControllerServicer.ControllerModifyVolume

    async def CreateSnapshot(
        self, request: csi_pb2.CreateSnapshotRequest, context: Ctx
    ) -> csi_pb2.CreateSnapshotResponse:
        return await self._snapshots.create(request, context)

    async def DeleteSnapshot(
        self, request: csi_pb2.DeleteSnapshotRequest, context: Ctx
    ) -> csi_pb2.DeleteSnapshotResponse:
        return await self._snapshots.delete(request)

    async def ListSnapshots(
        self, request: csi_pb2.ListSnapshotsRequest, context: Ctx
    ) -> csi_pb2.ListSnapshotsResponse:
        return await self._snapshots.list_page(request)


class ControllerPlugin:
    """The controller service with its backends, as the core runs it."""

    name = "controller"

    def __init__(self, backends: BackendFactory, *, archive_workers: int = ARCHIVE_WORKERS) -> None:
        self.backends = backends
        self.service = ControllerService(backends, archive_workers=archive_workers)

    def register(self, server: grpc.aio.Server) -> None:
        csi_pb2_grpc.add_ControllerServicer_to_server(self.service, server)

    async def start(self) -> None:
        """Nothing to start: backends connect on demand."""

    async def ready(self) -> bool:
        return True

    def gauges(self) -> dict[str, tuple[str, Callable[[], float]]]:
        trash = self.service.trash
        return {
            "trash_backlog": (
                "Deleted volumes moved to the trash and not purged yet (this process).",
                lambda: trash.backlog,
            ),
            "trash_purged": ("Trash entries purged since start.", lambda: trash.purged_entries),
        }

    async def aclose(self) -> None:
        await self.service.aclose()
        await self.backends.aclose()


def build(config: Config) -> ControllerPlugin:
    from controller.pools import ShareBackends

    return ControllerPlugin(ShareBackends(config), archive_workers=config.backend_workers)
