r"""The Windows node platform: stage, publish, unstage, unpublish, stats.

What it does and the decisions an operator should know about are in the
package doc (:mod:`node.windows`).  This module sequences the parts beside
it: links (:mod:`node.windows.links`), share mappings
(:mod:`node.windows.mappings`) and probes of the share
(:mod:`node.windows.probes`); paths and options are checked by pure
functions (:mod:`node.windows.paths`, :mod:`node.windows.options`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from driver import rpc
from driver.config import Config
from driver.credentials import Credentials
from driver.errors import DriverError, FailedPrecondition, InvalidArgument, NotFound
from driver.log import get_logger
from node.platform import PublishRequest, StageRequest, VolumeHealth, VolumeUsage
from node.powershell import PowerShell, ProcessSpawner
from node.windows.host import DiskSpace, RealWindowsHost, WindowsHost, os_error, os_text
from node.windows.links import KubeletLinks
from node.windows.mappings import ShareMappings
from node.windows.options import check_read_only, check_server_name, require_privacy
from node.windows.paths import (
    normalize_path,
    path_key,
    share_root,
    unc_host,
    unc_root,
    volume_unc,
)
from node.windows.probes import VolumeProbes
from node.windows.settings import WindowsSettings

log = get_logger("node.windows")

_HEALTHY = "volume is reachable"


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
        self.probes = VolumeProbes(self.host, self.settings)
        # Per share root key: the identity of its live mapping, for a republish
        # that finds it Disconnected.  Never on disk; gone after a restart.
        self._identities: dict[str, _Identity] = {}

    # ---------------------------------------------------------------- NodePlatform

    def check_path(self, path: str, *, what: str) -> str:
        return normalize_path(path, what=what)

    async def stage(self, request: StageRequest) -> None:
        identity, root, target = self._share_volume(request, "volumes", "node-stage secret")
        staging = request.staging_path
        try:
            await self._map_and_link(identity, root, target, staging, what="staging_target_path")
        except OSError as exc:
            raise os_error(
                exc, what="NodeStageVolume", secrets=[identity.credentials.password]
            ) from None
        log.info("staged", volume_id=request.volume_id, target=target, staging=staging)

    async def unstage(self, volume_id: str, staging_path: str) -> None:
        try:
            if not await self.host.lexists(staging_path):
                return
            if not await self.host.is_link(staging_path):
                # Not ours (or a stage that never got as far as the link): leave it.
                log.info("staging path is not a link; nothing to undo", staging=staging_path)
                return
            root = await self.links.share_of(staging_path)
            if root is None:
                await self.host.remove_link(staging_path)
                return
            await self._unlink_from_share(root, staging_path)
        except OSError as exc:
            raise os_error(exc, what="NodeUnstageVolume") from None
        log.info("unstaged", volume_id=volume_id, staging=staging_path)

    async def publish(self, request: PublishRequest) -> None:
        if request.ephemeral:
            await self._publish_inline(request)
            return
        check_read_only(request, self.settings.read_only)
        try:
            if not await self.host.lexists(request.staging_path):
                raise FailedPrecondition(
                    f"staging_target_path {request.staging_path} does not exist: stage first"
                )
            if await self.links.points_to(request.target_path, request.staging_path):
                # kubelet's republish: the links stay; a Disconnected mapping is re-created.
                share = await self.links.share_of(request.staging_path)
                if share is not None:
                    await self._heal_mapping(request.volume_id, share, request.target_path)
                return
            await self.links.ensure(request.target_path, request.staging_path, what="target_path")
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
        identity, root, unc = self._share_volume(
            volume, "inline volumes", "nodePublishSecretRef secret"
        )
        check_read_only(request, self.settings.read_only)
        target = request.target_path
        try:
            if await self.links.points_to(target, unc):
                await self._heal_mapping(request.volume_id, root, target, identity)
                return
            # A staged volume's identity stays the share's (it made the mapping).
            await self._map_and_link(identity, root, unc, target, what="target_path", keep=True)
        except OSError as exc:
            raise os_error(
                exc, what="NodePublishVolume", secrets=[identity.credentials.password]
            ) from None
        log.info("published inline volume", volume_id=request.volume_id, target=target, share=unc)

    def _share_volume(
        self, volume: StageRequest, kind: str, secret: str
    ) -> tuple[_Identity, str, str]:
        r"""(identity to map the share with, ``\\host\share``, the volume's UNC
        path) of an SMB volume; refuses what Windows cannot map."""
        source = volume.source
        if source.protocol != "smb":
            raise FailedPrecondition(
                f"{source.protocol.upper()} {kind} are not supported on Windows nodes: run pods "
                "that use them on Linux nodes (nodeSelector kubernetes.io/os: linux) or use SMB"
            )
        check_server_name(source)
        privacy = require_privacy(source, volume.mount_options, self.settings.require_privacy)
        if volume.kerberos is not None:
            # Staged and inline volumes alike: PowerShell's SMB cmdlets take a
            # password credential only; a domain-joined node negotiates
            # Kerberos with it by itself.
            raise InvalidArgument(
                f"{secret}: Windows nodes map SMB shares with New-SmbGlobalMapping, which "
                "takes a password credential and cannot use a keytab or credential cache; give "
                "username (DOMAIN\\user) and password of a domain account: a domain-joined "
                "node then logs on with Kerberos (docs/kerberos.md)"
            )
        if volume.credentials is None:
            raise InvalidArgument(f"{secret}: SMB needs username and password")
        root = share_root(source.server, source.share)
        identity = _Identity(volume.credentials, unc_host(source.server), privacy)
        return identity, root, volume_unc(root, volume.subdir)

    async def _map_and_link(
        self, identity: _Identity, root: str, unc: str, link: str, *, what: str, keep: bool = False
    ) -> None:
        """Map the share ``root`` unless mapped, check the volume's directory
        ``unc`` (never created here: it must exist) and link ``link`` to it.
        ``keep``: an identity already known for the share stays."""
        async with self.mappings.lock(root):
            await self.mappings.ensure(root, identity.credentials, identity.host, identity.privacy)
            if keep:
                self._identities.setdefault(path_key(root), identity)
            else:
                self._identities[path_key(root)] = identity
            await self.probes.check_volume_dir(unc)
            await self.links.ensure(link, unc, what=what)

    async def _unlink_from_share(self, root: str, link: str) -> None:
        """Remove ``link`` into the share ``root``, and the share's mapping
        with the last link (staged or inline) into it."""
        async with self.mappings.lock(root):
            users = await self.links.into(root, exclude=link)
            if users:
                log.info("share still in use; keeping its mapping", share=root, links=len(users))
            else:
                # Mapping first, link second: when the removal fails, the link
                # is still there for kubelet's retry to find the share by.
                await self.mappings.remove(root)
                self._identities.pop(path_key(root), None)
                log.info("removed the share's global mapping", share=root)
            await self.host.remove_link(link)

    async def _heal_mapping(
        self, volume_id: str, root: str, link: str, identity: _Identity | None = None
    ) -> None:
        """The health rule of stats: the volume answering through ``link`` is
        health (no PowerShell).  Otherwise a missing or stale (Disconnected,
        Unavailable) mapping is re-created; links are kept.  Any other status
        is left to the SMB client to recover."""
        _, problem = await self.probes.space(link)
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
            root = await self.links.share_of(target_path)
            if root is not None:
                # An inline volume links straight into its share.
                await self._unlink_from_share(root, target_path)
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
            final, broken = await self.links.resolve(path)
        except OSError as exc:
            raise os_error(exc, what="NodeGetVolumeStats") from None
        root = unc_root(final) if final else None
        space: DiskSpace | None = None
        problem = broken
        if problem is None:
            space, problem = await self.probes.space(path)
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
        self.probes.close()
        self.mappings.close()
        if self._own_host is not None:
            self._own_host.close()
