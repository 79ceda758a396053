"""Self-healing at republish: repair broken mounts under running pods.

The CSIDriver has ``requiresRepublish: true``, so kubelet calls
NodePublishVolume again, periodically, for every published target.  For a
target that is already published, :class:`Repairer` probes the target and
its staging mount (a stat and a readdir of each root, in parallel, within
the health bound) and repairs only what is broken, with the sequence
measured in the guest to reach a running container whose volume mount has
``mountPropagation: HostToContainer`` (its copy of the target is an rslave
of the host's, under kubelet's rshared directory):

1. ``umount -l`` the dead staging mount (its targets keep their mounts);
2. mount the share again at the staging path, on a new superblock
   (NFS ``nosharecache``; cifs ``nosharesock``);
3. ``mount --bind`` the staging path *on top of* the dead target mount: the
   container's slave copy receives the new mount stacked over the dead one.

Unmounting the target and binding a new one instead would leave the
container's copy dead.  Each repair leaves the dead layer below the new one;
unpublish peels them all (``KernelMounter.unmount``).

Nothing is touched while the server still does not answer (a TCP connect to
its port, within the health bound): the RPC says UNAVAILABLE and the next
republish tries again.  SMB needs the node-stage credentials, kept in memory
only, for live stagings; after a driver restart they are gone, the repair
is refused with FAILED_PRECONDITION and NodeGetVolumeStats says why.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Mapping
from typing import assert_never

from driver import rpc
from driver.credentials import Credentials
from driver.errors import (
    Aborted,
    DeadlineExceeded,
    DriverError,
    FailedPrecondition,
    Unavailable,
)
from driver.locks import VolumeLocks
from driver.log import get_logger
from node.linux import mountinfo
from node.linux.mounter import KernelMounter
from node.linux.options import MountSpec, mount_spec
from node.platform import PublishRequest

log = get_logger("node.linux")


class Plan(enum.Enum):
    KEEP = "keep"  # everything answers: change nothing
    BIND = "bind"  # the staging mount answers (repaired before), the target not
    REMOUNT = "remount"  # the staging mount is dead and the server is back
    WAIT = "wait"  # the staging mount is dead and the server does not answer yet
    NO_CREDENTIALS = "no-credentials"  # SMB staging dead, no node-stage secret in memory


def plan(*, target_ok: bool, staging_ok: bool, server_ok: bool | None, credentials: bool) -> Plan:
    """The repair decision table (``server_ok`` is None when not asked)."""
    if staging_ok:
        return Plan.KEEP if target_ok else Plan.BIND
    if not credentials:
        return Plan.NO_CREDENTIALS
    if not server_ok:
        return Plan.WAIT
    return Plan.REMOUNT


class Repairer:
    """Checks published targets at republish and repairs broken mounts."""

    def __init__(self, mounts: KernelMounter, credentials: Mapping[str, Credentials]) -> None:
        self._mounts = mounts
        # Node-stage credentials of live SMB stagings, by staging path: the
        # platform fills it at NodeStage and empties it at NodeUnstage.
        self._credentials = credentials
        # One repair at a time per staging path; a timed-out mount keeps it.
        self._locks = VolumeLocks()
        # Why a path could not be repaired, for NodeGetVolumeStats.
        self.conditions: dict[str, str] = {}

    async def republish(self, request: PublishRequest, staging: str, target: str) -> None:
        """``target`` already shows a mount of this volume: keep or repair it."""
        try:
            with self._locks.acquire(staging, what="staging repair") as lock:
                try:
                    await self._republish(request, staging, target)
                except (DeadlineExceeded, asyncio.CancelledError) as exc:
                    finished = getattr(exc, "finished", None)
                    if finished is not None:
                        lock.release_after(finished)
                    raise
        except Aborted:
            raise Aborted(
                f"a repair of {staging} is in progress for another target; try again"
            ) from None

    async def _republish(self, request: PublishRequest, staging: str, target: str) -> None:
        staged = mountinfo.top(self._mounts.host.mounts(), staging)
        target_problem, staging_problem = await asyncio.gather(
            self._mounts.problem(target),
            self._mounts.problem(staging) if staged is not None else _not_mounted(),
        )
        if target_problem is None and staging_problem is None:
            self._clear(staging, target)
            log.debug("republish: mounts answer", path=target)
            return
        spec = mount_spec(request.volume) if request.volume is not None else None
        if spec is None:
            raise FailedPrecondition(
                f"cannot repair {target}: the request's volume context does not say where "
                "the volume lives"
            )
        if staged is not None and not spec.matches(staged):
            raise FailedPrecondition(
                f"staging_target_path {staging} has another mount ({staged.fstype} "
                f"{staged.source}); not repairing"
            )
        creds = self._credentials.get(staging) if spec.protocol == "smb" else None
        has_creds = spec.protocol != "smb" or creds is not None
        server_problem: str | None = None
        if staging_problem is not None and has_creds:
            server_problem = await self._mounts.answers(spec)
        step = plan(
            target_ok=target_problem is None,
            staging_ok=staging_problem is None,
            server_ok=server_problem is None if staging_problem is not None else None,
            credentials=has_creds,
        )
        broken = f"staging: {staging_problem or 'answers'}; target: {target_problem or 'answers'}"
        if step is Plan.KEEP:  # pragma: no cover - handled above
            return
        if step is Plan.WAIT:
            message = (
                f"the mount is broken ({broken}) and the server does not answer yet "
                f"({server_problem}); the next republish repairs it"
            )
            self._remember(message, staging, target)
            raise Unavailable(message)
        if step is Plan.NO_CREDENTIALS:
            message = (
                f"the mount is broken ({broken}) and cannot be repaired: the node-stage "
                "secret is not in the driver's memory (the driver restarted since "
                "NodeStageVolume); restart the pod to stage the volume again"
            )
            self._remember(message, staging, target)
            log.warning(
                "mount repair impossible", protocol=spec.protocol, path=target, reason=message
            )
            raise FailedPrecondition(message)
        if step is Plan.BIND or step is Plan.REMOUNT:
            await self._repair(
                request,
                spec,
                creds,
                staging=staging,
                target=target,
                remount=step is Plan.REMOUNT,
                bind=target_problem is not None,
                broken=broken,
            )
            return
        assert_never(step)

    async def _repair(
        self,
        request: PublishRequest,
        spec: MountSpec,
        creds: Credentials | None,
        *,
        staging: str,
        target: str,
        remount: bool,
        bind: bool,
        broken: str,
    ) -> None:
        start = time.monotonic()
        steps: list[str] = []
        try:
            if remount:
                if mountinfo.top(self._mounts.host.mounts(), staging) is not None:
                    await self._mounts.unmount(staging, what="staging_target_path", broken=True)
                    steps.append("detached the dead staging mount")
                self._mounts.prepare_dir(staging, what="staging_target_path")
                await self._mounts.mount(spec.fresh(), staging, creds)
                steps.append("mounted the share again at the staging path")
            if bind:
                await self._mounts.bind(staging, target, read_only=request.read_only)
                steps.append("bound the staging mount on top of the target")
        except (DriverError, asyncio.CancelledError) as exc:
            rpc.note_repair(spec.protocol, succeeded=False)
            error = exc.message if isinstance(exc, DriverError) else "cancelled"
            self._remember(
                f"the mount is broken ({broken}); repair failed: {error}", staging, target
            )
            log.warning(
                "mount repair failed",
                protocol=spec.protocol,
                volume_id=request.volume_id,
                target=target,
                staging=staging,
                found=broken,
                steps=steps,
                error=error,
                seconds=round(time.monotonic() - start, 3),
            )
            raise
        rpc.note_repair(spec.protocol, succeeded=True)
        self._clear(staging, target)
        log.info(
            "mount repaired",
            protocol=spec.protocol,
            volume_id=request.volume_id,
            target=target,
            staging=staging,
            found=broken,
            steps=steps,
            seconds=round(time.monotonic() - start, 3),
        )

    async def republish_inline(
        self, request: PublishRequest, spec: MountSpec, target: str, creds: Credentials | None
    ) -> None:
        """An inline ephemeral volume is mounted at the target itself: a dead
        one gets the share mounted again on top of it (the same propagation
        reaches the container as a bind would)."""
        problem = await self._mounts.problem(target)
        if problem is None:
            self._clear(target)
            log.debug("republish: mount answers", path=target)
            return
        server_problem = await self._mounts.answers(spec)
        if server_problem is not None:
            message = (
                f"the mount is broken ({problem}) and the server does not answer yet "
                f"({server_problem}); the next republish repairs it"
            )
            self._remember(message, target)
            raise Unavailable(message)
        start = time.monotonic()
        try:
            await self._mounts.mount(spec.fresh(), target, creds)
        except DriverError as exc:
            rpc.note_repair(spec.protocol, succeeded=False)
            self._remember(f"the mount is broken ({problem}); repair failed: {exc.message}", target)
            log.warning(
                "mount repair failed",
                protocol=spec.protocol,
                volume_id=request.volume_id,
                target=target,
                found=problem,
                steps=[],
                error=exc.message,
                seconds=round(time.monotonic() - start, 3),
            )
            raise
        rpc.note_repair(spec.protocol, succeeded=True)
        self._clear(target)
        log.info(
            "mount repaired",
            protocol=spec.protocol,
            volume_id=request.volume_id,
            target=target,
            found=problem,
            steps=["mounted the share again on top of the target"],
            seconds=round(time.monotonic() - start, 3),
        )

    def _remember(self, message: str, *paths: str) -> None:
        for path in paths:
            self.conditions[path] = message

    def _clear(self, *paths: str) -> None:
        for path in paths:
            self.conditions.pop(path, None)

    def forget(self, path: str) -> None:
        """``path`` was unpublished or unstaged."""
        self.conditions.pop(path, None)


async def _not_mounted() -> str:
    return "not mounted"
