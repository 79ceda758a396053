"""One SMB backend per share and identity, one channel per identity.

``controller.pools`` hands SMB volumes to an :class:`SmbBackendPool` whose
channels run in the worker process (``controller.smb.worker``); tests and
tools may let them run in this process's threads.
"""

from __future__ import annotations

import asyncio

from controller.smb.backend import SmbBackend
from controller.smb.channel import Channel, ChannelMaker, ThreadChannels
from controller.smb.connection import CredentialKey, SmbSettings, check_name, credential_key
from controller.smb.kerberos import KerberosLogon
from driver.credentials import KerberosCredentials, SmbAuth

__all__ = ["SmbBackendPool"]


class SmbBackendPool:
    """Hands out one backend per (server, port, credentials, share).

    Backends of the same credential key share one channel: one TCP connection,
    one session, one set of slots and threads.  ``get`` is cheap when cached.
    A changed password is a new key; the old key's connection lives until
    :meth:`aclose`.
    """

    def __init__(
        self,
        settings: SmbSettings | None = None,
        *,
        channels: ChannelMaker | None = None,
        ticket_lifetime: str | None = None,
    ) -> None:
        """``ticket_lifetime``: of the Kerberos tickets the pool asks for (tests)."""
        self._settings = settings or SmbSettings()
        self._ticket_lifetime = ticket_lifetime
        # Where the steps run: this process's threads unless told (the
        # controller passes controller.smb.worker.SmbWorker).
        self._maker = channels or ThreadChannels()
        self._channels: dict[CredentialKey, Channel] = {}
        self._backends: dict[tuple[CredentialKey, str], SmbBackend] = {}

    def __repr__(self) -> str:
        return f"SmbBackendPool({len(self._channels)} connections, {len(self._backends)} shares)"

    def __len__(self) -> int:
        return len(self._backends)

    @property
    def keys(self) -> list[CredentialKey]:
        return list(self._channels)

    def get(self, server: str, port: int, share: str, creds: SmbAuth) -> SmbBackend:
        """The backend for ``share`` as ``creds`` (a password or Kerberos)."""
        key = credential_key(server, port, creds)
        share = check_name("share", share)
        backend = self._backends.get((key, share.lower()))
        if backend is not None:
            return backend
        channel = self._channels.get(key)
        if channel is None:
            if isinstance(creds, KerberosCredentials):
                logon = KerberosLogon.from_credentials(creds, lifetime=self._ticket_lifetime)
                channel = self._maker.channel(key, "", self._settings, logon)
            else:
                channel = self._maker.channel(key, creds.password, self._settings)
            self._channels[key] = channel
        backend = SmbBackend.on_channel(channel, share)
        self._backends[(key, share.lower())] = backend
        return backend

    def cached(self, server: str, port: int, share: str) -> SmbBackend | None:
        """A backend already handed out for this share (any identity), if any."""
        server, share = server.lower(), share.lower()
        for (key, name), backend in reversed(self._backends.items()):
            if key.server == server and key.port == port and name == share:
                return backend
        return None

    async def aclose(self) -> None:
        """Close every connection; the pool can be used again afterwards."""
        channels = list(self._channels.values())
        self._channels.clear()
        self._backends.clear()
        await asyncio.gather(*(channel.aclose() for channel in channels))
        await self._maker.aclose()
