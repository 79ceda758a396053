r"""SMB global mappings of share roots, through PowerShell.

One mapping per share root ``\\server\share``, whatever the number of volumes
on it.  This module asks for a mapping's state, creates and removes
mappings, and keeps a short-lived status per share for NodeGetVolumeStats so
that many volumes of one dead share cannot fill the PowerShell slots that
stage and unstage need.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class MappingState:
    exists: bool
    status: str
    reachable: bool
    privacy: bool | None

    @property
    def healthy(self) -> bool:
        return self.exists and self.status == "OK" and self.reachable


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
        self._queries: dict[str, asyncio.Task[str | None]] = {}

    def lock(self, root: str) -> asyncio.Lock:
        """The lock serialising stage/unstage work on one share."""
        return self._locks.setdefault(path_key(root), asyncio.Lock())

    async def state(self, root: str, *, time_limit: float) -> MappingState:
        result = await self._run(
            OP_GET_MAPPING, {ENV_REMOTE_PATH: root}, what=f"checking {root}", time_limit=time_limit
        )
        privacy = result.get("privacy")
        return MappingState(
            exists=bool(result.get("exists")),
            status=str(result.get("status") or ""),
            reachable=bool(result.get("reachable")),
            privacy=privacy if isinstance(privacy, bool) else None,
        )

    async def ensure(self, root: str, credentials: Credentials, host: str, privacy: bool) -> None:
        """Map ``root`` unless a healthy mapping exists; replace an unhealthy one."""
        state = await self.state(root, time_limit=self.settings.map_timeout)
        if state.healthy:
            if privacy and state.privacy is False:
                log.warning(
                    "the share's existing global mapping does not require privacy (encryption); "
                    "it is re-created without that gap once its last volume is unstaged",
                    share=root,
                )
            self._status[path_key(root)] = (self._clock(), None)
            return
        if state.exists:
            log.warning(
                "re-creating an unhealthy SMB global mapping",
                share=root,
                status=state.status,
                reachable=state.reachable,
            )
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
            if not (await self.state(root, time_limit=self.settings.map_timeout)).healthy:
                raise
        self._status[path_key(root)] = (self._clock(), None)
        log.info("mapped share", share=root, user=smb_user(credentials, host), privacy=privacy)

    async def remove(self, root: str) -> None:
        await self._run(OP_REMOVE_MAPPING, {ENV_REMOTE_PATH: root}, what="unmap")
        self._status.pop(path_key(root), None)

    async def problem(self, root: str, *, recheck_ok: bool = False) -> str | None:
        """What is wrong with the share's mapping (None: nothing), for stats.

        Bounded in PowerShell: a result is reused (OK for ``status_ttl``, a
        problem for ``status_retry``; ``recheck_ok`` distrusts a cached OK),
        and one lookup per share at a time serves every caller, so many
        volumes on a dead share cannot fill the PowerShell slots that stage
        and unstage need.
        """
        key = path_key(root)
        cached = self._status.get(key)
        if cached is not None:
            when, problem = cached
            ttl = self.settings.status_ttl if problem is None else self.settings.status_retry
            if self._clock() - when < ttl and not (recheck_ok and problem is None):
                return problem
        query = self._queries.get(key)
        if query is None:
            query = asyncio.ensure_future(self._query_status(root))
            self._queries[key] = query
            query.add_done_callback(lambda _q: self._queries.pop(key, None))
        return await asyncio.shield(query)

    def close(self) -> None:
        for task in self._queries.values():
            task.cancel()

    async def _query_status(self, root: str) -> str | None:
        try:
            state = await self.state(root, time_limit=self.settings.status_timeout)
        except DriverError as exc:
            problem: str | None = f"status unknown ({exc.message})"
        else:
            if state.healthy:
                problem = None
            elif not state.exists:
                problem = "no mapping (stage the volume again)"
            elif state.status != "OK":
                problem = f"status {state.status}"
            else:
                problem = "status OK but the share does not answer"
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
