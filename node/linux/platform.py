"""LinuxPlatform: the Node service's requests as kernel mounts.

State lives in the kernel's mount table, never in memory (see the package
docstring); each method looks before it acts, so every call is idempotent.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Callable

from driver.config import Config
from driver.credentials import Credentials
from driver.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from driver.log import get_logger
from node.linux import mountinfo
from node.linux.errors import errno_name
from node.linux.host import HostView, ProcHost, share_with_group
from node.linux.kerberos import TicketKeeper
from node.linux.krb5files import KRB5_DIR
from node.linux.krb5mounts import KerberosMounts
from node.linux.mounter import KernelMounter
from node.linux.options import (
    MountSpec,
    credentials_text,
    mount_group_id,
    mount_spec,
    with_kerberos,
)
from node.linux.probes import Prober, ProbeTimeout
from node.linux.repair import Repairer
from node.platform import PublishRequest, StageRequest, VolumeHealth, VolumeUsage
from node.runner import AsyncioRunner, CommandRunner

log = get_logger("node.linux")

CAPABILITIES = frozenset(
    {
        "STAGE_UNSTAGE_VOLUME",
        "GET_VOLUME_STATS",
        "VOLUME_CONDITION",
        "VOLUME_MOUNT_GROUP",
        "SINGLE_NODE_MULTI_WRITER",
    }
)
# Credentials files live here for the duration of one ``mount``: /run is a
# tmpfs on every systemd host and in the node DaemonSet, so a password never
# touches a disk.  0700, owned by the driver (root).
SECRETS_DIR = "/run/csi-smb-nfs"
# Bound of one statvfs/chmod on a mounted share (NodeGetVolumeStats answers
# "abnormal" after it) and of the health check before reusing a mount.
PROBE_TIMEOUT = 5.0
# Upper bound of one ``umount`` before falling back to ``umount -l``.
UNMOUNT_TIMEOUT = 30.0


class LinuxPlatform:
    name = "linux"
    capabilities = CAPABILITIES

    def __init__(
        self,
        config: Config,
        *,
        runner: CommandRunner | None = None,
        host: HostView | None = None,
        prober: Prober | None = None,
        secrets_dir: str = SECRETS_DIR,
        probe_timeout: float | None = None,
        unmount_timeout: float | None = None,
        krb5_dir: str = KRB5_DIR,
        ticket_lifetime: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``ticket_lifetime``: ``kinit -l`` for keytab volumes (default: the
        KDC's); ``clock``: what ticket times are compared with."""
        self._host: HostView = host if host is not None else ProcHost()
        runner = runner if runner is not None else AsyncioRunner()
        # Kerberos credential caches (sec=krb5*), renewed while staged.
        self._tickets = TicketKeeper(
            runner,
            krb5_dir,
            uid=config.krb5_uid,
            lifetime=ticket_lifetime,
            clock=clock,
        )
        self._krb5 = KerberosMounts(self._tickets)
        self._mounts = KernelMounter(
            runner=runner,
            host=self._host,
            prober=prober if prober is not None else Prober(),
            secrets_dir=secrets_dir,
            mount_timeout=config.mount_timeout,
            unmount_timeout=(
                unmount_timeout
                if unmount_timeout is not None
                else min(config.mount_timeout, UNMOUNT_TIMEOUT)
            ),
            probe_timeout=probe_timeout if probe_timeout is not None else config.health_timeout,
        )
        # Node-stage credentials of live SMB stagings: memory only, never disk.
        self._credentials: dict[str, Credentials] = {}
        self._repair = Repairer(self._mounts, self._credentials, self._krb5)

    @property
    def probe_timeout(self) -> float:
        """The health bound: how long one probe of a mount may take."""
        return self._mounts.probe_timeout

    # -- paths -----------------------------------------------------------

    def check_path(self, path: str, *, what: str) -> str:
        if "\x00" in path:
            raise InvalidArgument(f"{what}: NUL is not allowed")
        if not path.startswith("/"):
            raise InvalidArgument(f"{what}: must be an absolute path")
        if ".." in path.split("/"):
            raise InvalidArgument(f"{what}: '..' is not allowed")
        norm = posixpath.normpath("/" + path.lstrip("/"))
        if norm == "/":
            raise InvalidArgument(f"{what}: must not be /")
        if len(norm.encode("utf-8", "surrogateescape")) >= 4096:
            raise InvalidArgument(f"{what}: longer than 4095 bytes")
        return norm

    @property
    def tickets(self) -> TicketKeeper:
        return self._tickets

    async def stage(self, request: StageRequest) -> None:
        spec = mount_spec(request)  # validates options before any side effect
        if spec.protocol == "smb" and request.credentials is not None:
            credentials_text(request.credentials)  # same: refuse unusable secrets early
        if spec.protocol == "smb" and request.kerberos is not None:
            spec = with_kerberos(spec, self._tickets.uid)
        staging = self._mounts.real(request.staging_path)
        current = mountinfo.top(self._host.mounts(), staging)
        if current is not None:
            if not spec.matches(current):
                raise FailedPrecondition(
                    f"staging_target_path {staging} already has another mount "
                    f"({current.fstype} {current.source}); unstage that volume first"
                )
            problem = await self._mounts.problem(staging)
            if problem is None:
                if current.read_only != spec.read_only:
                    raise AlreadyExists(
                        f"volume is staged at {staging} "
                        f"{'read-only' if current.read_only else 'read-write'}, "
                        "which is incompatible with the requested access mode"
                    )
                self._keep_credentials(staging, request)
                log.info("already staged", path=staging, device=spec.device)
                await self._keep_tickets(request, staging)
                return
            log.warning("staged mount is broken; mounting again", path=staging, problem=problem)
            await self._mounts.unmount(staging, what="staging_target_path", broken=True)
            spec = spec.fresh()  # not the stale superblock of the dead mount
        self._mounts.prepare_dir(staging, what="staging_target_path")
        await self._mount_with_tickets(spec, staging, request)
        self._keep_credentials(staging, request)
        if spec.protocol == "nfs":
            await self._after_nfs_mount(request, staging)
        log.info("staged", path=staging, device=spec.device)

    async def _tickets_for(self, request: StageRequest, path: str) -> dict[str, str] | None:
        """Kerberos tickets for a mount at ``path``; the mount's environment."""
        creds, server = request.kerberos, request.source.server
        if creds is None:
            return None
        if request.source.protocol == "smb":
            return await self._krb5.smb(path, creds, server)
        await self._krb5.nfs(path, creds, server)  # rpc.gssd finds them by itself
        return None

    async def _mount_with_tickets(self, spec: MountSpec, path: str, request: StageRequest) -> None:
        env = await self._tickets_for(request, path)
        try:
            await self._mounts.mount(spec, path, request.credentials, env=env)
        except BaseException:
            if request.kerberos is not None:
                await self._krb5.release(path)
            raise

    async def _keep_tickets(self, request: StageRequest, staging: str) -> None:
        """A re-stage of a healthy Kerberos volume (kubelet retry, driver
        restart) refreshes its cache from the secret and keeps renewing; a
        KDC that does not answer right now does not fail the healthy mount."""
        try:
            await self._tickets_for(request, staging)
        except Unavailable as exc:
            log.warning("staged, but the tickets could not be refreshed", error=exc.message)

    def _keep_credentials(self, staging: str, request: StageRequest) -> None:
        """In memory only: what a repair of this staging mounts with."""
        if request.credentials is not None:
            self._credentials[staging] = request.credentials

    async def _after_nfs_mount(self, request: StageRequest, staging: str) -> None:
        if request.mount_permissions is not None and not request.read_only:
            mode = request.mount_permissions
            try:
                await self._mounts.probes.call(
                    self._mounts.probe_key("chmod", staging),
                    lambda: os.chmod(staging, mode),
                    self._mounts.probe_timeout,
                )
            except (OSError, ProbeTimeout) as exc:
                # Leave nothing half done: a retry mounts and chmods again.
                await self._mounts.unmount(staging, what="staging_target_path")
                raise Internal(f"chmod {mode:04o} {staging} failed: {exc}") from None
        if request.mount_group and not request.read_only:
            gid = mount_group_id(request.mount_group)
            try:
                await self._mounts.probes.call(
                    self._mounts.probe_key("group", staging),
                    lambda: share_with_group(staging, gid),
                    self._mounts.probe_timeout,
                )
            except (OSError, ProbeTimeout) as exc:
                # root_squash servers refuse it: their ownership rules apply.
                log.warning("could not give the volume to the mount group", gid=gid, error=str(exc))

    async def unstage(self, volume_id: str, staging_path: str) -> None:
        staging = self._mounts.real(staging_path)
        await self._mounts.unmount(staging, what="staging_target_path")
        await self._krb5.release(staging)
        self._credentials.pop(staging, None)
        self._repair.forget(staging)
        self._mounts.remove_dir(staging, what="staging_target_path")
        log.info("unstaged", path=staging)

    async def publish(self, request: PublishRequest) -> None:
        if request.ephemeral:
            await self._publish_inline(request)
            return
        staging = self._mounts.real(request.staging_path)
        target = self._mounts.real(request.target_path)
        mounts = self._host.mounts()
        source = mountinfo.top(mounts, staging)
        current = mountinfo.top(mounts, target)
        if current is not None:
            # Published before: kubelet's periodic republish (or a retry).
            # Ours: the staging's view, or the share itself (the staging was remounted since).
            same = source is not None and current.same_filesystem_view(source)
            spec = mount_spec(request.volume) if request.volume is not None else None
            ours = same or (spec is not None and spec.matches(current))
            check_published(target, current, ours=ours, read_only=request.read_only)
            await self._repair.republish(request, staging, target)
            return
        if source is None:
            raise FailedPrecondition(
                f"staging_target_path {staging} is not mounted: NodeStageVolume first"
            )
        problem = await self._mounts.problem(staging)
        if problem is not None:
            raise Unavailable(f"the staged mount at {staging} does not answer: {problem}")
        self._mounts.prepare_dir(target, what="target_path")
        await self._mounts.bind(staging, target, read_only=request.read_only)
        log.info("published", path=target, read_only=request.read_only)

    async def published_elsewhere(self, staging_path: str, target_path: str) -> list[str]:
        # A publication is a bind mount of the staging mount: the same
        # directory of the same filesystem, visible at another mount point.
        staging = self._mounts.real(staging_path)
        target = self._mounts.real(target_path)
        mounts = self._host.mounts()
        source = mountinfo.top(mounts, staging)
        if source is None:
            return []
        found = []
        for point in sorted({e.mount_point for e in mounts} - {staging, target}):
            top = mountinfo.top(mounts, point)
            if top is not None and top.same_filesystem_view(source):
                found.append(point)
        return found

    async def _publish_inline(self, request: PublishRequest) -> None:
        """An inline ephemeral volume: the share itself at the target."""
        if request.volume is None:
            raise InvalidArgument("an inline ephemeral volume needs volume attributes")
        spec = mount_spec(request.volume)  # validates options before any side effect
        creds = request.volume.credentials
        if spec.protocol == "smb" and creds is not None:
            credentials_text(creds)  # same: refuse unusable secrets early
        if spec.protocol == "smb" and request.volume.kerberos is not None:
            spec = with_kerberos(spec, self._tickets.uid)
        target = self._mounts.real(request.target_path)
        current = mountinfo.top(self._host.mounts(), target)
        if current is not None:
            check_published(target, current, ours=spec.matches(current), read_only=spec.read_only)
            await self._repair.republish_inline(request, spec, target, creds)
            return
        self._mounts.prepare_dir(target, what="target_path")
        try:
            # Never anything on the server: no mkdir, chmod or chown there.
            await self._mount_with_tickets(spec, target, request.volume)
        except Exception:
            self._mounts.remove_dir(target, what="target_path")
            raise
        log.info("published inline volume", path=target, device=spec.device)

    async def unpublish(self, volume_id: str, target_path: str) -> None:
        target = self._mounts.real(target_path)
        await self._mounts.unmount(target, what="target_path")
        await self._krb5.release(target)  # an inline Kerberos volume's tickets
        self._repair.forget(target)
        self._mounts.remove_dir(target, what="target_path")
        log.info("unpublished", path=target)

    async def usage(self, volume_id: str, path: str) -> VolumeUsage:
        # kubelet polls stats: a restarted driver resumes renewing here too.
        await self._tickets.resume()
        path = self._mounts.real(path)
        entry = mountinfo.top(self._host.mounts(), path)
        if entry is None:
            # CSI: NOT_FOUND when the volume is not at volume_path.  Asked of
            # the mount table only: a stat could hang below a dead mount.
            raise NotFound(f"volume_path {path}: no volume is mounted there")
        try:
            st = await self._mounts.statvfs(path)
        except FileNotFoundError:
            raise NotFound(f"volume_path {path} does not exist") from None
        except ProbeTimeout as exc:
            return self._abnormal(
                path, f"the share did not answer statfs: {exc} (server down or unreachable?)"
            )
        except OSError as exc:
            return self._abnormal(
                path,
                f"the mount is not usable: {exc.strerror} ({errno_name(exc.errno)}); "
                "the server may have restarted or be unreachable",
            )
        problem = await self._mounts.problem(path)  # statfs may answer where lookups fail
        if problem is not None:
            return self._abnormal(path, f"the mount is not usable: {problem}")
        total = st.blocks * st.fragment_size
        available = st.blocks_available * st.fragment_size
        used = max(0, (st.blocks - st.blocks_free) * st.fragment_size)
        has_inodes = st.files > 0  # cifs reports 0: no inode counts
        return VolumeUsage(
            total_bytes=total,
            available_bytes=available,
            used_bytes=used,
            total_inodes=st.files if has_inodes else None,
            free_inodes=st.files_free if has_inodes else None,
            used_inodes=max(0, st.files - st.files_free) if has_inodes else None,
            health=VolumeHealth(abnormal=False, message="mounted and answering"),
        )

    def _abnormal(self, path: str, message: str) -> VolumeUsage:
        why = self._repair.conditions.get(path)
        return _unknown(f"{message}; {why}" if why else message)

    async def aclose(self) -> None:
        # Stuck probe threads are daemons and killed mounts are reaped by the
        # runner; neither may delay shutdown.
        await self._tickets.aclose()


def check_published(
    target: str, current: mountinfo.MountEntry, *, ours: bool, read_only: bool
) -> None:
    """A target that has a mount already (kubelet's republish, a retry) must
    show this volume (``ours``) with the requested read-only flag; a staged
    and an inline volume are held to the same rule."""
    if not ours:
        raise FailedPrecondition(
            f"target_path {target} already has another mount ({current.fstype} {current.source})"
        )
    if current.read_only != read_only:
        raise AlreadyExists(
            f"volume is published at {target} "
            f"{'read-only' if current.read_only else 'read-write'}, "
            "which contradicts the requested readonly flag"
        )


def _unknown(message: str) -> VolumeUsage:
    return VolumeUsage(
        total_bytes=0,
        available_bytes=0,
        used_bytes=0,
        total_inodes=None,
        free_inodes=None,
        used_inodes=None,
        health=VolumeHealth(abnormal=True, message=message),
    )
