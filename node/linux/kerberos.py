"""Kerberos tickets for ``sec=krb5`` mounts on the Linux node, kept fresh.

The kernel does not talk Kerberos itself: for cifs, ``cifs.upcall`` reads the
cache that ``KRB5CCNAME`` names in the ``mount`` process's environment, as
the ``cruid=`` user; for NFS, rpc.gssd reads the cache of the accessing uid
from its search directories (``node/linux/krb5mounts.py``; file layout in
``node/linux/krb5files.py``).  For each identity (a key) the keeper gets
tickets itself (``kinit -k`` from the secret's keytab, or the secret's
cache), prefetches the service tickets (``kvno cifs/<server>@``, ``nfs/``:
the kernel's helpers then need no KDC of their own), rebuilds the cache
halfway to the ticket-granting ticket's end (beside the live one, then a
rename: nobody reads half a cache; caches are renewed with ``kinit -R``
until renew-until), gives fresh tickets on demand for a self-healing
remount (:meth:`TicketKeeper.fresh`), and removes everything at release.

Secrets never appear in argv (files and environment only), in logs or in
error texts: the tools' messages are classified through
``driver.kerberos_reasons`` and never quoted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from driver.ccache import CCache, parse_ccache
from driver.credentials import KerberosCredentials
from driver.errors import DriverError, FailedPrecondition, Internal, Unauthenticated
from driver.log import get_logger
from node.linux import krb5files as files
from node.linux.errors import kdc_error
from node.runner import CommandResult, CommandRunner

log = get_logger("node.kerberos")

# The cruid: a dedicated non-root user with a passwd entry in the node image.
DEFAULT_UID = 10002
# Bound of one kinit/kvno (a KDC that does not answer).
KDC_TIMEOUT = 30.0
# Retry delay after a failed refresh (KDC down), and the shortest wait.
RETRY_DELAY = 30.0
RETRY_FLOOR = 5.0
MIN_DELAY = 1.0
# A ticket-granting ticket with less left than this is not good for a mount.
FRESH_MARGIN = 60.0


@dataclass
class _Entry:
    key: str
    principal: str
    from_keytab: bool
    cache: str  # the live credential cache
    owner: int  # its owner (the cruid, or root for rpc.gssd)
    services: list[str] = field(default_factory=list)  # e.g. cifs/fs1.corp@
    due: float = 0.0  # when to refresh next (clock seconds)
    end: float = 0.0  # the ticket-granting ticket's end
    renew_till: float = 0.0
    warned: bool = False


def _renewable(entry: _Entry, now: float) -> bool:
    """A ticket-granting ticket can be renewed only before it ends."""
    return entry.end > now and entry.renew_till > entry.end


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class TicketKeeper:
    """Credential caches for the kernel's Kerberos helpers, kept fresh."""

    def __init__(
        self,
        runner: CommandRunner,
        directory: str,
        *,
        uid: int = DEFAULT_UID,
        lifetime: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._runner = runner
        self._dir = directory
        self._cc_dir = os.path.join(directory, "cc")
        self._kt_dir = os.path.join(directory, "kt")
        self._uid = uid
        self._lifetime = lifetime  # kinit -l (tests: short tickets)
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._resumed = False

    @property
    def uid(self) -> int:
        return self._uid

    @property
    def directory(self) -> str:
        return self._dir

    def cache_path(self, key: str) -> str:
        """Where a cifs volume's cache lives (owned by the cruid)."""
        return os.path.join(self._cc_dir, key)

    def _file(self, key: str, suffix: str) -> str:
        return os.path.join(self._kt_dir, key + suffix)

    def due(self, key: str) -> float | None:
        entry = self._entries.get(key)
        return entry.due if entry is not None else None

    # -- public ------------------------------------------------------------

    async def acquire(
        self,
        key: str,
        creds: KerberosCredentials,
        server: str,
        *,
        service: str = "cifs",
        cache: str | None = None,
        owner: int | None = None,
    ) -> dict[str, str]:
        """Tickets for ``creds`` in ``key``'s cache (default: the cifs cache
        owned by the cruid), with the ``service/server`` ticket; returns the
        environment that names the cache (``KRB5CCNAME``)."""
        files.check_server(server)
        owner = self._uid if owner is None else owner
        if owner != files.euid() and not files.passwd_entry(owner):
            raise FailedPrecondition(
                f"Kerberos: uid {owner} (the cifs.upcall user, --krb5-uid) has no passwd "
                "entry in the node image; cifs.upcall refuses a uid it cannot look up"
            )
        await self.resume()
        entry = _Entry(
            key,
            creds.principal,
            from_keytab=creds.keytab is not None,
            cache=cache or self.cache_path(key),
            owner=owner,
            services=[f"{service}/{server}@"],
        )
        async with self._lock(key):
            old = self._entries.get(key)
            if old is not None and old.principal == entry.principal and old.cache == entry.cache:
                # One identity for several volumes (NFS): keep their services.
                entry.services = sorted(set(old.services) | set(entry.services))
            try:
                tickets = await self._first_tickets(entry, creds)
            except BaseException:
                # Nothing of an identity that could not get tickets stays behind.
                if old is None:
                    self._entries.pop(key, None)
                    self._remove_files(entry)
                raise
            self._schedule(entry, tickets)
        log.info(
            "kerberos tickets ready",
            principal=entry.principal,
            services=entry.services,
            source="keytab" if entry.from_keytab else "ccache",
            expires=int(entry.end),
        )
        return self.env(entry)

    async def release(self, key: str) -> None:
        """Forget ``key``'s tickets and remove its files."""
        await self.resume()
        async with self._lock(key):
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._remove_files(entry)
            files.remove(self.cache_path(key), *self._meta_files(key))
        self._locks.pop(key, None)

    async def knows(self, key: str) -> bool:
        """Whether ``key`` has tickets here (also after a driver restart)."""
        await self.resume()
        return key in self._entries

    async def principal(self, key: str) -> str | None:
        await self.resume()
        entry = self._entries.get(key)
        return entry.principal if entry is not None else None

    async def fresh(self, key: str) -> dict[str, str]:
        """Tickets good for a new mount now (a self-healing remount): new
        ones from the keytab; for a credential cache, the cache renewed if
        its ticket ended or ends soon.  FailedPrecondition when only a new
        Secret can help (an expired cache that cannot be renewed)."""
        await self.resume()
        async with self._lock(key):
            entry = self._entries.get(key)
            if entry is None:
                raise FailedPrecondition("Kerberos: no tickets are kept for this volume")
            now = self._clock()
            if not entry.from_keytab:
                self._read_times(entry)
                if entry.end <= now + FRESH_MARGIN and not _renewable(entry, now):
                    raise FailedPrecondition(
                        f"Kerberos: the credential cache of {entry.principal} from the "
                        f"node-stage secret expired at {_when(entry.end)} and cannot be "
                        "renewed: a new credential cache Secret (krb5ccache) or a keytab is "
                        "needed; update the secret, then restart the pods that use the "
                        "volume on this node so that it is staged again with it"
                    )
            tickets = await self._build(entry, initial=None)
            self._schedule(entry, tickets)
        log.info("kerberos tickets renewed for a remount", principal=entry.principal)
        return self.env(entry)

    async def refresh_due(self) -> None:
        """Refresh every cache whose time has come (the loop calls this)."""
        now = self._clock()
        for entry in [e for e in self._entries.values() if e.due <= now]:
            async with self._lock(entry.key):
                if self._entries.get(entry.key) is not entry:
                    continue  # released meanwhile
                await self._refresh(entry)

    async def resume(self) -> None:
        """Pick up the identities a previous driver process kept (once)."""
        if self._resumed:
            return
        self._resumed = True
        try:
            names = os.listdir(self._kt_dir)
        except OSError:
            names = []
        for name in names:
            if not name.endswith(".json"):
                continue
            key = name[: -len(".json")]
            entry = self._load(key)
            if entry is not None and key not in self._entries:
                self._entries[key] = entry  # due 0: refreshed at once
                log.info("resuming ticket renewal", principal=entry.principal)
        self._kick()

    def env(self, entry: _Entry) -> dict[str, str]:
        return {"KRB5CCNAME": f"FILE:{entry.cache}"}

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- files -------------------------------------------------------------

    def _meta_files(self, key: str) -> tuple[str, str, str]:
        return (self._file(key, ".keytab"), self._file(key, ".conf"), self._file(key, ".json"))

    def _remove_files(self, entry: _Entry) -> None:
        files.remove(entry.cache, *self._meta_files(entry.key))

    def _load(self, key: str) -> _Entry | None:
        try:
            meta = json.loads(files.read_small(self._file(key, ".json")))
            if "server" in meta:  # written by an earlier version: a cifs volume
                meta.update(cache=self.cache_path(key), owner=self._uid)
                meta["services"] = [f"cifs/{meta['server']}@"]
            return _Entry(
                key,
                str(meta["principal"]),
                from_keytab=bool(meta["keytab"]),
                cache=str(meta["cache"]),
                owner=int(meta["owner"]),
                services=[str(s) for s in meta["services"]],
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def _first_tickets(self, entry: _Entry, creds: KerberosCredentials) -> CCache:
        key = entry.key
        files.prepare_dirs(self._dir, {"kt": files.euid(), "cc": self._uid})
        files.write_private(self._file(key, ".conf"), files.krb5_conf(creds).encode())
        if creds.keytab is not None:
            files.write_private(self._file(key, ".keytab"), creds.keytab)
            tickets = await self._build(entry, initial=None)
        else:
            assert creds.ccache is not None  # noqa: S101 - KerberosCredentials has one of both
            files.remove(self._file(key, ".keytab"))
            tickets = await self._build(entry, initial=creds.ccache)
        meta = {
            "principal": entry.principal,
            "keytab": entry.from_keytab,
            "cache": entry.cache,
            "owner": entry.owner,
            "services": entry.services,
        }
        files.write_private(self._file(key, ".json"), json.dumps(meta).encode())
        return tickets

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _read_times(self, entry: _Entry) -> None:
        try:
            tgt = parse_ccache(files.read_small(entry.cache)).tgt()
        except (OSError, DriverError):
            tgt = None
        entry.end = float(tgt.end) if tgt is not None else 0.0
        entry.renew_till = float(tgt.renew_till) if tgt is not None else 0.0

    # -- tickets -----------------------------------------------------------

    def _env(self, key: str) -> dict[str, str]:
        # Our fragment first (the secret's realm/KDCs), then the node's file.
        return {"KRB5_CONFIG": f"{self._file(key, '.conf')}:{files.NODE_KRB5_CONF}"}

    async def _kdc(self, tool: str, argv: list[str], entry: _Entry) -> CommandResult:
        result = await self._runner.run(argv, timeout=KDC_TIMEOUT, env=self._env(entry.key))
        if not result.ok:
            output = f"{result.stderr} {result.stdout}"
            raise kdc_error(tool, result.returncode, output, entry.principal)
        return result

    async def _build(self, entry: _Entry, *, initial: bytes | None) -> CCache:
        """Make a fresh cache beside the live one and rename it into place.

        ``initial``: the secret's cache bytes (cache identities at acquire);
        None: get tickets from the keytab, or renew the live cache (only
        service tickets when its ticket-granting ticket is still good).
        """
        live = entry.cache
        tmp = f"{live}.{secrets.token_hex(4)}.new"
        cc = f"FILE:{tmp}"
        try:
            if initial is not None:
                files.write_private(tmp, initial)
                self._check_not_expired(parse_ccache(initial), entry)
            elif entry.from_keytab:
                argv = ["kinit", "-k", "-t", self._file(entry.key, ".keytab"), "-c", cc]
                if self._lifetime:
                    argv += ["-l", self._lifetime]
                await self._kdc("kinit", [*argv, entry.principal], entry)
            else:
                files.write_private(tmp, files.read_small(live))
                self._read_times(entry)
                if _renewable(entry, self._clock()):
                    await self._kdc("kinit -R", ["kinit", "-R", "-c", cc], entry)
            for service in entry.services:
                try:
                    # The name the kernel's helper asks for: <service>/<host as
                    # mounted>, realm left to the KDC (no reverse DNS).
                    await self._kdc("kvno", ["kvno", "-c", cc, service], entry)
                except DriverError as exc:
                    if entry.from_keytab:
                        raise
                    # The helper may still reach a KDC through the node's krb5.conf.
                    log.warning("could not prefetch a service ticket", error=exc.message)
            tickets = parse_ccache(files.read_small(tmp))
            os.chmod(tmp, 0o600)  # whatever kinit's umask made it
            files.chown(tmp, entry.owner)
            os.replace(tmp, live)
        except OSError as exc:
            raise Internal(f"Kerberos: cannot write the credential cache: {exc.strerror}") from None
        finally:
            files.remove(tmp)
        return tickets

    def _check_not_expired(self, cache: CCache, entry: _Entry) -> None:
        tgt = cache.tgt()
        if tgt is None or tgt.end <= self._clock():
            raise Unauthenticated(
                f"Kerberos: the credential cache of {entry.principal} has no valid "
                "ticket-granting ticket (expired?): give a fresh one or a keytab"
            )

    def _schedule(self, entry: _Entry, cache: CCache) -> None:
        tgt = cache.tgt()
        now = self._clock()
        end = float(tgt.end) if tgt is not None else now
        entry.end = end
        entry.renew_till = float(tgt.renew_till) if tgt is not None else 0.0
        entry.warned = False
        if entry.from_keytab or entry.renew_till > end:
            entry.due = now + max(MIN_DELAY, (end - now) / 2)
        else:
            # Nothing can extend it: look again when it has expired (to warn).
            entry.due = max(now + MIN_DELAY, end)
        self._entries[entry.key] = entry
        self._kick()

    async def _refresh(self, entry: _Entry) -> None:
        now = self._clock()
        if not entry.from_keytab and entry.end and entry.end <= now:
            if not entry.warned:
                log.warning(
                    "kerberos ticket expired and cannot be renewed: new sessions of the "
                    "volume will fail until it is staged again with a fresh cache (or a keytab)",
                    principal=entry.principal,
                )
                entry.warned = True
            entry.due = float("inf")
            return
        try:
            cache = await self._build(entry, initial=None)
        except DriverError as exc:
            retry = RETRY_DELAY
            if entry.end > now:  # sooner near the end, but not a retry a second
                retry = min(retry, max(RETRY_FLOOR, (entry.end - now) / 2))
            entry.due = now + retry
            log.warning(
                "kerberos ticket refresh failed; retrying",
                principal=entry.principal,
                error=exc.message,
                retry_in=round(retry, 1),
            )
            return
        self._schedule(entry, cache)
        log.info("kerberos tickets refreshed", principal=entry.principal, expires=int(entry.end))

    def _kick(self) -> None:
        if not self._entries:
            return  # nothing to renew: no task (a running one waits for a wake)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._task is None or self._task.done():
            # A clean context: not the log fields of the RPC that started it.
            self._task = loop.create_task(
                self._loop(), name="krb5 renew", context=contextvars.Context()
            )

    async def _loop(self) -> None:
        assert self._wake is not None  # noqa: S101 - set by _kick before the task starts
        while True:
            self._wake.clear()
            await self.refresh_due()
            dues = [e.due for e in self._entries.values()]
            if not dues:
                await self._wake.wait()
                continue
            delay = max(MIN_DELAY, min(dues) - self._clock())
            if delay == float("inf"):
                await self._wake.wait()
                continue
            # Not wait_for: on 3.11 it can swallow a cancel that arrives as
            # the wake event fires, and aclose() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
