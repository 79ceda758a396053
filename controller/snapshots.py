"""Snapshots: CreateSnapshot, DeleteSnapshot and ListSnapshots.

A snapshot is a tar.gz archive of the volume directory on the same share
(``controller.archive``), written as ``<name>.tar.gz.partial`` and renamed
when complete, so an archive under its final name is always whole.  The
snapshot ID (``controller.snapshot_id``) carries everything needed to find,
delete or restore it; the only memory is bounded maps of recent names and of
the snapshot areas used since start (for an unfiltered ListSnapshots).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from controller import archive
from controller.access import SNAPSHOTTER, ShareAccess
from controller.checks import to_delete
from controller.jobs import Jobs
from controller.params import default_snapshot_area, parse_snapshot_params
from controller.share import (
    FileInfo,
    FileShareBackend,
    cleanup,
    lock_key,
    move_into_place,
    same_share,
)
from controller.snapshot_id import ARCHIVE_SUFFIX, SnapshotId, inside, parse_snapshot_id
from driver import paths, rpc
from driver.csi import csi_pb2
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
from driver.volume_id import parse_volume_id

log = get_logger("controller")

#: Suffix of an archive being written.
PARTIAL_SUFFIX: Final = ".partial"
RECENT_MAX: Final = 10_000
AREAS_MAX: Final = 1_000
#: Archive headers read at once by ListSnapshots.
_LIST_CONCURRENCY: Final = 16
_TOKEN_PREFIX: Final = "n1."  # noqa: S105 - a page token's prefix, not a password


def snapshot_name(name: str) -> str:
    """The CSI snapshot name as the archive's file name (without suffix)."""
    paths.check_component(name, what="snapshot name")
    if name.startswith("."):
        raise InvalidArgument("snapshot name: must not start with '.'")
    if len(name.encode()) > paths.MAX_COMPONENT_BYTES - len(ARCHIVE_SUFFIX + PARTIAL_SUFFIX):
        raise InvalidArgument("snapshot name: too long")
    return name


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


def timestamp(ns: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def described(
    sid: SnapshotId, info: FileInfo, source: str, meta: Mapping[str, str]
) -> csi_pb2.Snapshot:
    """A finished snapshot as CSI describes it: its archive's size, and the
    creation time its header records (else the archive's mtime)."""
    created = archive.created_ns(meta) or info.mtime_ns or 0
    return csi_pb2.Snapshot(
        size_bytes=info.size,
        snapshot_id=sid.format(),
        source_volume_id=source,
        creation_time=timestamp(created),
        ready_to_use=True,
    )


class Snapshots:
    """The snapshot RPCs' logic; the Controller service delegates to it."""

    def __init__(
        self,
        *,
        access: ShareAccess,
        locks: VolumeLocks,
        jobs: Jobs,
        pool: Callable[[], ThreadPoolExecutor],
    ) -> None:
        self._access = access
        self._locks = locks
        self._jobs = jobs
        self._pool = pool
        self._recent_snapshots: Lru[str, str] = Lru(RECENT_MAX)
        # Snapshot areas used since start: (share root, NFS version, area).
        self._areas: Lru[tuple[Source, str | None, str], None] = Lru(AREAS_MAX)

    def _remember(self, name: str, source_volume_id: str, sid: SnapshotId) -> None:
        self._recent_snapshots.put(name, source_volume_id)
        self._areas.put((sid.source, sid.option("vers"), sid.area), None)

    async def create(
        self, request: csi_pb2.CreateSnapshotRequest, context: Ctx
    ) -> csi_pb2.CreateSnapshotResponse:
        if not request.name:
            raise InvalidArgument("name: required")
        if not request.source_volume_id:
            raise InvalidArgument("source_volume_id: required")
        name = snapshot_name(request.name)
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
            vid.source,
            paths.join(area, name + ARCHIVE_SUFFIX),
            vid.dir,
            vid.on_delete,
            vid.options,
            vid.dual,
        )
        source_text = vid.format()
        seen = self._recent_snapshots.get(name)
        if seen is not None and seen != source_text:
            raise AlreadyExists(f"snapshot {name!r} already exists for another volume")
        backend = self._access.backend(
            vid.source, request.secrets, nfs_version=vid.option("vers"), which=SNAPSHOTTER
        )
        key = lock_key(vid.source, sid.archive)
        job = self._jobs.get(key)
        if job is not None and job.owner != source_text:
            raise AlreadyExists(f"snapshot {name!r} is being made of another volume")
        if job is None:
            with self._locks.acquire(key, what="snapshot") as lock:
                existing = await self._snapshot_entry(backend, sid, expect_source=source_text)
                if existing is not None:
                    self._remember(name, source_text, sid)
                    return csi_pb2.CreateSnapshotResponse(snapshot=existing)
                source = await backend.stat(vid.dir)
                if source is None or source.kind != "dir":
                    raise NotFound(f"source volume directory {vid.dir!r} does not exist")
                job = self._jobs.start(
                    key, source_text, self._snapshot_job(backend, sid, source_text), lock
                )
        done, snapshot = await self._jobs.wait(job, context)
        self._remember(name, source_text, sid)
        if not done or snapshot is None:
            # Still being written: the CO asks again until ready_to_use.
            return csi_pb2.CreateSnapshotResponse(
                snapshot=csi_pb2.Snapshot(
                    snapshot_id=sid.format(),
                    source_volume_id=source_text,
                    creation_time=timestamp(job.started_ns),
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
        return described(sid, info, source, meta)

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
            await move_into_place(backend, partial, sid.archive)
        except BaseException:
            await cleanup(backend, partial)
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
            creation_time=timestamp(started_ns),
            ready_to_use=True,
        )

    async def delete(
        self, request: csi_pb2.DeleteSnapshotRequest
    ) -> csi_pb2.DeleteSnapshotResponse:
        sid = to_delete(request.snapshot_id, parse_snapshot_id, "snapshot")
        if sid is None:
            return csi_pb2.DeleteSnapshotResponse()
        rpc.set_protocol(sid.source.protocol)
        backend = self._access.backend(
            sid.source, request.secrets, nfs_version=sid.option("vers"), which=SNAPSHOTTER
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

    async def list_page(
        self, request: csi_pb2.ListSnapshotsRequest
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
            return self._access.cached(root)
        return self._access.backend(root, secrets, nfs_version=nfs_version, which=SNAPSHOTTER)

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
        for root, version, area in self._areas:
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
                sid = SnapshotId(root, path, svid.dir, svid.on_delete, svid.options, svid.dual)
            except InvalidArgument:
                return None
            if not same_share(svid.source, root):
                return None  # copied here from another share
            return described(sid, info, source, meta)

        candidates = [
            (name, info)
            for name, info in listing
            if info.kind == "file" and name.endswith(ARCHIVE_SUFFIX) and not name.startswith(".")
        ]
        results = await asyncio.gather(*(entry(n, i) for n, i in candidates))
        return [r for r in results if r is not None]
