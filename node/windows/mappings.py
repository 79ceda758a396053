r"""SMB global mappings of share roots, through PowerShell.

One mapping per share root ``\\server\share``, whatever the number of volumes
on it.  This module asks for a mapping's state, creates and removes
mappings, and keeps a short-lived status per share for NodeGetVolumeStats so
that many volumes of one dead share cannot fill the PowerShell slots that
stage and unstage need.

A mapping serves every volume of its share, and pods of other volumes run on
it: it is removed and re-created only when Windows itself says it is broken
(``Get-SmbGlobalMapping`` Status ``Disconnected`` or ``Unavailable``).  A
path that does not answer says nothing about the mapping: the account may see
only its own folders (no rights on the share root, access-based enumeration),
or the network blinked.  Transient states (``Connecting``, ``Reconnecting``)
and ``Paused`` / ``NetworkError`` are left to the SMB client to resolve; the
probe of the volume's own directory decides whether a stage can go on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from driver.aio import SingleFlight
from driver.credentials import Credentials
from driver.errors import AlreadyExists, DriverError
from driver.log import get_logger
from node.powershell import PowerShell
from node.windows.paths import path_key, smb_user
from node.windows.scripts import (
    ENV_PASSWORD,
    ENV_REMOTE_PATH,
    ENV_REQUIRE_PRIVACY,
    ENV_USER,
    OP_GET_MAPPING,
    OP_NEW_MAPPING,
    OP_REMOVE_MAPPING,
    SCRIPTS,
)
from node.windows.settings import WindowsSettings

log = get_logger("node.windows")


# Statuses (SmbConnectionStatus) after which a mapping is removed and made again.
STALE_STATUSES = frozenset({"Disconnected", "Unavailable"})


@dataclass(frozen=True, slots=True)
class MappingState:
    exists: bool
    status: str
    privacy: bool | None

    @property
    def ok(self) -> bool:
        return self.exists and self.status == "OK"

    @property
    def stale(self) -> bool:
        """Present but broken for good: re-create it (the only reason to)."""
        return self.exists and self.status in STALE_STATUSES


class ShareMappings:
    """State, creation and removal of global mappings, plus the stats cache."""

    def __init__(
        self,
        powershell: PowerShell,
        settings: WindowsSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.powershell = powershell
        self.settings = settings
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        # Mapping status for stats, per share root key: (when, problem or None).
        self._status: dict[str, tuple[float, str | None]] = {}
        self._queries: SingleFlight[str, str | None] = SingleFlight()  # root key → lookup
        # Shares found unmapped at start (a node restart): mapped again only by
        # a NodeStageVolume, the one call that carries credentials.
        self._awaiting: set[str] = set()

    def lock(self, root: str) -> asyncio.Lock:
        """The lock serialising stage/unstage work on one share."""
        return self._locks.setdefault(path_key(root), asyncio.Lock())

    def await_credentials(self, root: str) -> None:
        """``root`` was found unmapped at start: say so in stats until it is mapped."""
        self._awaiting.add(path_key(root))

    async def state(self, root: str, *, time_limit: float) -> MappingState:
        result = await self._run(
            OP_GET_MAPPING, {ENV_REMOTE_PATH: root}, what=f"checking {root}", time_limit=time_limit
        )
        privacy = result.get("privacy")
        return MappingState(
            exists=bool(result.get("exists")),
            status=str(result.get("status") or ""),
            privacy=privacy if isinstance(privacy, bool) else None,
        )

    async def ensure(self, root: str, credentials: Credentials, host: str, privacy: bool) -> None:
        """Map ``root`` unless mapped; re-create only a stale mapping."""
        state = await self.state(root, time_limit=self.settings.map_timeout)
        if state.exists and not state.stale:
            if privacy and state.privacy is False:
                log.warning(
                    "the share's existing global mapping does not require privacy (encryption); "
                    "it is re-created without that gap once its last volume is unstaged",
                    share=root,
                )
            if not state.ok:
                log.warning(
                    "the share's global mapping is not OK; kept for the SMB client to recover "
                    "(only Disconnected or Unavailable mappings are re-created)",
                    share=root,
                    status=state.status,
                )
            if state.ok:
                self._awaiting.discard(path_key(root))
            self._status.pop(path_key(root), None)  # stats look again when they need to
            return
        if state.exists:
            log.warning("re-creating a stale SMB global mapping", share=root, status=state.status)
            await self.remove(root)
        inputs = {
            ENV_REMOTE_PATH: root,
            ENV_USER: smb_user(credentials, host),
            ENV_PASSWORD: credentials.password,
            ENV_REQUIRE_PRIVACY: "true" if privacy else "false",
        }
        try:
            await self._run(
                OP_NEW_MAPPING, inputs, what=f"mapping {root}", secrets=[credentials.password]
            )
        except AlreadyExists:
            # Someone else mapped it in between: fine if it works.
            if not (await self.state(root, time_limit=self.settings.map_timeout)).ok:
                raise
        self._status.pop(path_key(root), None)
        self._awaiting.discard(path_key(root))
        log.info("mapped share", share=root, user=smb_user(credentials, host), privacy=privacy)

    async def remove(self, root: str) -> None:
        await self._run(OP_REMOVE_MAPPING, {ENV_REMOTE_PATH: root}, what="unmap")
        self._status.pop(path_key(root), None)

    async def problem(self, root: str) -> str | None:
        """What is wrong with the share's mapping (None: status OK), asked
        when a volume of the share did not answer.

        Bounded in PowerShell: a status found is reused for
        ``status_retry``, and one lookup per share at a time serves every
        caller, so many volumes on a dead share cannot fill the PowerShell
        slots that stage and unstage need.
        """
        key = path_key(root)
        cached = self._status.get(key)
        if cached is not None:
            when, problem = cached
            if self._clock() - when < self.settings.status_retry:
                return problem
        return await self._queries.run(key, lambda: self._query_status(root))

    def close(self) -> None:
        self._queries.cancel_all()

    async def _query_status(self, root: str) -> str | None:
        try:
            state = await self.state(root, time_limit=self.settings.status_timeout)
        except DriverError as exc:
            problem: str | None = f"status unknown ({exc.message})"
        else:
            problem = _status_problem(state)
            if problem is not None and path_key(root) in self._awaiting:
                problem += (
                    "; not mapped again since the driver started (node restart?): the next "
                    "NodeStageVolume of a volume of this share maps it with its credentials"
                )
        self._status[path_key(root)] = (self._clock(), problem)
        return problem

    async def _run(
        self,
        op: str,
        inputs: dict[str, str],
        *,
        what: str,
        secrets: Iterable[str] = (),
        time_limit: float | None = None,
    ) -> dict[str, object]:
        return await self.powershell.run(
            op, SCRIPTS[op], env=inputs, secrets=secrets, time_limit=time_limit, what=what
        )


def _status_problem(state: MappingState) -> str | None:
    if state.ok:
        return None
    if not state.exists:
        return "no mapping (stage the volume again)"
    return f"status {state.status}"
