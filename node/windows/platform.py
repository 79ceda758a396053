r"""The Windows node platform: stage, publish, unstage, unpublish, stats.

What it does and the decisions an operator should know about are in the
package doc (:mod:`node.windows`).  This module sequences host calls
(:mod:`node.windows.host`) and mapping calls (:mod:`node.windows.mappings`);
paths and options are checked by pure functions beside it.
"""

from __future__ import annotations

import asyncio
import ntpath
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from driver import rpc
from driver.config import Config
from driver.credentials import Credentials
from driver.errors import (
    DeadlineExceeded,
    DriverError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from driver.log import get_logger
from node.platform import PublishRequest, StageRequest, VolumeHealth, VolumeUsage
from node.powershell import PowerShell, ProcessSpawner
from node.windows.host import DiskSpace, RealWindowsHost, WindowsHost, os_error, os_text
from node.windows.links import KubeletLinks
from node.windows.mappings import ShareMappings
from node.windows.options import check_server_name, require_privacy
from node.windows.paths import (
    normalize_link_target,
    normalize_path,
    path_key,
    unc_host,
    unc_root,
)
from node.windows.settings import WindowsSettings

log = get_logger("node.windows")

T = TypeVar("T")

_HEALTHY = "volume is reachable"
_MISSING = frozenset({2, 3, 267})  # ERROR_FILE_NOT_FOUND, _PATH_NOT_FOUND, _DIRECTORY


@dataclass(frozen=True, slots=True)
class _Identity:
    """What a share's global mapping is (re-)created with; memory only."""

    credentials: Credentials = field(repr=False)
    host: str
    privacy: bool


class WindowsPlatform:
    """NodePlatform for SMB volumes on a Windows node (HostProcess)."""

    name = "windows"
    capabilities = frozenset(
        {"STAGE_UNSTAGE_VOLUME", "GET_VOLUME_STATS", "VOLUME_CONDITION", "SINGLE_NODE_MULTI_WRITER"}
    )

    def __init__(
        self,
        config: Config,
        *,
        settings: WindowsSettings | None = None,
        host: WindowsHost | None = None,
        spawner: ProcessSpawner | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.settings = settings or WindowsSettings.from_config(config)
        self._own_host: RealWindowsHost | None = None
        if host is None:
            host = self._own_host = RealWindowsHost()
        self.host: WindowsHost = host
        self.powershell = PowerShell(
            spawner,
            max_concurrent=self.settings.max_powershell,
            timeout=self.settings.map_timeout,
        )
        self.kubelet_dir = normalize_path(self.settings.kubelet_dir, what="--kubelet-dir")
        self.links = KubeletLinks(self.host, self.kubelet_dir)
        self.mappings = ShareMappings(self.powershell, self.settings, clock)
        self._probes: dict[str, asyncio.Task[DiskSpace]] = {}  # path key → pending probe
        # Per share root key: the identity of its live mapping, for a republish
        # that finds it Disconnected.  Never on disk; gone after a restart.
        self._identities: dict[str, _Identity] = {}

    # ---------------------------------------------------------------- NodePlatform

    def check_path(self, path: str, *, what: str) -> str:
        return normalize_path(path, what=what)

    async def stage(self, request: StageRequest) -> None:
        source = request.source
        if source.protocol != "smb":
            raise FailedPrecondition(
                f"{source.protocol.upper()} volumes are not supported on Windows nodes: run pods "
                "that use them on Linux nodes (nodeSelector kubernetes.io/os: linux) or use SMB"
            )
        check_server_name(source)
        privacy = require_privacy(source, request.mount_options, self.settings.require_privacy)
        if request.kerberos is not None:
            # PowerShell's SMB cmdlets take a password credential only; a
            # domain-joined node negotiates Kerberos with it by itself.
            raise InvalidArgument(
                "node-stage secret: Windows nodes cannot use a keytab or credential cache; give "
                "username (DOMAIN\\user) and password of a domain account: a domain-joined "
                "node then logs on with Kerberos (docs/kerberos.md)"
            )
        if request.credentials is None:
            raise InvalidArgument("node-stage secret: SMB needs username and password")
        host = unc_host(source.server)
        root = f"\\\\{host}\\{source.share}"
        target = root + ("\\" + request.subdir.replace("/", "\\") if request.subdir else "")
        staging = request.staging_path
        secrets = [request.credentials.password]
        async with self.mappings.lock(root):
            try:
                await self.mappings.ensure(root, request.credentials, host, privacy)
                self._identities[path_key(root)] = _Identity(request.credentials, host, privacy)
                await self._check_volume_dir(target)
                await self._ensure_link(staging, target, what="staging_target_path")
            except OSError as exc:
                raise os_error(exc, what="NodeStageVolume", secrets=secrets) from None
        log.info("staged", volume_id=request.volume_id, target=target, staging=staging)

    async def unstage(self, volume_id: str, staging_path: str) -> None:
        try:
            if not await self.host.lexists(staging_path):
                return
            if not await self.host.is_link(staging_path):
                # Not ours (or a stage that never got as far as the link): leave it.
                log.info("staging path is not a link; nothing to undo", staging=staging_path)
                return
            target = normalize_link_target(await self.host.read_link(staging_path))
            root = unc_root(target)
            if root is None:
                await self.host.remove_link(staging_path)
                return
            async with self.mappings.lock(root):
                users = await self.links.into(root, exclude=staging_path)
                if users:
                    log.info(
                        "share still in use; keeping its mapping", share=root, links=len(users)
                    )
                else:
                    # Mapping first, link second: when the removal fails, the link
                    # is still there for kubelet's retry to find the share by.
                    await self.mappings.remove(root)
                    self._identities.pop(path_key(root), None)
                    log.info("removed the share's global mapping", share=root)
                await self.host.remove_link(staging_path)
        except OSError as exc:
            raise os_error(exc, what="NodeUnstageVolume") from None
        log.info("unstaged", volume_id=volume_id, staging=staging_path)

    async def publish(self, request: PublishRequest) -> None:
        if request.ephemeral:
            await self._publish_inline(request)
            return
        self._check_read_only(request)
        try:
            if not await self.host.lexists(request.staging_path):
                raise FailedPrecondition(
                    f"staging_target_path {request.staging_path} does not exist: stage first"
                )
            if await self._links_to(request.target_path, request.staging_path):
                # kubelet's republish: the links stay; a Disconnected mapping is re-created.
                share = await self._share_of(request.staging_path)
                if share is not None:
                    await self._heal_mapping(request.volume_id, share, request.target_path)
                return
            await self._ensure_link(request.target_path, request.staging_path, what="target_path")
        except OSError as exc:
            raise os_error(exc, what="NodePublishVolume") from None
        log.info("published", volume_id=request.volume_id, target=request.target_path)

    async def published_elsewhere(self, staging_path: str, target_path: str) -> list[str]:
        r"""Pod volume links (kubelet's ``pods\<uid>\volumes\kubernetes.io~csi\<pv>\mount``)
        that point at ``staging_path``, ``target_path`` excepted."""
        return await self.links.published_elsewhere(staging_path, target_path)

    async def _publish_inline(self, request: PublishRequest) -> None:
        """An inline ephemeral volume: the share's global mapping (shared with
        staged volumes of that share) and a symlink at the target."""
        volume = request.volume
        if volume is None:
            raise InvalidArgument("an inline ephemeral volume needs volume attributes")
        source = volume.source
        if source.protocol != "smb":
            raise FailedPrecondition(
                f"{source.protocol.upper()} inline volumes are not supported on Windows nodes"
            )
        privacy = require_privacy(source, volume.mount_options, self.settings.require_privacy)
        self._check_read_only(request)
        if volume.credentials is None:
            raise InvalidArgument("nodePublishSecretRef secret: SMB needs username and password")
        host = unc_host(source.server)
        root = f"\\\\{host}\\{source.share}"
        unc = root + ("\\" + volume.subdir.replace("/", "\\") if volume.subdir else "")
        identity = _Identity(volume.credentials, host, privacy)
        target = request.target_path
        secrets = [volume.credentials.password]
        try:
            if await self._links_to(target, unc):
                await self._heal_mapping(request.volume_id, root, target, identity)
                return
            async with self.mappings.lock(root):
                await self.mappings.ensure(root, volume.credentials, host, privacy)
                self._identities.setdefault(path_key(root), identity)
                await self._check_volume_dir(unc)
                # Never anything on the server: the directory must exist.
                await self._ensure_link(target, unc, what="target_path")
        except OSError as exc:
            raise os_error(exc, what="NodePublishVolume", secrets=secrets) from None
        log.info("published inline volume", volume_id=request.volume_id, target=target, share=unc)

    async def _links_to(self, link: str, target: str) -> bool:
        if not await self.host.is_link(link):
            return False
        current = normalize_link_target(await self.host.read_link(link))
        return path_key(current) == path_key(normalize_link_target(target))

    async def _share_of(self, link: str) -> str | None:
        if not await self.host.is_link(link):
            return None
        return unc_root(normalize_link_target(await self.host.read_link(link)))

    async def _heal_mapping(
        self, volume_id: str, root: str, link: str, identity: _Identity | None = None
    ) -> None:
        """The health rule of stats: the volume answering through ``link`` is
        health (no PowerShell).  Otherwise a missing or stale (Disconnected,
        Unavailable) mapping is re-created; links are kept.  Any other status
        is left to the SMB client to recover."""
        _, problem = await self._probe(link)
        if problem is None:
            return
        state = await self.mappings.state(root, time_limit=self.settings.status_timeout)
        if state.exists and not state.stale:
            return
        found = f"{problem}; SMB global mapping {root}: " + (
            f"status {state.status}" if state.exists else "gone"
        )
        identity = identity or self._identities.get(path_key(root))
        if identity is None:
            raise FailedPrecondition(
                f"{found}; it cannot be re-created: the node-stage secret is not in the driver's "
                "memory (the driver restarted since NodeStageVolume); restart the pod"
            )
        start = time.monotonic()
        try:
            async with self.mappings.lock(root):
                await self.mappings.ensure(
                    root, identity.credentials, identity.host, identity.privacy
                )
        except DriverError as exc:
            rpc.note_repair("smb", succeeded=False)
            log.warning(
                "mount repair failed", protocol="smb", volume_id=volume_id, target=link,
                found=found, error=exc.message, seconds=round(time.monotonic() - start, 3),
            )  # fmt: skip
            raise
        self._identities[path_key(root)] = identity
        rpc.note_repair("smb", succeeded=True)
        log.info(
            "mount repaired", protocol="smb", volume_id=volume_id, target=link, found=found,
            steps=["re-created the SMB global mapping"], seconds=round(time.monotonic() - start, 3),
        )  # fmt: skip

    async def unpublish(self, volume_id: str, target_path: str) -> None:
        try:
            if not await self.host.lexists(target_path):
                return
            root = await self._share_of(target_path)
            if root is not None:
                # An inline volume links straight into its share: the mapping
                # goes with the last link (staged or inline) into that share.
                async with self.mappings.lock(root):
                    if not await self.links.into(root, exclude=target_path):
                        await self.mappings.remove(root)
                        self._identities.pop(path_key(root), None)
                        log.info("removed the share's global mapping", share=root)
                    await self.host.remove_link(target_path)
            elif await self.host.is_link(target_path):
                await self.host.remove_link(target_path)
            elif await self.host.is_dir(target_path) and not await self.host.list_dir(target_path):
                await self.host.remove_empty_dir(target_path)
            else:
                # Data written into the pod's directory itself: never delete it.
                log.warning("target is not a link and not empty; left alone", target=target_path)
        except OSError as exc:
            raise os_error(exc, what="NodeUnpublishVolume") from None

    async def usage(self, volume_id: str, path: str) -> VolumeUsage:
        try:
            if not await self.host.lexists(path):
                raise NotFound(f"volume_path {path} does not exist")
            if not await self.host.is_link(path):
                # Stage and publish make links: a plain directory holds no volume.
                raise NotFound(f"volume_path {path} is not a link to a volume")
            final, broken = await self._resolve(path)
        except OSError as exc:
            raise os_error(exc, what="NodeGetVolumeStats") from None
        root = unc_root(final) if final else None
        space: DiskSpace | None = None
        problem = broken
        if problem is None:
            space, problem = await self._probe(path)
        # The volume's own directory answering is health; the mapping's status
        # only explains a failure (a share root the account cannot see, or a
        # mapping in a transient state, says nothing about this volume).
        if root is not None and problem is not None:
            status = await self.mappings.problem(root)
            problem += f"; SMB global mapping {root}: {status or 'status OK'}"
        if space is None:
            space = DiskSpace(0, 0, 0)
        return VolumeUsage(
            total_bytes=space.total,
            available_bytes=space.available,
            used_bytes=max(space.total - space.free, 0),
            total_inodes=None,
            free_inodes=None,
            used_inodes=None,
            health=VolumeHealth(abnormal=problem is not None, message=problem or _HEALTHY),
        )

    async def reconcile(self) -> None:
        """At start (after a node reboot, say): check the share of every
        staging link of this driver.  A share whose mapping is gone or broken
        cannot be mapped now (credentials come only with NodeStageVolume,
        which kubelet sends again for volumes in use); its volumes show as
        abnormal in stats, saying so, until then."""
        try:
            links = await self.links.staging_links()
        except OSError as exc:
            log.warning("start-up check: cannot list staging links", error=os_text(exc))
            return
        roots: dict[str, tuple[str, list[str]]] = {}
        for staged in links:
            root = unc_root(staged.target)
            if root is not None and staged.driver in (self.config.driver_name, "pv"):
                roots.setdefault(path_key(root), (root, []))[1].append(staged.link)
        for root, volumes in roots.values():
            async with self.mappings.lock(root):
                try:
                    state = await self.mappings.state(root, time_limit=self.settings.status_timeout)
                except DriverError as exc:
                    log.warning("start-up check of a share failed", share=root, error=exc.message)
                    continue
            if state.ok:
                log.info("start-up check: share mapped", share=root, volumes=len(volumes))
                continue
            self.mappings.await_credentials(root)
            log.warning(
                "start-up check: share not mapped (node restart?); its volumes are abnormal "
                "until kubelet stages them again with their credentials",
                share=root,
                status=state.status or "no mapping",
                volumes=len(volumes),
            )

    async def aclose(self) -> None:
        for task in self._probes.values():
            task.cancel()
        self.mappings.close()
        if self._own_host is not None:
            self._own_host.close()

    # ---------------------------------------------------------------- stage parts

    def _check_read_only(self, request: PublishRequest) -> None:
        """Read-only is enforced by the container runtime, when kubelet asks it.

        kubelet passes the pod's ``readOnly`` (PVC or PV ``csi.readOnly``) to
        the runtime as well as to NodePublish (containerd → hcsshim ``ro``), so
        such publishes are read-only in the container.  A reader-only access
        mode alone (``readonly`` false) reaches only this driver, and a
        directory symlink cannot be read-only: nothing would enforce it.
        """
        if not request.read_only or request.readonly_flag:
            return
        if self.settings.read_only == "warn":
            log.warning(
                "reader-only access mode without readOnly on the pod's volume: not enforceable "
                "on Windows; the volume is writable unless the SMB account is read-only",
                volume_id=request.volume_id,
            )
            return
        raise InvalidArgument(
            "NodePublishVolume: the access mode is read-only but the volume is not published "
            "read-only (readonly=false); on Windows only the container runtime enforces "
            "read-only, and kubelet asks it to only for readOnly volumes: set readOnly: true "
            "on the pod's persistentVolumeClaim volume (or csi.readOnly on the PV), or run the "
            "driver with --windows-read-only=warn to accept such volumes writable"
        )

    async def _ensure_link(self, link: str, target: str, *, what: str) -> None:
        """Make ``link`` a directory symlink to ``target``, replacing only an
        empty directory or another link."""
        if await self.host.is_link(link):
            current = await self.host.read_link(link)
            if path_key(current) == path_key(target):
                return
            log.info("replacing a wrong link", link=link, was=current, target=target)
            await self.host.remove_link(link)
        elif await self.host.lexists(link):
            if not await self.host.is_dir(link):
                raise FailedPrecondition(f"{what} {link} exists and is not a directory")
            if await self.host.list_dir(link):
                raise FailedPrecondition(
                    f"{what} {link} is a non-empty directory; refusing to replace it"
                )
            await self.host.remove_empty_dir(link)
        else:
            parent = ntpath.dirname(link)
            if not await self.host.lexists(parent):
                await self.host.make_dirs(parent)
        await self.host.symlink_dir(link, target)

    # ---------------------------------------------------------------- stats parts

    async def _resolve(self, path: str) -> tuple[str, str | None]:
        """Follow links from ``path``: (final target, problem or None)."""
        current = path
        for _ in range(8):
            if not await self.host.is_link(current):
                return current, None
            target = normalize_link_target(await self.host.read_link(current))
            if not target.startswith("\\\\") and not await self.host.lexists(target):
                return target, f"{current} points to {target}, which does not exist"
            current = target
        return current, f"{path}: too many levels of links"

    async def _probe(self, path: str) -> tuple[DiskSpace | None, str | None]:
        """Free space through the link, bounded in time; one probe per path at
        a time (a probe stuck on a dead server is not joined by more)."""
        key = path_key(path)
        pending = self._probes.get(key)
        if pending is not None:
            return None, "the previous space query of this volume has not returned yet"
        task = asyncio.ensure_future(self.host.disk_usage(path))
        self._probes[key] = task
        task.add_done_callback(lambda _t: self._probes.pop(key, None))
        task.add_done_callback(_consume_result)
        try:
            space = await asyncio.wait_for(asyncio.shield(task), self.settings.stats_timeout)
        except TimeoutError:
            return None, f"the share did not answer within {self.settings.stats_timeout:g}s"
        except OSError as exc:
            return None, f"cannot reach the volume: {os_text(exc)}"
        return space, None

    async def _check_volume_dir(self, target: str) -> None:
        """Probe the volume's own directory (never the share root: the account
        may see only its folders).  A failure fails this stage only; the
        mapping other volumes use stays."""
        try:
            await self._bounded(
                self.host.check_dir(target), self.settings.fs_timeout, what=f"checking {target}"
            )
        except OSError as exc:
            # Python maps network errors (53, 67) to FileNotFoundError as well:
            # only the Win32 "not found" codes mean the directory is missing.
            code = getattr(exc, "winerror", None)
            missing = code in _MISSING if code is not None else isinstance(exc, FileNotFoundError)
            if missing or isinstance(exc, NotADirectoryError):
                raise NotFound(
                    f"{target} is not a directory on the share (was the volume deleted?)"
                ) from None
            raise

    # ---------------------------------------------------------------- helpers

    @staticmethod
    async def _bounded(work: Awaitable[T], limit: float, *, what: str) -> T:
        try:
            return await asyncio.wait_for(work, limit)
        except TimeoutError:
            raise DeadlineExceeded(f"{what}: no answer within {limit:g}s") from None


def _consume_result(task: asyncio.Task[DiskSpace]) -> None:
    # A probe that outlived its caller must not log "exception never retrieved".
    if not task.cancelled():
        task.exception()
