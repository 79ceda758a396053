"""The real servers every suite shares, started once per test session.

* ``samba``: a user-space Samba on 127.0.0.1 with shares ``csi`` and
  ``extra``; ``csitest1`` and ``csitest2`` may write, ``csitest3`` only reads
  ``csi``.  Passwords are random per session: ``samba.password(user)``.
* ``ganesha_v4``: nfs-ganesha serving NFSv4 on a free loopback port.
* ``ganesha_v3``: nfs-ganesha serving NFSv3 and v4 inside a network namespace
  of its own (rpcbind needs port 111); ``server.client_netns()`` puts the
  calling thread's new sockets in there.

A test that stops, kills or pauses one of them leaves it running again
(:func:`running_again`).  Every test that uses one gets the ``root``
marker: the servers need root (users, namespaces).  A missing server
program is a failure, not a skip, because CI installs it (``make deps``).

The ``root`` marker: a test marked ``@pytest.mark.root`` is skipped, with the
reason, when the run is not root.  This is the one place that asks.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.ganesha import GaneshaServer
from tests.servers.samba import APT_HINT, SambaServer, Share

# Users of the session's Samba: two writers and one reader (read list of csi).
SMB_WRITER = "csitest1"
SMB_WRITER2 = "csitest2"
SMB_READER = "csitest3"

#: Fixtures of this plugin whose users need root.
SERVER_FIXTURES = frozenset({"samba", "ganesha_v3", "ganesha_v4"})


def is_root() -> bool:
    return os.geteuid() == 0


def require_root(reason: str) -> None:
    """For fixtures that start servers of their own: skip unless root."""
    if not is_root():
        pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.root)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("root")
    if marker is not None and not is_root():
        reason = marker.kwargs.get("reason", "needs root (real servers, users or mounts)")
        pytest.skip(reason)


@contextlib.contextmanager
def running_again(server: SambaServer | GaneshaServer) -> Iterator[None]:
    """Leave ``server`` running (and not paused) whatever the block did to it."""
    try:
        yield
    finally:
        if server.running:
            server.resume()
        else:
            server.start()


@pytest.fixture(scope="session")
def samba() -> Iterator[SambaServer]:
    sbin = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))
    if shutil.which("smbd", path=sbin) is None:
        pytest.fail(f"smbd is not installed: {APT_HINT} (or `make deps`)")
    users = {name: secrets.token_urlsafe(16) for name in (SMB_WRITER, SMB_WRITER2, SMB_READER)}
    # Not under pytest's basetemp: that is 0700 root, and smbd reaches the
    # shares as the connecting user, who must be able to traverse every parent.
    root = Path(tempfile.mkdtemp(prefix="pytest-samba-"))
    server = SambaServer(
        root,
        users=users,
        shares=[Share("csi", read_list=(SMB_READER,)), Share("extra")],
    )
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def ganesha_v4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GaneshaServer]:
    with GaneshaServer(tmp_path_factory.mktemp("ganesha4"), versions=("4",)) as server:
        yield server


@pytest.fixture(scope="session")
def ganesha_v3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GaneshaServer]:
    with GaneshaServer(tmp_path_factory.mktemp("ganesha3"), versions=("3", "4")) as server:
        yield server
