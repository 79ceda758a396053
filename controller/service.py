"""The CSI Controller service: volumes are directories on existing shares.

Stateless by design: the volume ID carries everything DeleteVolume needs,
the snapshot ID everything DeleteSnapshot and a restore need.  The only
memory is bounded maps of recent CreateVolume/CreateSnapshot requests, used
to answer ALREADY_EXISTS when a name comes back with different parameters,
the snapshot areas seen (for an unfiltered ListSnapshots) and the running
copy jobs (``controller.jobs``).

The snapshot RPCs delegate to ``controller.snapshots``.  Restores and
clones fill ``.csi-tmp-<hash>`` beside the new volume's directory and
rename it into place when complete, so a volume directory
that exists is always whole; a failed or refused attempt removes the
temporary directory, and a retry starts again from scratch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Final

import grpc

from controller import dual
from controller.jobs import Jobs
from controller.params import (
    TEMP_PREFIX,
    VolumeParams,
    options_from_mount_flags,
    parse_params,
)
from controller.share import (
    BackendFactory,
    FileInfo,
    FileShareBackend,
    cleanup,
    lock_key,
    move_into_place,
)
from controller.snapshot_id import SnapshotId, inside, parse_snapshot_id
from controller.trash import Trash
from driver import paths, rpc
from driver.config import Config
from driver.credentials import SmbAuth, smb_auth
from driver.csi import csi_pb2, csi_pb2_grpc
from driver.dual import scoped_options
from driver.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from driver.locks import VolumeLocks
from driver.log import get_logger
from driver.lru import Lru
from driver.rpc import Ctx
from driver.source import Source
from driver.volume_id import VolumeId, parse_volume_id

if TYPE_CHECKING:
    from controller.snapshots import Snapshots

log = get_logger("controller")

AccessMode = csi_pb2.VolumeCapability.AccessMode
_SUPPORTED_MODES = frozenset(
    {
        AccessMode.SINGLE_NODE_WRITER,
        AccessMode.SINGLE_NODE_READER_ONLY,
        AccessMode.MULTI_NODE_READER_ONLY,
        AccessMode.MULTI_NODE_SINGLE_WRITER,
        AccessMode.MULTI_NODE_MULTI_WRITER,
        AccessMode.SINGLE_NODE_SINGLE_WRITER,
        AccessMode.SINGLE_NODE_MULTI_WRITER,
    }
)
_FS_TYPES = frozenset({"", "cifs", "smb", "smb3", "nfs", "nfs4"})
_CAPABILITIES = (
    csi_pb2.ControllerServiceCapability.RPC.CREATE_DELETE_VOLUME,
    csi_pb2.ControllerServiceCapability.RPC.EXPAND_VOLUME,
    csi_pb2.ControllerServiceCapability.RPC.GET_CAPACITY,
    csi_pb2.ControllerServiceCapability.RPC.SINGLE_NODE_MULTI_WRITER,
    csi_pb2.ControllerServiceCapability.RPC.CREATE_DELETE_SNAPSHOT,
    csi_pb2.ControllerServiceCapability.RPC.LIST_SNAPSHOTS,
    csi_pb2.ControllerServiceCapability.RPC.CLONE_VOLUME,
)
_RECENT_MAX = 10_000
#: Threads that run tarfile/zlib for archives (CPU-bound; the I/O stays on the loop).
ARCHIVE_WORKERS: Final = 4
# Volume context keys handed to the node (never a secret).
CTX_PROTOCOL = "protocol"
CTX_SOURCE = "source"
CTX_SUBDIR = "subDir"
_DUAL_PROVISIONER = "provisioner secret (provisionVia: smb)"


def check_capabilities(caps: Iterable[csi_pb2.VolumeCapability]) -> list[str]:
    """Validate capabilities; return the mount flags of the mount ones."""
    caps = list(caps)
    if not caps:
        raise InvalidArgument("volume_capabilities: at least one is required")
    flags: list[str] = []
    for cap in caps:
        kind = cap.WhichOneof("access_type")
        if kind == "block":
            raise InvalidArgument(
                "volume_capabilities: block access is not supported (file shares)"
            )
        if kind != "mount":
            raise InvalidArgument("volume_capabilities: access_type mount is required")
        if cap.mount.fs_type.lower() not in _FS_TYPES:
            raise InvalidArgument(
                f"volume_capabilities: fs_type {cap.mount.fs_type!r} is not cifs/nfs"
            )
        if cap.access_mode.mode not in _SUPPORTED_MODES:
            raise InvalidArgument("volume_capabilities: access_mode is missing or unknown")
        flags.extend(cap.mount.mount_flags)
    return flags


def _capacity(request: csi_pb2.CreateVolumeRequest | csi_pb2.ControllerExpandVolumeRequest) -> int:
    if not request.HasField("capacity_range"):
        return 0
    required = request.capacity_range.required_bytes
    limit = request.capacity_range.limit_bytes
    if required < 0 or limit < 0:
        raise InvalidArgument("capacity_range: byte counts must not be negative")
    if limit and required > limit:
        raise InvalidArgument("capacity_range: required_bytes exceeds limit_bytes")
    return required or limit


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


def temp_dir_for(volume_dir: str) -> str:
    """Where a restore or clone of ``volume_dir`` is built before the rename."""
    parent, leaf = paths.parent_and_leaf(volume_dir)
    digest = hashlib.sha256(leaf.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return paths.join(parent, TEMP_PREFIX + digest)


class ControllerService(csi_pb2_grpc.ControllerServicer):
    def __init__(self, backends: BackendFactory, *, archive_workers: int = ARCHIVE_WORKERS) -> None:
        self._archive_workers = archive_workers
        self._backends = backends
        self._locks = VolumeLocks()
        self._recent: Lru[str, tuple[str, str]] = Lru(_RECENT_MAX)
        self._jobs = Jobs()
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
                backends=self._backends,
                backend_for=self._backend,
                locks=self._locks,
                jobs=self._jobs,
                pool=self._pool,
            )
        return self._snapshot_rpcs

    # -- helpers -----------------------------------------------------------

    def _backend(
        self,
        source: Source,
        secrets: Mapping[str, str],
        *,
        nfs_version: str | None,
        which: str,
        mount_options: Mapping[str, str] | None = None,
    ) -> FileShareBackend:
        root = Source(source.protocol, source.server, source.port, source.share)
        creds: SmbAuth | None = None
        if source.protocol == "smb":
            creds = smb_auth(secrets, which=which)
        elif mount_options and mount_options.get("sec", "sys") not in ("sys", "none", ""):
            raise InvalidArgument(
                f"mount option sec={mount_options['sec']} is not supported by the controller "
                "(NFS volumes are provisioned with sec=sys)"
            )
        return self._backends.get(root, credentials=creds, nfs_version=nfs_version)

    def _remember(self, name: str, fingerprint: str, volume_id: str) -> None:
        self._recent.put(name, (fingerprint, volume_id))

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
        capacity = _capacity(request)
        params: VolumeParams = parse_params(request.name, request.parameters, flags)
        rpc.set_protocol(params.source.protocol)
        options: tuple[tuple[str, str], ...] = ()
        if params.nfs_version:
            options = (("vers", params.nfs_version),)
        root = Source(
            params.source.protocol, params.source.server, params.source.port, params.source.share
        )
        content: csi_pb2.VolumeContentSource | None = None
        origin: SnapshotId | VolumeId | None = None
        if request.HasField("volume_content_source"):
            content = request.volume_content_source
            origin = self._content_source(content, root, params)
        vid = VolumeId(root, params.dir, params.on_delete, options, params.dual).format()
        fingerprint = _fingerprint(request)
        seen = self._recent.get(request.name)
        if seen is not None and seen != (fingerprint, vid):
            raise AlreadyExists(
                f"volume {request.name!r} already exists with different parameters or capacity"
            )
        via_flags = flags if params.dual is None else scoped_options(flags, root.protocol)
        backend = self._backend(
            params.source,
            request.secrets,
            nfs_version=params.nfs_version,
            which="provisioner secret" if params.dual is None else _DUAL_PROVISIONER,
            mount_options=options_from_mount_flags(via_flags),
        )
        key = lock_key(root, params.dir)
        self.trash.watch(backend, params.dir)  # resumes an earlier process's purge
        if origin is None:
            with self._locks.acquire(key):
                created = await backend.mkdir(params.dir, mode=params.mount_permissions)
        else:
            created = await self._populate(backend, key, params, origin, context)
        self._remember(request.name, fingerprint, vid)
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

    @staticmethod
    def _content_source(
        content: csi_pb2.VolumeContentSource, root: Source, params: VolumeParams
    ) -> SnapshotId | VolumeId:
        """The snapshot or volume a new volume starts from, validated.

        A source that cannot exist is NOT_FOUND; one on another server or
        share is INVALID_ARGUMENT (the CSI spec's "source incompatible"): the
        copy runs on the server through one connection, never across shares.
        """
        target = params.dir
        kind = content.WhichOneof("type")
        if kind == "snapshot":
            text = content.snapshot.snapshot_id
            if not text:
                raise InvalidArgument("volume_content_source.snapshot.snapshot_id: required")
            try:
                sid = parse_snapshot_id(text)
            except InvalidArgument as exc:
                raise NotFound(f"snapshot {text!r} does not exist ({exc.message})") from exc
            seen = dual.align_origin(sid, root, params.dual)
            if not isinstance(seen, SnapshotId):
                raise InvalidArgument(
                    f"volume_content_source: snapshot is on {sid.source}, the new volume on "
                    f"{root}: restores work within one share (or one dual-protocol tree) only"
                )
            sid = seen
            if inside(sid.archive, target):
                raise InvalidArgument("volume_content_source: the archive lies in the new volume")
            return sid
        if kind == "volume":
            text = content.volume.volume_id
            if not text:
                raise InvalidArgument("volume_content_source.volume.volume_id: required")
            try:
                source = parse_volume_id(text)
            except InvalidArgument as exc:
                raise NotFound(f"volume {text!r} does not exist ({exc.message})") from exc
            aligned = dual.align_origin(source, root, params.dual)
            if not isinstance(aligned, VolumeId):
                raise InvalidArgument(
                    f"volume_content_source: volume is on {source.source}, the new volume on "
                    f"{root}: clones work within one share (or one dual-protocol tree) only"
                )
            source = aligned
            if inside(target, source.dir) or inside(source.dir, target):
                raise InvalidArgument(
                    "volume_content_source: a clone and its source must not contain each other"
                )
            return source
        raise InvalidArgument("volume_content_source: a snapshot or a volume is required")

    async def _populate(
        self,
        backend: FileShareBackend,
        key: str,
        params: VolumeParams,
        origin: SnapshotId | VolumeId,
        context: Ctx,
    ) -> bool:
        """Restore or clone into ``params.dir``; True if this call made it."""
        owner = origin.format()
        job = self._jobs.get(key)
        if job is not None and job.owner != owner:
            raise Aborted(f"another operation on volume {params.dir!r} is in progress")
        if job is None:
            with self._locks.acquire(key) as lock:
                existing = await backend.stat(params.dir)
                if existing is not None:
                    if existing.kind != "dir":
                        raise AlreadyExists(f"{params.dir!r} exists and is not a directory")
                    # Only the final rename makes it appear: it is complete.
                    return False
                if isinstance(origin, SnapshotId):
                    found = await backend.stat(origin.archive)
                    if found is None or found.kind != "file":
                        raise NotFound(f"snapshot archive {origin.archive!r} does not exist")
                else:
                    found = await backend.stat(origin.dir)
                    if found is None or found.kind != "dir":
                        raise NotFound(f"source volume directory {origin.dir!r} does not exist")
                work = self._populate_job(backend, params, origin)
                job = self._jobs.start(key, owner, work, lock)
        done, _ = await self._jobs.wait(job, context)
        if not done:
            what = "restore" if isinstance(origin, SnapshotId) else "clone"
            raise Aborted(f"the {what} into {params.dir!r} is still running; a retry waits for it")
        return True

    async def _populate_job(
        self, backend: FileShareBackend, params: VolumeParams, origin: SnapshotId | VolumeId
    ) -> None:
        target = params.dir
        tmp = temp_dir_for(target)
        mode = params.mount_permissions
        started = time.monotonic()
        await backend.remove_tree(tmp)  # what an earlier, interrupted attempt left
        await backend.mkdir(tmp, mode=mode)
        try:
            if isinstance(origin, SnapshotId):
                from controller import archive  # restores only: see _snapshots

                stats, top = await archive.extract_archive(
                    backend, origin.archive, tmp, self._pool()
                )
                if top is not None:
                    if mode is not None:
                        top = dataclasses.replace(top, mode=mode)
                    await backend.set_attributes(tmp, top)
            else:
                from controller.tree import copy_tree  # clones only

                stats = await copy_tree(backend, origin.dir, tmp)
                if mode is not None:
                    await backend.set_attributes(tmp, FileInfo(kind="dir", mode=mode))
            await move_into_place(backend, tmp, target)
        except BaseException:
            await cleanup(backend, tmp)
            raise
        log.info(
            "volume populated",
            dir=target,
            source=origin.format(),
            files=stats.files,
            dirs=stats.dirs,
            links=stats.links,
            bytes=stats.bytes,
            seconds=round(time.monotonic() - started, 3),
        )

    async def DeleteVolume(
        self, request: csi_pb2.DeleteVolumeRequest, context: Ctx
    ) -> csi_pb2.DeleteVolumeResponse:
        if not request.volume_id:
            raise InvalidArgument("volume_id: required")
        try:
            vid = parse_volume_id(request.volume_id)
        except InvalidArgument as exc:
            # The spec: deleting something that cannot exist is success.
            log.warning("ignoring DeleteVolume of a malformed volume ID", reason=exc.message)
            return csi_pb2.DeleteVolumeResponse()
        rpc.set_protocol(vid.source.protocol)
        if vid.on_delete == "retain":
            log.info("volume retained on the share", dir=vid.dir)
            return csi_pb2.DeleteVolumeResponse()
        backend = self._backend(
            vid.source, request.secrets, nfs_version=vid.option("vers"), which="provisioner secret"
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
        try:
            vid = parse_volume_id(request.volume_id)
        except InvalidArgument as exc:
            raise NotFound(f"volume {request.volume_id!r} does not exist ({exc.message})") from exc
        rpc.set_protocol(vid.source.protocol)
        await self._require_volume(vid, request.secrets)
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

    async def _require_volume(self, vid: VolumeId, secrets: Mapping[str, str]) -> None:
        """NOT_FOUND when the volume's directory is gone, where the share can
        be asked: NFS always, SMB when the RPC carries credentials."""
        if vid.source.protocol == "nfs" or secrets:
            backend = self._backend(
                vid.source, secrets, nfs_version=vid.option("vers"), which="secret"
            )
            if not await backend.exists(vid.dir):
                raise NotFound(f"volume directory {vid.dir!r} does not exist on the share")

    async def ControllerExpandVolume(
        self, request: csi_pb2.ControllerExpandVolumeRequest, context: Ctx
    ) -> csi_pb2.ControllerExpandVolumeResponse:
        if not request.volume_id:
            raise InvalidArgument("volume_id: required")
        if not request.HasField("capacity_range"):
            raise InvalidArgument("capacity_range: required")
        capacity = _capacity(request)
        try:
            vid = parse_volume_id(request.volume_id)
        except InvalidArgument as exc:
            raise NotFound(f"volume {request.volume_id!r} does not exist ({exc.message})") from exc
        rpc.set_protocol(vid.source.protocol)
        if request.HasField("volume_capability"):
            check_capabilities([request.volume_capability])
        await self._require_volume(vid, request.secrets)
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
        root = Source(
            params.source.protocol, params.source.server, params.source.port, params.source.share
        )
        if params.dual is not None and self._backends.cached(root) is None:
            root = params.dual.root("nfs")  # the same tree, and NFS needs no secret
        backend: FileShareBackend | None
        if root.protocol == "nfs":
            backend = self._backends.get(root, credentials=None, nfs_version=params.nfs_version)
        else:
            # GetCapacity carries no secrets: use a session opened by an
            # earlier CreateVolume for this share, if there is one.
            backend = self._backends.cached(root)
            if backend is None:
                raise FailedPrecondition(
                    f"no SMB session to {root} yet: capacity is known after the first CreateVolume"
                )
        cap = await backend.capacity()
        return csi_pb2.GetCapacityResponse(available_capacity=cap.available_bytes)

    async def ControllerGetCapabilities(
        self, request: csi_pb2.ControllerGetCapabilitiesRequest, context: Ctx
    ) -> csi_pb2.ControllerGetCapabilitiesResponse:
        return csi_pb2.ControllerGetCapabilitiesResponse(
            capabilities=[
                csi_pb2.ControllerServiceCapability(
                    rpc=csi_pb2.ControllerServiceCapability.RPC(type=t)
                )
                for t in _CAPABILITIES
            ]
        )

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
