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
republish tries again.  A remount needs what the staging authenticated with:

* SMB with a password: the node-stage credentials, kept in memory only for
  live stagings; after a driver restart they are gone, the repair is refused
  with FAILED_PRECONDITION and NodeGetVolumeStats says why;
* Kerberos (SMB ``sec=krb5``, NFS ``sec=krb5*`` fed from the secret): the
  ticket keeper's files (the keytab or cache, on the node's tmpfs, also after
  a restart) give fresh tickets first: tickets that expired while the server
  was down are replaced from the keytab; a credential cache that expired for
  good is FAILED_PRECONDITION naming the new Secret it needs.  Tickets are
  obtained before anything is unmounted, so a KDC that does not answer yet
  changes nothing (UNAVAILABLE, like a server that does not answer).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, assert_never

from driver import rpc
from driver.credentials import Credentials
from driver.errors import (
    Aborted,
    DriverError,
    FailedPrecondition,
    Unavailable,
)
from driver.locks import VolumeLocks
from driver.log import get_logger
from node.linux import mountinfo
from node.linux.mounter import KernelMounter
from node.linux.mountinfo import MountEntry
from node.linux.options import MountSpec, mount_spec
from node.platform import PublishRequest

log = get_logger("node.linux")


class Plan(enum.Enum):
    KEEP = "keep"  # everything answers: change nothing
    BIND = "bind"  # the staging mount answers (repaired before), the target not
    REMOUNT = "remount"  # the staging mount is dead and the server is back
    WAIT = "wait"  # the staging mount is dead and the server does not answer yet
    NO_CREDENTIALS = "no-credentials"  # dead, and nothing to authenticate a remount with


def plan(*, target_ok: bool, staging_ok: bool, server_ok: bool | None, credentials: bool) -> Plan:
    """The repair decision table (``server_ok`` is None when not asked)."""
    if staging_ok:
        return Plan.KEEP if target_ok else Plan.BIND
    if not credentials:
        return Plan.NO_CREDENTIALS
    if not server_ok:
        return Plan.WAIT
    return Plan.REMOUNT


class RepairTickets(Protocol):
    """The Kerberos side of a remount (``node.linux.krb5mounts``)."""

    async def remount_spec(self, path: str, spec: MountSpec) -> tuple[MountSpec, str] | None:
        """For a Kerberos mount at ``path``: its mount options and the key of
        its tickets; None when ``path`` does not authenticate with Kerberos."""
        ...

    async def fresh(self, key: str) -> dict[str, str]:
        """Tickets good for a new mount now; the mount's environment."""
        ...


@dataclass(frozen=True, slots=True)
class _Auth:
    """What a remount authenticates with."""

    spec: MountSpec
    creds: Credentials | None = None  # SMB password
    tickets: str | None = None  # Kerberos: the ticket keeper's key
    missing: str = ""  # why nothing can authenticate it


class Repairer:
    """Checks published targets at republish and repairs broken mounts."""

    def __init__(
        self,
        mounts: KernelMounter,
        credentials: Mapping[str, Credentials],
        tickets: RepairTickets,
    ) -> None:
        self._mounts = mounts
        # Node-stage credentials of live SMB stagings, by staging path: the
        # platform fills it at NodeStage and empties it at NodeUnstage.
        self._credentials = credentials
        self._tickets = tickets
        # One repair at a time per staging path; a timed-out mount keeps it.
        self._locks = VolumeLocks()
        # Why a path could not be repaired, for NodeGetVolumeStats.
        self.conditions: dict[str, str] = {}

    async def republish(self, request: PublishRequest, staging: str, target: str) -> None:
        """``target`` already shows a mount of this volume: keep or repair it."""
        try:
            with self._locks.hold(staging, what="staging repair"):
                await self._republish(request, staging, target)
        except Aborted:
            raise Aborted(
                f"a repair of {staging} is in progress for another target; try again"
            ) from None

    async def _auth(self, spec: MountSpec, path: str, entry: MountEntry | None) -> _Auth:
        kerberos = await self._tickets.remount_spec(path, spec)
        if kerberos is not None:
            return _Auth(kerberos[0], tickets=kerberos[1])
        if spec.protocol != "smb":
            return _Auth(spec)
        creds = self._credentials.get(path)
        if creds is not None:
            return _Auth(spec, creds=creds)
        if entry is not None and (entry.super_option("sec") or "").startswith("krb5"):
            missing = (
                "the node keeps no Kerberos keytab or cache for this sec=krb5 mount any more "
                "(its files under the driver's krb5 directory are gone)"
            )
        else:
            missing = (
                "the node-stage secret is not in the driver's memory (the driver restarted "
                "since NodeStageVolume)"
            )
        return _Auth(spec, missing=missing)

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
        auth = await self._auth(spec, staging, staged)
        server_problem: str | None = None
        if staging_problem is not None and not auth.missing:
            server_problem = await self._mounts.answers(spec)
        step = plan(
            target_ok=target_problem is None,
            staging_ok=staging_problem is None,
            server_ok=server_problem is None if staging_problem is not None else None,
            credentials=not auth.missing,
        )
        broken = f"staging: {staging_problem or 'answers'}; target: {target_problem or 'answers'}"
        paths = (staging, target)
        if step is Plan.KEEP:  # pragma: no cover - handled above
            return
        if step is Plan.WAIT:
            raise self._waiting(broken, f"the server does not answer yet ({server_problem})", paths)
        if step is Plan.NO_CREDENTIALS:
            message = (
                f"the mount is broken ({broken}) and cannot be repaired: {auth.missing}; "
                "restart the pod to stage the volume again"
            )
            self._remember(message, *paths)
            _log(request, spec, "impossible", target=target, staging=staging, found=broken,
                 error=message)  # fmt: skip
            raise FailedPrecondition(message)
        if step is Plan.BIND or step is Plan.REMOUNT:
            await self._repair(
                request,
                auth,
                staging=staging,
                target=target,
                remount=step is Plan.REMOUNT,
                bind=target_problem is not None,
                broken=broken,
            )
            return
        assert_never(step)

    def _waiting(self, broken: str, why: str, paths: tuple[str, ...]) -> Unavailable:
        message = f"the mount is broken ({broken}) and {why}; the next republish repairs it"
        self._remember(message, *paths)
        return Unavailable(message)

    async def _tickets_for(
        self, request: PublishRequest, auth: _Auth, broken: str, paths: tuple[str, ...]
    ) -> dict[str, str] | None:
        """Fresh Kerberos tickets for the remount, before anything changes."""
        if auth.tickets is None:
            return None
        try:
            return await self._tickets.fresh(auth.tickets)
        except Unavailable as exc:
            why = f"the KDC does not answer yet ({exc.message})"
            raise self._waiting(broken, why, paths) from None
        except DriverError as exc:
            message = f"the mount is broken ({broken}) and cannot be repaired: {exc.message}"
            self._remember(message, *paths)
            _log(request, auth.spec, "impossible", target=paths[-1], found=broken, error=message)
            raise type(exc)(message) from None

    async def _repair(
        self,
        request: PublishRequest,
        auth: _Auth,
        *,
        staging: str,
        target: str,
        remount: bool,
        bind: bool,
        broken: str,
    ) -> None:
        env = await self._tickets_for(request, auth, broken, (staging, target)) if remount else None
        start = time.monotonic()
        steps: list[str] = []
        try:
            if remount:
                if mountinfo.top(self._mounts.host.mounts(), staging) is not None:
                    await self._mounts.unmount(staging, what="staging_target_path", broken=True)
                    steps.append("detached the dead staging mount")
                self._mounts.prepare_dir(staging, what="staging_target_path")
                await self._mounts.mount(auth.spec.fresh(), staging, auth.creds, env=env)
                steps.append("mounted the share again at the staging path")
            if bind:
                await self._mounts.bind(staging, target, read_only=request.read_only)
                steps.append("bound the staging mount on top of the target")
        except (DriverError, asyncio.CancelledError) as exc:
            error = exc.message if isinstance(exc, DriverError) else "cancelled"
            self._done(request, auth.spec, broken=broken, paths=(staging, target), steps=steps,
                       start=start, error=error)  # fmt: skip
            raise
        self._done(request, auth.spec, broken=broken, paths=(staging, target), steps=steps,
                   start=start)  # fmt: skip

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
        kerberos = await self._tickets.remount_spec(target, spec)
        auth = (
            _Auth(kerberos[0], tickets=kerberos[1])
            if kerberos is not None
            else _Auth(spec, creds=creds)
        )
        server_problem = await self._mounts.answers(spec)
        if server_problem is not None:
            why = f"the server does not answer yet ({server_problem})"
            raise self._waiting(problem, why, (target,))
        env = await self._tickets_for(request, auth, problem, (target,))
        start = time.monotonic()
        try:
            await self._mounts.mount(auth.spec.fresh(), target, auth.creds, env=env)
        except DriverError as exc:
            self._done(request, auth.spec, broken=problem, paths=(target,), steps=[], start=start,
                       error=exc.message)  # fmt: skip
            raise
        steps = ["mounted the share again on top of the target"]
        self._done(request, auth.spec, broken=problem, paths=(target,), steps=steps, start=start)

    def _done(
        self,
        request: PublishRequest,
        spec: MountSpec,
        *,
        broken: str,
        paths: tuple[str, ...],
        steps: list[str],
        start: float,
        error: str = "",
    ) -> None:
        """Count, remember and log a repair that ran (``error``: it failed)."""
        rpc.note_repair(spec.protocol, succeeded=not error)
        if error:
            self._remember(f"the mount is broken ({broken}); repair failed: {error}", *paths)
        else:
            self._clear(*paths)
        _log(
            request,
            spec,
            "failed" if error else "repaired",
            target=paths[-1],
            staging=paths[0] if len(paths) > 1 else "",
            found=broken,
            steps=steps,
            error=error,
            seconds=time.monotonic() - start,
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


def _log(
    request: PublishRequest,
    spec: MountSpec,
    outcome: str,
    *,
    target: str,
    found: str,
    staging: str = "",
    steps: list[str] | None = None,
    error: str = "",
    seconds: float | None = None,
) -> None:
    """The one structured log line per repair: ``mount repaired``, ``mount
    repair failed``, or ``mount repair impossible`` (nothing was tried)."""
    fields: dict[str, object] = {
        "protocol": spec.protocol,
        "volume_id": request.volume_id,
        "target": target,
        "found": found,
    }
    if staging:
        fields["staging"] = staging
    if steps is not None:
        fields["steps"] = steps
    if seconds is not None:
        fields["seconds"] = round(seconds, 3)
    if error:
        fields["error"] = error
    if outcome == "repaired":
        log.info("mount repaired", **fields)
    else:
        log.warning("mount repair failed" if outcome == "failed" else "mount repair impossible",
                    **fields)  # fmt: skip


async def _not_mounted() -> str:
    return "not mounted"
