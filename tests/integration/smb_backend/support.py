"""What the SmbBackend tests share: settings, and ``fails`` that records every
domain error the tests provoke so that each is checked for secrets."""

from __future__ import annotations

import os
import pwd
import secrets
import traceback
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from controller.smb.channel import SmbSettings
from driver.errors import DriverError
from tests.servers.plugin import SMB_WRITER

HOST = "127.0.0.1"
SETTINGS = SmbSettings(op_timeout=5.0, close_timeout=1.0)
READONLY = 0x1
WRONG_PASSWORD = "wrong-" + secrets.token_urlsafe(12)
E = TypeVar("E", bound=DriverError)

# Every domain error the tests provoke; checked for secrets at module teardown.
ERRORS: list[BaseException] = []
SECRETS: set[str] = {WRONG_PASSWORD}


# --- helpers -----------------------------------------------------------------


def texts(err: BaseException) -> Iterator[str]:
    """Everything a log line or a traceback renderer could show of ``err``."""
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        yield str(current)
        yield repr(current)
        yield repr(current.args)
        current = current.__cause__ or current.__context__
    # Frame locals of the driver's own frames, as structlog/rich show_locals
    # would render them (the test's frames hold the passwords legitimately).
    rendered: traceback.TracebackException | None = traceback.TracebackException.from_exception(
        err, capture_locals=True
    )
    while rendered is not None:
        for frame in rendered.stack:
            if "/controller/" in frame.filename or "smbclient" in frame.filename:
                yield repr(frame.locals)
        rendered = rendered.__cause__ or rendered.__context__


def assert_clean(err: BaseException) -> None:
    for text in texts(err):
        for secret in SECRETS:
            assert secret not in text, f"a password leaked into {type(err).__name__}"


async def fails(kind: type[E], awaitable: Awaitable[Any]) -> E:
    with pytest.raises(kind) as info:
        await awaitable
    ERRORS.append(info.value)
    assert_clean(info.value)
    return info.value


def tcp_to(port: int) -> list[Any]:
    """Established TCP connections of this process to ``port``."""
    return [
        c
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    ]


def own(path: Path, user: str = SMB_WRITER) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def unique() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"
