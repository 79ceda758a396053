"""New volumes that start with content: restores from a snapshot, clones of a volume.

The origin is validated first (:func:`content_origin`): one that cannot exist
is NOT_FOUND, one on another server or share is INVALID_ARGUMENT (the CSI
spec's "source incompatible"): the copy runs on the server through one
connection, never across shares.  The copy itself fills ``.csi-tmp-<hash>``
beside the new volume's directory and renames it into place when complete,
so a volume directory that exists is always whole; a failed or refused
attempt removes the temporary directory, and a retry starts again from
scratch.  It runs as a job (``controller.jobs``) that outlives the RPC: the
CO's retry waits for the same job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import Executor

from controller import dual
from controller.checks import existing
from controller.jobs import Jobs
from controller.params import TEMP_PREFIX, VolumeParams
from controller.share import FileInfo, FileShareBackend, cleanup, move_into_place
from controller.snapshot_id import SnapshotId, inside, parse_snapshot_id
from driver import paths
from driver.csi import csi_pb2
from driver.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from driver.locks import VolumeLocks
from driver.log import get_logger
from driver.rpc import Ctx
from driver.source import Source
from driver.volume_id import VolumeId, parse_volume_id

log = get_logger("controller")

Origin = SnapshotId | VolumeId


def temp_dir_for(volume_dir: str) -> str:
    """Where a restore or clone of ``volume_dir`` is built before the rename."""
    parent, leaf = paths.parent_and_leaf(volume_dir)
    digest = hashlib.sha256(leaf.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return paths.join(parent, TEMP_PREFIX + digest)


def content_origin(
    content: csi_pb2.VolumeContentSource, root: Source, params: VolumeParams
) -> Origin:
    """The snapshot or volume a new volume on ``root`` starts from, validated."""
    target = params.dir
    kind = content.WhichOneof("type")
    if kind == "snapshot":
        sid = existing(_required(content.snapshot.snapshot_id, kind), parse_snapshot_id, kind)
        seen = dual.align_origin(sid, root, params.dual)
        if not isinstance(seen, SnapshotId):
            raise InvalidArgument(
                f"volume_content_source: snapshot is on {sid.source}, the new volume on "
                f"{root}: restores work within one share (or one dual-protocol tree) only"
            )
        if inside(seen.archive, target):
            raise InvalidArgument("volume_content_source: the archive lies in the new volume")
        return seen
    if kind == "volume":
        source = existing(_required(content.volume.volume_id, kind), parse_volume_id, kind)
        aligned = dual.align_origin(source, root, params.dual)
        if not isinstance(aligned, VolumeId):
            raise InvalidArgument(
                f"volume_content_source: volume is on {source.source}, the new volume on "
                f"{root}: clones work within one share (or one dual-protocol tree) only"
            )
        if inside(target, aligned.dir) or inside(aligned.dir, target):
            raise InvalidArgument(
                "volume_content_source: a clone and its source must not contain each other"
            )
        return aligned
    raise InvalidArgument("volume_content_source: a snapshot or a volume is required")


def _required(text: str, kind: str) -> str:
    if not text:
        raise InvalidArgument(f"volume_content_source.{kind}.{kind}_id: required")
    return text


class Populator:
    """Runs restores and clones as jobs under the volume's lock."""

    def __init__(self, *, locks: VolumeLocks, jobs: Jobs, pool: Callable[[], Executor]) -> None:
        self._locks = locks
        self._jobs = jobs
        self._pool = pool

    async def populate(
        self,
        backend: FileShareBackend,
        key: str,
        params: VolumeParams,
        origin: Origin,
        context: Ctx,
    ) -> bool:
        """Restore or clone into ``params.dir``; True if this call made it."""
        owner = origin.format()
        job = self._jobs.get(key)
        if job is not None and job.owner != owner:
            raise Aborted(f"another operation on volume {params.dir!r} is in progress")
        if job is None:
            with self._locks.acquire(key) as lock:
                existing_dir = await backend.stat(params.dir)
                if existing_dir is not None:
                    if existing_dir.kind != "dir":
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
                work = self._job(backend, params, origin)
                job = self._jobs.start(key, owner, work, lock)
        done, _ = await self._jobs.wait(job, context)
        if not done:
            what = "restore" if isinstance(origin, SnapshotId) else "clone"
            raise Aborted(f"the {what} into {params.dir!r} is still running; a retry waits for it")
        return True

    async def _job(self, backend: FileShareBackend, params: VolumeParams, origin: Origin) -> None:
        target = params.dir
        tmp = temp_dir_for(target)
        mode = params.mount_permissions
        started = time.monotonic()
        await backend.remove_tree(tmp)  # what an earlier, interrupted attempt left
        await backend.mkdir(tmp, mode=mode)
        try:
            if isinstance(origin, SnapshotId):
                from controller import archive  # restores only: tarfile/gzip load late

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
