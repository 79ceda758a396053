"""NfsBackend against a real nfs-ganesha on loopback (v4) and in a private
network namespace (v3, see tests/servers/ganesha.py for how the client gets
there).

Needs root and ``apt-get install -y --no-install-recommends nfs-ganesha
nfs-ganesha-vfs rpcbind libnfs13``.  Every test works in its own directory
of the session's server; the fault tests get a server of their own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from controller.nfs.backend import NfsBackend, Version
from tests.integration.nfs_backend.support import Target
from tests.servers.ganesha import GaneshaServer
from tests.servers.plugin import require_root


@pytest.fixture(params=["4", "3"], ids=["v4", "v3"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    version: Version = request.param
    server: GaneshaServer = request.getfixturevalue(f"ganesha_v{version}")
    # v3: this (main) thread joins the server's network namespace for the
    # test; the event loop runs here, so libnfs' sockets are created inside.
    with server.client_netns():
        yield Target(server, version)


@pytest.fixture
async def backend(target: Target) -> AsyncIterator[NfsBackend]:
    b = target.backend()
    yield b
    await b.aclose()


@pytest.fixture
def base(target: Target) -> str:
    """A fresh directory name (relative to the export) for one test."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    target.disk(name).mkdir()
    return name


@pytest.fixture(params=["4", "3"], ids=["v4", "v3"])
def faulty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """A server of its own (fixed names, kills and pauses): not the session's."""
    require_root("nfs-ganesha tests need root")
    version: Version = request.param
    versions = ("4",) if version == "4" else ("3", "4")
    with GaneshaServer(tmp_path / "g", versions=versions) as server, server.client_netns():
        yield Target(server, version)
