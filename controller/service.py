"""The CSI Controller service: volumes are directories on existing shares.

Stateless by design: the volume ID carries everything DeleteVolume needs,
the snapshot ID everything DeleteSnapshot and a restore need.  The only
memory is bounded maps of recent CreateVolume/CreateSnapshot requests, used
to answer ALREADY_EXISTS when a name comes back with different parameters,
the snapshot areas seen (for an unfiltered ListSnapshots) and the running
copy jobs (``controller.jobs``).

Snapshots are tar.gz archives on the same share (``controller.archive``),
written under ``<name>.tar.gz.partial`` and renamed when complete.
Restores and clones fill ``.csi-tmp-<hash>`` beside the new volume's
directory and rename it into place when complete, so a volume directory
that exists is always whole; a failed or refused attempt removes the
temporary directory, and a retry starts again from scratch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from controller import archive
from controller.backend import FileInfo, FileShareBackend
from controller.factory import BackendFactory
from controller.jobs import Jobs
from controller.params import (
    TEMP_PREFIX,
    VolumeParams,
    default_snapshot_area,
    options_from_mount_flags,
    parse_params,
    parse_snapshot_params,
)
from controller.snapshot_id import ARCHIVE_SUFFIX, SnapshotId, inside, parse_snapshot_id
from controller.tree import copy_tree
from driver import paths, rpc
from driver.config import Config
from driver.credentials import Credentials, smb_credentials
from driver.csi import csi_pb2, csi_pb2_grpc
from driver.errors import (
    Aborted,
    AlreadyExists,
    DriverError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from driver.locks import VolumeLocks
from driver.log import get_logger
from driver.source import Source
from driver.volume_id import VolumeId, parse_volume_id

log = get_logger("controller")

Ctx = grpc.aio.ServicerContext[Any, Any]
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
_AREAS_MAX = 1_000
#: Threads that run tarfile/zlib for archives (CPU-bound; the I/O stays on the loop).
ARCHIVE_WORKERS: Final = 4
#: Suffix of an archive being written.
PARTIAL_SUFFIX: Final = ".partial"
#: Archive headers read at once by ListSnapshots.
_LIST_CONCURRENCY: Final = 16
_TOKEN_PREFIX: Final = "n1."  # noqa: S105 - a page token's prefix, not a password
# Volume context keys handed to the node (never a secret).
CTX_PROTOCOL = "protocol"
CTX_SOURCE = "source"
CTX_SUBDIR = "subDir"


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


def _same_share(a: Source, b: Source) -> bool:
    return (a.protocol, a.host_port, a.share) == (b.protocol, b.host_port, b.share)


def _timestamp(ns: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def _snapshot_name(name: str) -> str:
    """The CSI snapshot name as the archive's file name (without suffix)."""
    paths.check_component(name, what="snapshot name")
    if name.startswith("."):
        raise InvalidArgument("snapshot name: must not start with '.'")
    if len(name.encode()) > paths.MAX_COMPONENT_BYTES - len(ARCHIVE_SUFFIX + PARTIAL_SUFFIX):
        raise InvalidArgument("snapshot name: too long")
    return name


def temp_dir_for(volume_dir: str) -> str:
    """Where a restore or clone of ``volume_dir`` is built before the rename."""
    parent, leaf = paths.parent_and_leaf(volume_dir)
    digest = hashlib.sha256(leaf.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return paths.join(parent, TEMP_PREFIX + digest)


def encode_token(snapshot_id: str) -> str:
    return _TOKEN_PREFIX + base64.urlsafe_b64encode(snapshot_id.encode()).decode()


def decode_token(token: str) -> str:
    """The snapshot ID a page starts at; ABORTED for a token we never made."""
    if not token.startswith(_TOKEN_PREFIX):
        raise Aborted("starting_token: not a token this driver returned")
    try:
        text = base64.urlsafe_b64decode(token[len(_TOKEN_PREFIX) :].encode()).decode()
        parse_snapshot_id(text)
    except (binascii.Error, UnicodeDecodeError, ValueError, InvalidArgument):
        raise Aborted("starting_token: not a token this driver returned") from None
    return text


def lock_key(source: Source, directory: str) -> str:
    return f"{source.protocol}://{source.host_port}/{source.share.strip('/')}/{directory}"


class ControllerService(csi_pb2_grpc.ControllerServicer):
    def __init__(self, backends: BackendFactory) -> None:
        self._backends = backends
        self._locks = VolumeLocks()
        self._recent: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._recent_snapshots: OrderedDict[str, str] = OrderedDict()
        # Snapshot areas used since start: (share root, NFS version, area).
        self._areas: OrderedDict[tuple[Source, str | None, str], None] = OrderedDict()
        self._jobs = Jobs()
        self._executor: ThreadPoolExecutor | None = None

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
        creds: Credentials | None = None
        if source.protocol == "smb":
            creds = smb_credentials(secrets, which=which)
        elif mount_options and mount_options.get("sec", "sys") not in ("sys", "none", ""):
            raise InvalidArgument(
                f"mount option sec={mount_options['sec']} is not supported by the controller "
                "(NFS volumes are provisioned with sec=sys)"
            )
        return self._backends.get(root, credentials=creds, nfs_version=nfs_version)

    def _remember(self, name: str, fingerprint: str, volume_id: str) -> None:
        self._recent[name] = (fingerprint, volume_id)
        self._recent.move_to_end(name)
        while len(self._recent) > _RECENT_MAX:
            self._recent.popitem(last=False)

    def _remember_snapshot(self, name: str, source_volume_id: str, sid: SnapshotId) -> None:
        self._recent_snapshots[name] = source_volume_id
        self._recent_snapshots.move_to_end(name)
        while len(self._recent_snapshots) > _RECENT_MAX:
            self._recent_snapshots.popitem(last=False)
        area = (sid.source, sid.option("vers"), sid.area)
        self._areas[area] = None
        self._areas.move_to_end(area)
        while len(self._areas) > _AREAS_MAX:
            self._areas.popitem(last=False)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=ARCHIVE_WORKERS, thread_name_prefix="archive"
            )
        return self._executor

    async def aclose(self) -> None:
        """Stop running jobs (their temporary files are removed) and threads."""
        await self._jobs.aclose()
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
            origin = self._content_source(content, root, params.dir)
        vid = VolumeId(root, params.dir, params.on_delete, options).format()
        fingerprint = _fingerprint(request)
        seen = self._recent.get(request.name)
        if seen is not None and seen != (fingerprint, vid):
            raise AlreadyExists(
                f"volume {request.name!r} already exists with different parameters or capacity"
            )
        backend = self._backend(
            params.source,
            request.secrets,
            nfs_version=params.nfs_version,
            which="provisioner secret",
            mount_options=options_from_mount_flags(flags),
        )
        key = lock_key(root, params.dir)
        if origin is None:
            with self._locks.acquire(key):
                created = await backend.mkdir(params.dir, mode=params.mount_permissions)
        else:
            created = await self._populate(backend, key, params, origin, context)
        self._remember(request.name, fingerprint, vid)
        log.info("volume ready", volume_id=vid, created=created)
        context_map = {
            CTX_PROTOCOL: root.protocol,
            CTX_SOURCE: str(root),
            CTX_SUBDIR: params.dir,
        }
        if params.mount_permissions is not None:
            context_map["mountPermissions"] = f"{params.mount_permissions:04o}"
        volume = csi_pb2.Volume(volume_id=vid, capacity_bytes=capacity, volume_context=context_map)
        if content is not None:
            volume.content_source.CopyFrom(content)
        return csi_pb2.CreateVolumeResponse(volume=volume)

    @staticmethod
    def _content_source(
        content: csi_pb2.VolumeContentSource, root: Source, target: str
    ) -> SnapshotId | VolumeId:
        """The snapshot or volume a new volume starts from, validated.

        A source that cannot exist is NOT_FOUND; one on another server or
        share is INVALID_ARGUMENT (the CSI spec's "source incompatible"): the
        copy runs on the server through one connection, never across shares.
        """
        kind = content.WhichOneof("type")
        if kind == "snapshot":
            text = content.snapshot.snapshot_id
            if not text:
                raise InvalidArgument("volume_content_source.snapshot.snapshot_id: required")
            try:
                sid = parse_snapshot_id(text)
            except InvalidArgument as exc:
                raise NotFound(f"snapshot {text!r} does not exist ({exc.message})") from exc
            if not _same_share(sid.source, root):
                raise InvalidArgument(
                    f"volume_content_source: snapshot is on {sid.source}, the new volume on "
                    f"{root}: restores work within one share only"
                )
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
            if not _same_share(source.source, root):
                raise InvalidArgument(
                    f"volume_content_source: volume is on {source.source}, the new volume on "
                    f"{root}: clones work within one share only"
                )
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
                stats, top = await archive.extract_archive(
                    backend, origin.archive, tmp, self._pool()
                )
                if top is not None:
                    if mode is not None:
                        top = dataclasses.replace(top, mode=mode)
                    await backend.set_attributes(tmp, top)
            else:
                stats = await copy_tree(backend, origin.dir, tmp)
                if mode is not None:
                    await backend.set_attributes(tmp, FileInfo(kind="dir", mode=mode))
            await backend.rename(tmp, target)
        except BaseException:
            await _cleanup(backend, tmp)
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
                try:
                    await backend.rename(vid.dir, target, replace=True)
                except NotFound:
                    log.info("volume already gone; nothing to archive", dir=vid.dir)
                else:
                    log.info("volume archived", dir=vid.dir, archive=target)
            else:
                removed = await backend.remove_tree(vid.dir)
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
        if vid.source.protocol == "nfs" or request.secrets:
            backend = self._backend(
                vid.source, request.secrets, nfs_version=vid.option("vers"), which="secret"
            )
            if not await backend.exists(vid.dir):
                raise NotFound(f"volume directory {vid.dir!r} does not exist on the share")
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
        capacity = _capacity(request)
        try:
            vid = parse_volume_id(request.volume_id)
        except InvalidArgument as exc:
            raise NotFound(f"volume {request.volume_id!r} does not exist ({exc.message})") from exc
        rpc.set_protocol(vid.source.protocol)
        if request.HasField("volume_capability"):
            check_capabilities([request.volume_capability])
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
        params = parse_params("capacity", request.parameters, flags)
        rpc.set_protocol(params.source.protocol)
        root = Source(
            params.source.protocol, params.source.server, params.source.port, params.source.share
        )
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

    # -- not offered (not advertised in ControllerGetCapabilities) ----------

    async def ControllerPublishVolume(
        self, request: csi_pb2.ControllerPublishVolumeRequest, context: Ctx
    ) -> csi_pb2.ControllerPublishVolumeResponse:
        raise Unimplemented("ControllerPublishVolume is not supported by this driver")

    async def ControllerUnpublishVolume(
        self, request: csi_pb2.ControllerUnpublishVolumeRequest, context: Ctx
    ) -> csi_pb2.ControllerUnpublishVolumeResponse:
        raise Unimplemented("ControllerUnpublishVolume is not supported by this driver")

    async def ListVolumes(
        self, request: csi_pb2.ListVolumesRequest, context: Ctx
    ) -> csi_pb2.ListVolumesResponse:
        raise Unimplemented("ListVolumes is not supported by this driver")

    async def CreateSnapshot(
        self, request: csi_pb2.CreateSnapshotRequest, context: Ctx
    ) -> csi_pb2.CreateSnapshotResponse:
        if not request.name:
            raise InvalidArgument("name: required")
        if not request.source_volume_id:
            raise InvalidArgument("source_volume_id: required")
        name = _snapshot_name(request.name)
        params = parse_snapshot_params(request.parameters)
        try:
            vid = parse_volume_id(request.source_volume_id)
        except InvalidArgument as exc:
            raise NotFound(
                f"source volume {request.source_volume_id!r} does not exist ({exc.message})"
            ) from exc
        rpc.set_protocol(vid.source.protocol)
        area = params.snapshot_dir or default_snapshot_area(vid.dir)
        if inside(area, vid.dir):
            raise InvalidArgument(f"snapshotDir: {area!r} lies inside the source volume")
        sid = SnapshotId(
            vid.source, paths.join(area, name + ARCHIVE_SUFFIX), vid.dir, vid.on_delete, vid.options
        )
        source_text = vid.format()
        seen = self._recent_snapshots.get(name)
        if seen is not None and seen != source_text:
            raise AlreadyExists(f"snapshot {name!r} already exists for another volume")
        backend = self._backend(
            vid.source, request.secrets, nfs_version=vid.option("vers"), which="snapshotter secret"
        )
        key = lock_key(vid.source, sid.archive)
        job = self._jobs.get(key)
        if job is not None and job.owner != source_text:
            raise AlreadyExists(f"snapshot {name!r} is being made of another volume")
        if job is None:
            with self._locks.acquire(key, what="snapshot") as lock:
                existing = await self._snapshot_entry(backend, sid, expect_source=source_text)
                if existing is not None:
                    self._remember_snapshot(name, source_text, sid)
                    return csi_pb2.CreateSnapshotResponse(snapshot=existing)
                source = await backend.stat(vid.dir)
                if source is None or source.kind != "dir":
                    raise NotFound(f"source volume directory {vid.dir!r} does not exist")
                job = self._jobs.start(
                    key, source_text, self._snapshot_job(backend, sid, source_text), lock
                )
        done, snapshot = await self._jobs.wait(job, context)
        self._remember_snapshot(name, source_text, sid)
        if not done or snapshot is None:
            # Still being written: the CO asks again until ready_to_use.
            return csi_pb2.CreateSnapshotResponse(
                snapshot=csi_pb2.Snapshot(
                    snapshot_id=sid.format(),
                    source_volume_id=source_text,
                    creation_time=_timestamp(job.started_ns),
                    ready_to_use=False,
                )
            )
        return csi_pb2.CreateSnapshotResponse(snapshot=snapshot)

    async def _snapshot_entry(
        self, backend: FileShareBackend, sid: SnapshotId, *, expect_source: str | None
    ) -> csi_pb2.Snapshot | None:
        """The finished snapshot ``sid`` as CSI describes it; None if there is
        no archive.  With ``expect_source``, an archive of another volume is
        ALREADY_EXISTS."""
        info = await backend.stat(sid.archive)
        if info is None:
            return None
        if info.kind != "file":
            raise AlreadyExists(f"{sid.archive!r} exists and is not a snapshot archive")
        meta = await archive.read_meta(backend, sid.archive)
        source = meta.get("source") or sid.source_volume().format()
        if expect_source is not None and source != expect_source:
            raise AlreadyExists(f"snapshot {sid.name!r} already exists for another volume")
        created = archive.created_ns(meta) or info.mtime_ns or 0
        return csi_pb2.Snapshot(
            size_bytes=info.size,
            snapshot_id=sid.format(),
            source_volume_id=source,
            creation_time=_timestamp(created),
            ready_to_use=True,
        )

    async def _snapshot_job(
        self, backend: FileShareBackend, sid: SnapshotId, source_text: str
    ) -> csi_pb2.Snapshot:
        partial = sid.archive + PARTIAL_SUFFIX
        started_ns = time.time_ns()
        started = time.monotonic()
        if sid.area:
            await backend.mkdir(sid.area)
        await backend.remove_tree(partial)  # what an earlier, interrupted attempt left
        meta = archive.meta_for(source_volume_id=source_text, name=sid.name, created_ns=started_ns)
        try:
            stats = await archive.create_archive(
                backend, sid.source_dir, partial, meta, self._pool()
            )
            # The archive's mtime is the snapshot's creation time (for listings).
            await backend.set_attributes(partial, FileInfo(kind="file", mtime_ns=started_ns))
            await backend.rename(partial, sid.archive)
        except BaseException:
            await _cleanup(backend, partial)
            raise
        info = await backend.stat(sid.archive)
        size = info.size if info is not None else 0
        log.info(
            "snapshot ready",
            snapshot_id=sid.format(),
            files=stats.files,
            dirs=stats.dirs,
            links=stats.links,
            bytes=stats.bytes,
            archive_bytes=size,
            seconds=round(time.monotonic() - started, 3),
        )
        return csi_pb2.Snapshot(
            size_bytes=size,
            snapshot_id=sid.format(),
            source_volume_id=source_text,
            creation_time=_timestamp(started_ns),
            ready_to_use=True,
        )

    async def DeleteSnapshot(
        self, request: csi_pb2.DeleteSnapshotRequest, context: Ctx
    ) -> csi_pb2.DeleteSnapshotResponse:
        if not request.snapshot_id:
            raise InvalidArgument("snapshot_id: required")
        try:
            sid = parse_snapshot_id(request.snapshot_id)
        except InvalidArgument as exc:
            log.warning("ignoring DeleteSnapshot of a malformed snapshot ID", reason=exc.message)
            return csi_pb2.DeleteSnapshotResponse()
        rpc.set_protocol(sid.source.protocol)
        backend = self._backend(
            sid.source, request.secrets, nfs_version=sid.option("vers"), which="snapshotter secret"
        )
        with self._locks.acquire(lock_key(sid.source, sid.archive), what="snapshot"):
            info = await backend.stat(sid.archive)
            if info is not None:
                # Never remove something that is not one of our archives.
                if info.kind != "file":
                    raise FailedPrecondition(f"{sid.archive!r} is not a snapshot archive")
                if "format" not in await archive.read_meta(backend, sid.archive):
                    raise FailedPrecondition(
                        f"{sid.archive!r} is not a snapshot archive of this driver; left alone"
                    )
                await backend.remove_tree(sid.archive)
            await backend.remove_tree(sid.archive + PARTIAL_SUFFIX)
        log.info("snapshot deleted", archive=sid.archive, existed=info is not None)
        return csi_pb2.DeleteSnapshotResponse()

    async def ListSnapshots(
        self, request: csi_pb2.ListSnapshotsRequest, context: Ctx
    ) -> csi_pb2.ListSnapshotsResponse:
        if request.max_entries < 0:
            raise InvalidArgument("max_entries: must not be negative")
        start = decode_token(request.starting_token) if request.starting_token else None
        found = await self._list_snapshots(request)
        entries = sorted({s.snapshot_id: s for s in found}.values(), key=lambda s: s.snapshot_id)
        if start is not None:
            entries = [s for s in entries if s.snapshot_id >= start]
        limit = request.max_entries or len(entries)
        page, rest = entries[:limit], entries[limit:]
        return csi_pb2.ListSnapshotsResponse(
            entries=[csi_pb2.ListSnapshotsResponse.Entry(snapshot=s) for s in page],
            next_token=encode_token(rest[0].snapshot_id) if rest else "",
        )

    def _list_backend(
        self, root: Source, secrets: Mapping[str, str], nfs_version: str | None
    ) -> FileShareBackend | None:
        if root.protocol == "smb" and not secrets:
            # No secrets: a session an earlier call opened, if any.
            return self._backends.cached(root)
        return self._backend(root, secrets, nfs_version=nfs_version, which="snapshotter secret")

    async def _list_snapshots(
        self, request: csi_pb2.ListSnapshotsRequest
    ) -> list[csi_pb2.Snapshot]:
        if request.snapshot_id:
            try:
                sid = parse_snapshot_id(request.snapshot_id)
            except InvalidArgument:
                return []  # cannot exist
            rpc.set_protocol(sid.source.protocol)
            backend = self._list_backend(sid.source, request.secrets, sid.option("vers"))
            if backend is None:
                raise FailedPrecondition(
                    f"no SMB session to {sid.source} yet: pass the snapshotter secret"
                )
            entry = await self._snapshot_entry(backend, sid, expect_source=None)
            if entry is None:
                return []
            if request.source_volume_id and entry.source_volume_id != request.source_volume_id:
                return []
            return [entry]
        if request.source_volume_id:
            try:
                vid = parse_volume_id(request.source_volume_id)
            except InvalidArgument:
                return []
            rpc.set_protocol(vid.source.protocol)
            backend = self._list_backend(vid.source, request.secrets, vid.option("vers"))
            if backend is None:
                raise FailedPrecondition(
                    f"no SMB session to {vid.source} yet: pass the snapshotter secret"
                )
            area = default_snapshot_area(vid.dir)
            return await self._scan_area(backend, vid.source, area, only=vid.format())
        # No filter: the areas this controller has used since it started.
        found: list[csi_pb2.Snapshot] = []
        for root, version, area in list(self._areas):
            backend = self._list_backend(root, request.secrets, version)
            if backend is not None:
                found += await self._scan_area(backend, root, area, only=None)
        return found

    async def _scan_area(
        self, backend: FileShareBackend, root: Source, area: str, *, only: str | None
    ) -> list[csi_pb2.Snapshot]:
        """Finished archives in ``area`` (of volume ``only``, if given)."""
        try:
            listing = await backend.list_dir(area) if area else await backend.list_dir(".")
        except (NotFound, FailedPrecondition):
            return []
        slots = asyncio.Semaphore(_LIST_CONCURRENCY)

        async def entry(name: str, info: FileInfo) -> csi_pb2.Snapshot | None:
            path = paths.join(area, name)
            async with slots:
                try:
                    meta = await archive.read_meta(backend, path)
                except (NotFound, FailedPrecondition):
                    return None  # removed meanwhile, or not an archive
            source = meta.get("source", "")
            if not source or (only is not None and source != only):
                return None
            try:
                svid = parse_volume_id(source)
                sid = SnapshotId(root, path, svid.dir, svid.on_delete, svid.options)
            except InvalidArgument:
                return None
            if not _same_share(svid.source, root):
                return None  # copied here from another share
            created = archive.created_ns(meta) or info.mtime_ns or 0
            return csi_pb2.Snapshot(
                size_bytes=info.size,
                snapshot_id=sid.format(),
                source_volume_id=source,
                creation_time=_timestamp(created),
                ready_to_use=True,
            )

        candidates = [
            (name, info)
            for name, info in listing
            if info.kind == "file" and name.endswith(ARCHIVE_SUFFIX) and not name.startswith(".")
        ]
        results = await asyncio.gather(*(entry(n, i) for n, i in candidates))
        return [r for r in results if r is not None]

    async def GetSnapshot(  # alpha in CSI 1.12; ListSnapshots by ID answers the same
        self, request: csi_pb2.GetSnapshotRequest, context: Ctx
    ) -> csi_pb2.GetSnapshotResponse:
        raise Unimplemented("GetSnapshot is not supported by this driver")

    async def ControllerGetVolume(
        self, request: csi_pb2.ControllerGetVolumeRequest, context: Ctx
    ) -> csi_pb2.ControllerGetVolumeResponse:
        raise Unimplemented("ControllerGetVolume is not supported by this driver")

    async def ControllerModifyVolume(
        self, request: csi_pb2.ControllerModifyVolumeRequest, context: Ctx
    ) -> csi_pb2.ControllerModifyVolumeResponse:
        raise Unimplemented("ControllerModifyVolume is not supported by this driver")


async def _cleanup(backend: FileShareBackend, path: str) -> None:
    """Remove what a failed job left (best effort; also when cancelled)."""
    try:
        await asyncio.shield(backend.remove_tree(path))
    except DriverError as exc:
        log.warning("could not remove a partial result", path=path, error=exc.message)
    except asyncio.CancelledError:
        log.warning("partial result left behind (cancelled)", path=path)


class ControllerPlugin:
    """The controller service with its backends, as the core runs it."""

    name = "controller"

    def __init__(self, backends: BackendFactory) -> None:
        self.backends = backends
        self.service = ControllerService(backends)

    def register(self, server: grpc.aio.Server) -> None:
        csi_pb2_grpc.add_ControllerServicer_to_server(self.service, server)

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        await self.service.aclose()
        await self.backends.aclose()


def build(config: Config) -> ControllerPlugin:
    from controller.backends import ShareBackends

    return ControllerPlugin(ShareBackends(config))
