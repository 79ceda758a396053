"""The blocking side of an SMB channel: one credential key's connection.

A :class:`Connection` is one private smbclient connection cache (see
``controller.smb.channel`` for why one per credential key), its warm-up
lock, its threads and its reconnect rule; it runs steps in the calling
thread and hands out raw library exceptions, scrubbed into domain errors by
:meth:`Connection.scrub`.  The thread channel (``channel``) and the worker
process (``worker``) both drive steps through one.  ``SmbSettings`` and
``CredentialKey`` say what bounds and identifies a connection.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import smbclient
from smbprotocol.exceptions import SMBConnectionClosed, SMBResponseException

from controller.smb.errors import Status, detach, ntstatus
from controller.smb.kerberos import KerberosLogon
from driver.credentials import KerberosCredentials, SmbAuth
from driver.errors import DriverError, InvalidArgument
from driver.log import get_logger
from driver.retry import on_broken_connection

if TYPE_CHECKING:
    from controller.smb.steps import Step

__all__ = [
    "Connection",
    "CredentialKey",
    "Secret",
    "SmbSettings",
    "check_name",
    "credential_key",
    "password_digest",
]

T = TypeVar("T")
log = get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class SmbSettings:
    """Limits and timeouts of one SMB connection (one credential key)."""

    max_in_flight: int = 8
    """Operations in flight per connection; also the size of its thread pool."""
    op_timeout: float = 30.0
    """Seconds for one SMB step, waiting for a free slot included."""
    connect_timeout: float = 10.0
    """Seconds for the TCP connect (smbprotocol ``connection_timeout``)."""
    close_timeout: float = 2.0
    """Seconds ``aclose`` waits for a polite logoff before cutting the sockets."""
    auth_protocol: Literal["negotiate", "ntlm", "kerberos"] = "negotiate"
    encrypt: bool | None = None
    """None: as the server requires; True: insist on SMB3 encryption."""
    require_signing: bool = True

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            msg = "max_in_flight must be at least 1"
            raise ValueError(msg)
        if min(self.op_timeout, self.connect_timeout, self.close_timeout) <= 0:
            msg = "timeouts must be positive"
            raise ValueError(msg)


# A per-process random key: digests identify a password inside this process
# only, cannot be compared across processes and cannot be brute-forced from a log.
_DIGEST_KEY: Final = secrets.token_bytes(32)


def password_digest(password: str) -> str:
    return hashlib.blake2b(
        password.encode("utf-8", "surrogatepass"), key=_DIGEST_KEY, digest_size=16
    ).hexdigest()


@dataclass(frozen=True, slots=True)
class CredentialKey:
    """What one private connection cache is keyed by (safe to log)."""

    server: str
    port: int
    domain: str | None
    username: str
    password_digest: str


def check_name(what: str, value: str) -> str:
    """A server, share or user name: not empty, no separators or NUL, not padded."""
    if not value or any(c in value for c in "\\/\x00") or value.strip() != value:
        msg = f"invalid SMB {what} {value!r}"
        raise InvalidArgument(msg)
    return value


def credential_key(server: str, port: int, creds: SmbAuth) -> CredentialKey:
    """The key of the connection cache ``creds`` log on through (safe to log)."""
    check_name("server", server)
    if not 0 < port < 65536:
        msg = f"invalid SMB port {port}"
        raise InvalidArgument(msg)
    if isinstance(creds, KerberosCredentials):
        # A new keytab or cache is a new key (like a changed password).
        material = creds.keytab if creds.keytab is not None else creds.ccache or b""
        return CredentialKey(
            server=server.lower(),
            port=port,
            domain=None,
            username=creds.principal,
            password_digest="krb5:" + password_digest(material.hex()),
        )
    check_name("user name", creds.username)
    if not creds.password:
        msg = "an SMB password is required"
        raise InvalidArgument(msg)
    return CredentialKey(
        server=server.lower(),
        port=port,
        domain=creds.domain or None,
        username=creds.username,
        password_digest=password_digest(creds.password),
    )


class Secret:
    """A password that does not show up in repr()/str() or pickles."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__

    def __reduce__(self) -> str:
        msg = "a secret cannot be pickled"
        raise TypeError(msg)


class Connection:
    """Private connection cache, warm-up lock and threads of one credential key."""

    def __init__(
        self,
        key: CredentialKey,
        password: str,
        settings: SmbSettings,
        kerberos: KerberosLogon | None = None,
    ) -> None:
        self.key = key
        self.settings = settings
        self._password = Secret(password)
        self._kerberos = kerberos
        # With Kerberos: pyspnego's credential object (made in an SMB thread).
        self._name = f"{key.domain}\\{key.username}" if key.domain else key.username
        self._user: Any = self._name
        self._conn_key = f"{key.server.lower()}:{key.port}"
        self._cache: dict[str, Any] = {}
        self._warm_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._generation = 0

    def __repr__(self) -> str:
        return f"Connection({self.key.username}@{self.key.server}:{self.key.port})"

    def _kwargs(self) -> dict[str, Any]:
        """smbclient keyword arguments; built in the worker thread, never stored."""
        kerberos = self._kerberos is not None
        return {
            "username": self._user,
            "password": None if kerberos else self._password.reveal(),
            "port": self.key.port,
            "connection_cache": self._cache,
            "connection_timeout": self.settings.connect_timeout,
            "auth_protocol": "kerberos" if kerberos else self.settings.auth_protocol,
            "encrypt": self.settings.encrypt,
            "require_signing": self.settings.require_signing,
        }

    def _ready(self, share_unc: str) -> bool:
        conn = self._cache.get(self._conn_key)
        if conn is None or not conn.transport.connected:
            return False
        wanted = share_unc.lower()
        for session in list(conn.session_table.values()):
            if session.username == self._user:
                return any(
                    t.share_name.lower() == wanted
                    for t in list(session.tree_connect_table.values())
                )
        return False

    def _drop_dead(self) -> None:
        conn = self._cache.get(self._conn_key)
        if conn is not None and not conn.transport.connected:
            self._cache.pop(self._conn_key, None)
            try:
                conn.disconnect(close=False)
            except Exception:
                log.debug("closing a dead SMB connection failed", exc_info=True)

    def _log_on_again(self, exc: BaseException, generation: int, share_unc: str) -> None:
        """A Kerberos session ends when its ticket does: a new logon gets fresh
        tickets.  Anything else is re-raised.  (smbclient raises it as
        SMBOSError, smbprotocol as SMBResponseException.)"""
        if ntstatus(exc) != Status.NETWORK_SESSION_EXPIRED or generation != self._generation:
            raise exc
        log.info("SMB session expired; logging on again", server=self.key.server)
        self._drop_connection()
        self._warm_up(share_unc)

    def _drop_connection(self) -> None:
        conn = self._cache.pop(self._conn_key, None)
        if conn is not None:
            try:
                conn.disconnect(close=True)
            except Exception:
                log.debug("closing an expired SMB connection failed", exc_info=True)

    def _warm_up(self, share_unc: str) -> None:
        """Connection, session and tree connect, opened by one thread at a time."""
        if self._ready(share_unc):
            return
        if not self._warm_lock.acquire(timeout=self.settings.op_timeout):
            msg = "waited too long for another thread to open the SMB session"
            raise TimeoutError(msg)
        try:
            if self._ready(share_unc):
                return
            self._drop_dead()
            if self._kerberos is not None and isinstance(self._user, str):
                self._user = self._kerberos.credential()
            kw = self._kwargs()
            smbclient.register_session(
                self.key.server,
                username=kw["username"],
                password=kw["password"],
                port=self.key.port,
                encrypt=self.settings.encrypt,
                connection_timeout=self.settings.connect_timeout,
                connection_cache=self._cache,
                auth_protocol=kw["auth_protocol"],
                require_signing=self.settings.require_signing,
            )
            # The tree connect; it also tells a missing share apart early.
            smbclient.stat(share_unc, **kw)
            log.debug(
                "SMB session ready",
                user=self.key.username,
                server=self.key.server,
                port=self.key.port,
                share=share_unc,
            )
        finally:
            self._warm_lock.release()

    def call(self, share_unc: str, step: Step[T], args: tuple[Any, ...], *, retry: bool) -> T:
        """Run ``step`` in the calling thread (raw library exceptions)."""
        generation = self._generation
        try:
            self._warm_up(share_unc)
        except (SMBResponseException, OSError) as exc:
            # (a tree connect on a session that has expired meanwhile)
            self._log_on_again(exc, generation, share_unc)

        def once() -> T:
            try:
                return step.fn(*args, **self._kwargs())
            except (SMBResponseException, OSError) as exc:
                # The server refused the request before acting on it: even a
                # rename may repeat.
                self._log_on_again(exc, generation, share_unc)
                return step.fn(*args, **self._kwargs())

        def broken(exc: Exception) -> bool:
            # Not while the connection is being closed on purpose.
            return isinstance(exc, SMBConnectionClosed) and generation == self._generation

        def reconnect(_: Exception) -> None:
            log.info(
                "SMB connection was closed; reconnecting",
                server=self.key.server,
                port=self.key.port,
            )
            self._warm_up(share_unc)  # drops the dead connection under the lock

        policy = on_broken_connection(idempotent=retry)
        return policy.run(once, retry_if=broken, before_retry=reconnect)

    def start(
        self, share_unc: str, step: Step[T], args: tuple[Any, ...], *, retry: bool
    ) -> Future[T]:
        """Run ``step`` in this connection's threads; the future has the raw outcome."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.settings.max_in_flight,
                thread_name_prefix=f"smb-{self.key.server}:{self.key.port}",
            )
        return self._executor.submit(self.call, share_unc, step, args, retry=retry)

    def scrub(self, exc: BaseException, op: str, path: str) -> DriverError:
        """``exc`` as a domain error that holds no trace of the password."""
        return detach(exc, op, path, self._password.reveal() or _kerberos_text(self._kerberos))

    def close(self) -> None:
        """Log off within ``close_timeout``, then cut the sockets (blocking).

        Best effort against concurrency: a step that is opening a connection at
        this very moment may leave it open until the next close.
        """
        self._generation += 1
        executor, self._executor = self._executor, None
        connections = list(self._cache.values())
        self._cache.clear()
        if connections:
            done = threading.Event()

            def polite() -> None:
                for conn in connections:
                    try:
                        conn.disconnect(close=True)
                    except Exception:
                        log.debug("SMB logoff failed", exc_info=True)
                        _cut(conn)
                done.set()

            # Daemon threads: a hung server must not keep the process alive.
            threading.Thread(target=polite, name="smb-close", daemon=True).start()
            if not done.wait(self.settings.close_timeout):
                log.warning(
                    "SMB server did not answer the logoff; closing the sockets",
                    server=self.key.server,
                    port=self.key.port,
                )
                for conn in connections:
                    threading.Thread(target=_cut, args=(conn,), name="smb-cut", daemon=True).start()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if self._kerberos is not None:
            self._kerberos.forget()
            self._user = self._name  # a later warm-up makes the credential again


def _kerberos_text(logon: KerberosLogon | None) -> str:
    return logon.secret_texts()[0] if logon is not None else ""


def _cut(conn: Any) -> None:
    """Shut the socket down: wakes every thread waiting on this connection."""
    try:
        conn.transport.close()
    except Exception:
        log.debug("closing an SMB socket failed", exc_info=True)
