"""Fixtures shared by the integration tests.

``samba``: one user-space Samba for the whole session (tests/servers/samba.py).
Skipped only when not root; a missing ``smbd`` is a failure, because CI
installs it (``make deps``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.samba import APT_HINT, SambaServer, Share

# Users of the session's Samba: two writers and one reader (read list of csi).
SMB_WRITER = "csitest1"
SMB_WRITER2 = "csitest2"
SMB_READER = "csitest3"


@pytest.fixture(scope="session")
def samba() -> Iterator[SambaServer]:
    """A running Samba on 127.0.0.1 with shares ``csi`` and ``extra``, in /tmp.

    ``csitest1`` and ``csitest2`` may write; ``csitest3`` only reads ``csi``.
    Passwords are random per session: ``samba.password(user)``.  Tests that
    stop, kill or pause it must leave it running again.
    """
    if os.geteuid() != 0:
        pytest.skip("the Samba testbed needs root (useradd; smbd switches users)")
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
