"""Kerberos tickets for ``sec=krb5`` cifs mounts on the Linux node.

The kernel does not talk Kerberos itself: at session setup it asks
``cifs.upcall`` (through request-key) for a ticket.  ``cifs.upcall`` switches
to the uid given as ``cruid=`` and to the mounting process's namespaces, and
reads the credential cache named by ``KRB5CCNAME`` in that process's
environment (it ignores ``KRB5CCNAME`` for uid 0).  So each staged volume
gets:

* its own credential cache ``<dir>/cc/<key>`` (``<dir>`` is 0711 root:
  cruid may pass through, nobody may list it), owned by the dedicated
  non-root ``cruid`` (``cc/`` is 0700 and belongs to that uid); only the
  ``mount`` process gets ``KRB5CCNAME`` pointing at it;
* tickets the driver obtains itself: ``kinit -k`` from the secret's keytab
  (kept 0600 in the root-only ``kt/``), or the secret's credential cache;
  then ``kvno`` fetches the ``cifs/<server>`` service ticket into the cache,
  so ``cifs.upcall`` needs no KDC of its own (it reads only /etc/krb5.conf,
  while ``kinit``/``kvno`` also get a per-identity krb5.conf with the
  secret's realm and KDCs);
* renewal while the volume is staged: halfway to the ticket-granting
  ticket's end a fresh cache is built beside the old one and renamed over
  it (``cifs.upcall`` never reads half a cache); keytab volumes get new
  tickets, cache volumes are renewed (``kinit -R``) until renew-until;
* removal of all of it at unstage (or when the mount fails).

``<key>`` is derived from the staging path.  A small JSON file per volume in
``kt/`` (no secret in it) lets a restarted driver resume renewing.
Secrets never appear in argv (files and environment only) or in logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from driver.ccache import CCache, parse_ccache
from driver.credentials import KerberosCredentials
from driver.errors import (
    DriverError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
)
from driver.log import get_logger
from node.runner import CommandResult, CommandRunner

log = get_logger("node.kerberos")

# The cruid: a dedicated non-root user with a passwd entry in the node image.
DEFAULT_UID = 10002
# Not below the credentials-file dir (/run/csi-smb-nfs is 0700 root): the
# cruid must be able to reach cc/.  On tmpfs: tickets never touch a disk.
KRB5_DIR = "/run/csi-smb-nfs-krb5"
# Bound of one kinit/kvno (a KDC that does not answer).
KDC_TIMEOUT = 30.0
# Retry delay after a failed refresh (KDC down), and the shortest wait.
RETRY_DELAY = 30.0
MIN_DELAY = 1.0
_NODE_KRB5_CONF = "/etc/krb5.conf"
# kinit/kvno messages worth classifying (MIT's texts, LC_ALL=C).
_AUTH_FAILURES = (
    "preauthentication failed",
    "password incorrect",
    "key table entry not found",
    "client not found",
    "clients credentials have been revoked",
    "client's credentials have been revoked",
    "ticket expired",
    "no key table entry",
    "keytab contains no suitable keys",
    "decrypt integrity check failed",
)
_UNREACHABLE = ("cannot find kdc", "cannot contact any kdc", "unable to reach any kdc")
_NO_SERVICE = ("server not found in kerberos database",)


if sys.platform == "win32":  # type-checked only: this module runs on Linux

    def _passwd_entry(uid: int) -> bool:
        return False

    def _chown(path: str, uid: int) -> None:
        raise Internal("chown is Linux only")

    def _euid() -> int:
        return 0

else:
    import pwd

    def _passwd_entry(uid: int) -> bool:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return False
        return True

    def _chown(path: str, uid: int) -> None:
        os.chown(path, uid, -1)

    def _euid() -> int:
        return os.geteuid()


def _read(path: str) -> bytes:
    """Small files on a tmpfs: reading them does not block the loop."""
    with open(path, "rb") as f:
        return f.read()


def volume_key(staging_path: str) -> str:
    return hashlib.sha256(staging_path.encode()).hexdigest()[:24]


def krb5_conf(creds: KerberosCredentials) -> str:
    """The per-identity krb5.conf fragment (realm and KDCs are validated by
    ``driver.credentials``, so nothing here can break out of its line)."""
    lines = ["[libdefaults]", f"    default_realm = {creds.realm}"]
    if creds.kdcs:
        lines += ["    dns_lookup_kdc = false", "[realms]", f"    {creds.realm} = {{"]
        lines += [f"        kdc = {kdc}" for kdc in creds.kdcs]
        lines += ["    }"]
    return "\n".join(lines) + "\n"


def kdc_error(tool: str, result: CommandResult, principal: str) -> DriverError:
    """Map a failed kinit/kvno to a domain error that quotes the KDC's reason."""
    text = " ".join((result.stderr or result.stdout).split())[-400:]
    low = text.lower()
    message = f"Kerberos: {tool} for {principal} failed: {text or f'exit {result.returncode}'}"
    if any(s in low for s in _AUTH_FAILURES):
        return Unauthenticated(message + " (check the keytab or credential cache in the secret)")
    if any(s in low for s in _NO_SERVICE):
        return FailedPrecondition(
            message + " (the file server has no cifs/<name> service principal under the name "
            "in source: use the name it is registered with in the directory)"
        )
    if any(s in low for s in _UNREACHABLE):
        return Unavailable(message + " (set the secret's kdc key or the chart's krb5 values)")
    return Internal(message)


@dataclass
class _Entry:
    key: str
    principal: str
    server: str
    from_keytab: bool
    due: float = 0.0  # when to refresh next (clock seconds)
    end: float = 0.0  # the ticket-granting ticket's end
    warned: bool = False


class TicketKeeper:
    """Per-volume credential caches for cifs.upcall, kept fresh."""

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

    def cache_path(self, key: str) -> str:
        return os.path.join(self._cc_dir, key)

    def _file(self, key: str, suffix: str) -> str:
        return os.path.join(self._kt_dir, key + suffix)

    def due(self, key: str) -> float | None:
        entry = self._entries.get(key)
        return entry.due if entry is not None else None

    # -- public ------------------------------------------------------------

    async def acquire(self, key: str, creds: KerberosCredentials, server: str) -> dict[str, str]:
        """Tickets for ``creds`` in the volume's cache; returns the mount's
        environment (``KRB5CCNAME``)."""
        self._check_server(server)
        if not _passwd_entry(self._uid):
            raise FailedPrecondition(
                f"Kerberos: uid {self._uid} (the cifs.upcall user, --krb5-uid) has no passwd "
                "entry in the node image; cifs.upcall refuses a uid it cannot look up"
            )
        await self.resume()
        entry = _Entry(key, creds.principal, server, from_keytab=creds.keytab is not None)
        async with self._lock(key):
            try:
                cache = await self._first_tickets(entry, creds)
            except BaseException:
                # Nothing of a volume that could not get tickets stays behind.
                self._entries.pop(key, None)
                self._remove_files(key)
                raise
            self._schedule(entry, cache)
        log.info(
            "kerberos tickets ready",
            principal=entry.principal,
            server=server,
            source="keytab" if entry.from_keytab else "ccache",
            expires=int(entry.end),
        )
        return {"KRB5CCNAME": f"FILE:{self.cache_path(key)}"}

    async def release(self, key: str) -> None:
        """Forget the volume's tickets and remove its files."""
        async with self._lock(key):
            self._entries.pop(key, None)
            self._remove_files(key)
        self._locks.pop(key, None)

    async def refresh_due(self) -> None:
        """Refresh every cache whose time has come (the loop calls this)."""
        now = self._clock()
        for entry in [e for e in self._entries.values() if e.due <= now]:
            async with self._lock(entry.key):
                if self._entries.get(entry.key) is not entry:
                    continue  # released meanwhile
                await self._refresh(entry)

    async def resume(self) -> None:
        """Pick up the volumes a previous driver process staged (once)."""
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
            try:
                meta = json.loads(_read(self._file(key, ".json")))
                entry = _Entry(
                    key, str(meta["principal"]), str(meta["server"]), bool(meta["keytab"])
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if key not in self._entries:
                self._entries[key] = entry  # due 0: refreshed at once
                log.info("resuming ticket renewal", principal=entry.principal, server=entry.server)
        self._kick()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- internals ---------------------------------------------------------

    async def _first_tickets(self, entry: _Entry, creds: KerberosCredentials) -> CCache:
        key = entry.key
        self._prepare_dirs()
        self._write_private(self._file(key, ".conf"), krb5_conf(creds).encode())
        if creds.keytab is not None:
            self._write_private(self._file(key, ".keytab"), creds.keytab)
            cache = await self._build(entry, initial=None)
        else:
            assert creds.ccache is not None  # noqa: S101 - KerberosCredentials has one of both
            cache = await self._build(entry, initial=creds.ccache)
        meta = {"principal": entry.principal, "server": entry.server, "keytab": entry.from_keytab}
        self._write_private(self._file(key, ".json"), json.dumps(meta).encode())
        return cache

    def _remove_files(self, key: str) -> None:
        for path in (
            self.cache_path(key),
            self._file(key, ".keytab"),
            self._file(key, ".conf"),
            self._file(key, ".json"),
        ):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    @staticmethod
    def _check_server(server: str) -> None:
        if not server or server.replace(".", "").isdigit() or ":" in server:
            raise InvalidArgument(
                "Kerberos needs the file server's host name in source (tickets are issued for "
                f"cifs/<host name>), not the address {server!r}"
            )

    def _prepare_dirs(self) -> None:
        try:
            os.makedirs(self._dir, mode=0o711, exist_ok=True)
            st = os.lstat(self._dir)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != _euid():
                raise Internal(f"{self._dir} is not a directory owned by the driver")
            if stat.S_IMODE(st.st_mode) != 0o711:
                os.chmod(self._dir, 0o711)  # noqa: S103 - traversable, not listable: cc/ is 0700
            for path, owner in ((self._kt_dir, 0), (self._cc_dir, self._uid)):
                os.makedirs(path, mode=0o700, exist_ok=True)
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    raise Internal(f"{path} is not a directory")
                if st.st_uid != owner:
                    _chown(path, owner)
                if stat.S_IMODE(st.st_mode) != 0o700:
                    os.chmod(path, 0o700)
        except OSError as exc:
            raise Internal(f"Kerberos: cannot prepare {self._dir}: {exc.strerror}") from None

    @staticmethod
    def _write_private(path: str, data: bytes, *, owner: int | None = None) -> None:
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(tmp, flags, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                if owner is not None:
                    _chown(tmp, owner)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise Internal(f"Kerberos: cannot write {path}: {exc.strerror}") from None

    def _env(self, key: str) -> dict[str, str]:
        # Our fragment first (the secret's realm/KDCs), then the node's file.
        return {"KRB5_CONFIG": f"{self._file(key, '.conf')}:{_NODE_KRB5_CONF}"}

    async def _kdc(self, tool: str, argv: list[str], entry: _Entry) -> CommandResult:
        result = await self._runner.run(argv, timeout=KDC_TIMEOUT, env=self._env(entry.key))
        if not result.ok:
            raise kdc_error(tool, result, entry.principal)
        return result

    async def _build(self, entry: _Entry, *, initial: bytes | None) -> CCache:
        """Make a fresh cache beside the live one and rename it into place.

        ``initial``: the secret's cache bytes (cache volumes at acquire);
        None: get tickets from the keytab, or renew the live cache.
        """
        live = self.cache_path(entry.key)
        tmp = f"{live}.{secrets.token_hex(4)}.new"
        cc = f"FILE:{tmp}"
        try:
            if initial is not None:
                self._write_private(tmp, initial)
                self._check_not_expired(parse_ccache(initial), entry)
            elif entry.from_keytab:
                argv = ["kinit", "-k", "-t", self._file(entry.key, ".keytab"), "-c", cc]
                if self._lifetime:
                    argv += ["-l", self._lifetime]
                await self._kdc("kinit", [*argv, entry.principal], entry)
            else:
                self._write_private(tmp, _read(live))
                await self._kdc("kinit -R", ["kinit", "-R", "-c", cc], entry)
            try:
                # The name cifs.upcall asks for: cifs/<host as mounted>, realm
                # left to the KDC (no reverse-DNS canonicalisation).
                await self._kdc("kvno", ["kvno", "-c", cc, f"cifs/{entry.server}@"], entry)
            except DriverError as exc:
                if entry.from_keytab:
                    raise
                # cifs.upcall may still reach a KDC through the node's krb5.conf.
                log.warning("could not prefetch the cifs service ticket", error=exc.message)
            cache = parse_ccache(_read(tmp))
            os.chmod(tmp, 0o600)  # whatever kinit's umask made it
            _chown(tmp, self._uid)
            os.replace(tmp, live)
        except OSError as exc:
            raise Internal(f"Kerberos: cannot write the credential cache: {exc.strerror}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return cache

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
        if entry.from_keytab or (tgt is not None and tgt.renew_till > end):
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
                    "kerberos ticket expired and cannot be renewed: new SMB sessions of the "
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
            if entry.end > now:
                retry = min(retry, max(MIN_DELAY, (entry.end - now) / 2))
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
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="krb5 renew")

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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
