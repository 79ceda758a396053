"""The session's Samba (tests/servers/samba.py), running and answering; backends
closed after each test; per module, the errors provoked are checked for secrets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from controller.smb.backend import SmbBackend
from controller.smb.channel import SmbSettings
from tests.integration.smb_backend.support import ERRORS, HOST, SECRETS, SETTINGS, assert_clean
from tests.servers.plugin import SMB_WRITER
from tests.servers.samba import SambaServer


@pytest.fixture(scope="module", autouse=True)
def _no_secret_in_any_error(samba: SambaServer) -> Iterator[None]:
    SECRETS.update(samba.users.values())
    first = len(ERRORS)
    yield
    provoked = ERRORS[first:]
    assert provoked, "the tests provoked no errors at all?"
    for err in provoked:
        assert_clean(err)


@pytest.fixture
def server(samba: SambaServer) -> SambaServer:
    """The session's Samba, running and answering."""
    if samba.running:
        samba.resume()
    else:
        samba.start()
    return samba


@pytest.fixture
async def make(server: SambaServer) -> AsyncIterator[Callable[..., SmbBackend]]:
    made: list[SmbBackend] = []

    def factory(
        user: str = SMB_WRITER,
        password: str | None = None,
        share: str = "csi",
        settings: SmbSettings = SETTINGS,
    ) -> SmbBackend:
        secret = server.password(user) if password is None else password
        backend = SmbBackend(HOST, server.port, share, user, secret, settings=settings)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        await backend.aclose()


@pytest.fixture
def share_dir(server: SambaServer) -> Path:
    return server.share_path("csi")
