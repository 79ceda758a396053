"""SmbBackend against a real Samba on loopback (tests/servers/samba.py).

Every test works in a directory of its own on the session's server; the
tests that stop, kill or pause the server bring it back before they end.
Every domain error raised here is collected and checked for secrets.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import stat
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
import smbclient
from smbprotocol.exceptions import SMBOSError
from smbprotocol.header import NtStatus

from controller.smb.backend import SmbBackend, SmbBackendPool
from controller.smb.channel import SmbSettings
from driver.credentials import Credentials
from driver.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DriverError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from tests.servers.plugin import SMB_READER, SMB_WRITER, SMB_WRITER2
from tests.servers.samba import SambaServer, free_port

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
SETTINGS = SmbSettings(op_timeout=5.0, close_timeout=1.0)
READONLY = 0x1
WRONG_PASSWORD = "wrong-" + secrets.token_urlsafe(12)
E = TypeVar("E", bound=DriverError)

# Every domain error the tests provoke; checked for secrets at module teardown.
_ERRORS: list[BaseException] = []
_SECRETS: set[str] = {WRONG_PASSWORD}


# --- helpers -----------------------------------------------------------------


def _texts(err: BaseException) -> Iterator[str]:
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


def _assert_clean(err: BaseException) -> None:
    for text in _texts(err):
        for secret in _SECRETS:
            assert secret not in text, f"a password leaked into {type(err).__name__}"


async def fails(kind: type[E], awaitable: Awaitable[Any]) -> E:
    with pytest.raises(kind) as info:
        await awaitable
    _ERRORS.append(info.value)
    _assert_clean(info.value)
    return info.value


def _tcp_to(port: int) -> list[Any]:
    """Established TCP connections of this process to ``port``."""
    return [
        c
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    ]


def _own(path: Path, user: str = SMB_WRITER) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _unique() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


# --- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _no_secret_in_any_error(samba: SambaServer) -> Iterator[None]:
    _SECRETS.update(samba.users.values())
    yield
    assert _ERRORS, "the tests provoked no errors at all?"
    for err in _ERRORS:
        _assert_clean(err)


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


# --- mkdir ---------------------------------------------------------------------


async def test_mkdir_new_existing_nested(make: Callable[..., SmbBackend], share_dir: Path) -> None:
    backend = make()
    d = _unique()
    assert await backend.mkdir(d) is True
    assert (share_dir / d).is_dir()
    assert await backend.mkdir(d) is False
    assert await backend.mkdir(f"{d}/a/b/c") is True
    assert (share_dir / d / "a" / "b" / "c").is_dir()
    assert await backend.mkdir(f"{d}/a/b/c") is False
    assert await backend.mkdir(f"{d}/a/b") is False
    assert await backend.mkdir(f"{d}/a/x") is True


async def test_mkdir_over_a_file_is_already_exists(
    make: Callable[..., SmbBackend], share_dir: Path
) -> None:
    backend = make()
    d = _unique()
    await backend.mkdir(d)
    (share_dir / d / "file").write_text("x")
    await fails(AlreadyExists, backend.mkdir(f"{d}/file"))
    # A file where a parent should be: the share's state, as on NFS (ENOTDIR).
    await fails(FailedPrecondition, backend.mkdir(f"{d}/file/below/deeper"))
    assert (share_dir / d / "file").is_file()


async def test_mkdir_mode_is_ignored(make: Callable[..., SmbBackend], share_dir: Path) -> None:
    backend = make()
    d = _unique()
    assert await backend.mkdir(d, mode=0o2770) is True
    # The share's ``directory mask`` decides, not the caller (documented).
    assert stat.S_IMODE((share_dir / d).stat().st_mode) == 0o777


# --- rename ------------------------------------------------------------------


async def test_rename(make: Callable[..., SmbBackend], share_dir: Path) -> None:
    backend = make()
    d = _unique()
    await backend.mkdir(f"{d}/src/inner")
    await backend.rename(f"{d}/src", f"{d}/dst")
    assert not (share_dir / d / "src").exists()
    assert (share_dir / d / "dst" / "inner").is_dir()


async def test_rename_refuses_an_existing_target(
    make: Callable[..., SmbBackend], share_dir: Path
) -> None:
    backend = make()
    d = _unique()
    await backend.mkdir(f"{d}/src")
    await backend.mkdir(f"{d}/dst/kept")
    await fails(AlreadyExists, backend.rename(f"{d}/src", f"{d}/dst"))
    assert (share_dir / d / "src").is_dir()
    assert (share_dir / d / "dst" / "kept").is_dir()


async def test_rename_with_replace_removes_the_target_tree(
    make: Callable[..., SmbBackend], share_dir: Path
) -> None:
    backend = make()
    d = _unique()
    await backend.mkdir(f"{d}/src/new")
    await backend.mkdir(f"{d}/dst/old/deep")
    ro = share_dir / d / "dst" / "old" / "ro.txt"
    ro.write_text("x")
    _own(ro)
    ro.chmod(0o444)
    await backend.rename(f"{d}/src", f"{d}/dst", replace=True)
    assert not (share_dir / d / "src").exists()
    assert sorted(p.name for p in (share_dir / d / "dst").iterdir()) == ["new"]
    # replace also works when there is nothing to replace
    await backend.mkdir(f"{d}/other")
    await backend.rename(f"{d}/other", f"{d}/fresh", replace=True)
    assert (share_dir / d / "fresh").is_dir()


async def test_rename_missing_source_is_an_answer(
    make: Callable[..., SmbBackend], share_dir: Path
) -> None:
    backend = make()
    d = _unique()
    await backend.mkdir(f"{d}/dst/kept")
    assert await backend.rename(f"{d}/nope", f"{d}/new") is False
    # With replace, a missing source must not cost the target.
    assert await backend.rename(f"{d}/nope", f"{d}/dst", replace=True) is False
    assert (share_dir / d / "dst" / "kept").is_dir()
    await backend.mkdir(f"{d}/src")
    await fails(NotFound, backend.rename(f"{d}/src", f"{d}/missing/dst"))
    assert await backend.rename(f"{d}/src", f"{d}/moved") is True


# --- remove_tree / exists ------------------------------------------------------


async def test_remove_tree_with_read_only_files_and_dirs(
    make: Callable[..., SmbBackend], server: SambaServer, share_dir: Path
) -> None:
    backend = make()
    d = _unique()
    await backend.mkdir(f"{d}/tree/plain")
    tree = share_dir / d / "tree"
    # Made on the server side (as if by a pod through a mount), owned by the user.
    for name in ("plain.txt", "srv_ro.txt"):
        (tree / name).write_text(name)
        _own(tree / name)
    (tree / "srv_ro.txt").chmod(0o444)
    rodir = tree / "rodir"
    (rodir / "sub").mkdir(parents=True)
    (rodir / "inner.txt").write_text("inner")
    (rodir / "sub" / "deep.txt").write_text("deep")
    for path in (rodir, rodir / "sub", rodir / "inner.txt", rodir / "sub" / "deep.txt"):
        _own(path)
    (rodir / "inner.txt").chmod(0o444)
    (rodir / "sub").chmod(0o555)
    rodir.chmod(0o555)

    # Made through SMB with FILE_ATTRIBUTE_READONLY; and proof that read-only
    # is really enforced by this Samba before the backend deals with it.
    cache: dict[str, Any] = {}
    kw = {
        "port": server.port,
        "username": SMB_WRITER,
        "password": server.password(SMB_WRITER),
        "connection_cache": cache,
    }
    unc = rf"\\{HOST}\csi\{d}\tree"
    try:
        with smbclient.open_file(
            rf"{unc}\smb_ro.txt", mode="w", file_attributes=READONLY, **kw
        ) as f:
            f.write("smb")
        assert (tree / "smb_ro.txt").stat().st_mode & 0o222 == 0
        for name in ("smb_ro.txt", "srv_ro.txt", "rodir"):
            assert smbclient.stat(rf"{unc}\{name}", **kw).st_file_attributes & READONLY, name
        with pytest.raises(SMBOSError) as denied:
            smbclient.open_file(rf"{unc}\srv_ro.txt", mode="a", **kw)
        assert denied.value.ntstatus == NtStatus.STATUS_ACCESS_DENIED
        with pytest.raises(SMBOSError) as denied:
            smbclient.remove(rf"{unc}\rodir\sub\deep.txt", **kw)
        assert denied.value.ntstatus == NtStatus.STATUS_ACCESS_DENIED
    finally:
        smbclient.reset_connection_cache(connection_cache=cache)

    assert await backend.remove_tree(f"{d}/tree") is True
    assert not tree.exists()
    assert await backend.remove_tree(f"{d}/tree") is False


async def test_remove_tree_of_a_wide_and_deep_tree(
    make: Callable[..., SmbBackend], share_dir: Path
) -> None:
    # max_in_flight=2: some subdirectories are walked side by side, the rest inline.
    backend = make(settings=SmbSettings(op_timeout=5.0, close_timeout=1.0, max_in_flight=2))
    d = _unique()
    await backend.mkdir(d)
    for i in range(12):
        deep = share_dir / d / f"w{i}" / "x" / "y"
        deep.mkdir(parents=True)
        for j in range(3):
            (deep.parent / f"f{j}").write_text("x")
        (deep / "leaf").write_text("x")
    for path in (share_dir / d).rglob("*"):
        _own(path)
    (share_dir / d / "w3" / "x").chmod(0o555)
    assert await backend.remove_tree(d) is True
    assert not (share_dir / d).exists()


async def test_remove_tree_of_a_file_and_of_nothing(
    make: Callable[..., SmbBackend], share_dir: Path
) -> None:
    backend = make()
    d = _unique()
    await backend.mkdir(d)
    (share_dir / d / "f").write_text("x")
    assert await backend.remove_tree(f"{d}/f") is True
    assert not (share_dir / d / "f").exists()
    assert await backend.remove_tree(f"{d}/missing/below") is False
    assert await backend.remove_tree(d) is True
    assert not (share_dir / d).exists()


async def test_exists(make: Callable[..., SmbBackend], share_dir: Path) -> None:
    backend = make()
    d = _unique()
    assert await backend.exists(d) is False
    await backend.mkdir(f"{d}/dir")
    (share_dir / d / "file").write_text("x")
    assert await backend.exists(d) is True
    assert await backend.exists(f"{d}/dir") is True
    assert await backend.exists(f"{d}/file") is True
    assert await backend.exists(f"{d}/file/below") is False
    assert await backend.exists(f"{d}/nope/below") is False


async def test_capacity_matches_statvfs(make: Callable[..., SmbBackend], share_dir: Path) -> None:
    cap = await make().capacity()
    st = os.statvfs(share_dir)
    assert cap.total_bytes == st.f_blocks * st.f_frsize
    assert 0 < cap.available_bytes <= cap.total_bytes
    # Other processes write to the same disk meanwhile: allow some drift.
    assert abs(cap.available_bytes - st.f_bavail * st.f_frsize) < 256 * 2**20


# --- identities and permissions -------------------------------------------------


async def test_wrong_password_is_unauthenticated(make: Callable[..., SmbBackend]) -> None:
    good = make()
    d = _unique()
    assert await good.mkdir(d) is True
    bad = make(password=WRONG_PASSWORD)
    err = await fails(Unauthenticated, bad.exists(d))
    assert "LOGON_FAILURE" in str(err)
    await fails(Unauthenticated, bad.mkdir(f"{d}/x"))
    # The good session is unharmed and still answers.
    assert await good.exists(d) is True
    assert await good.mkdir(f"{d}/y") is True


async def test_wrong_password_never_reuses_a_good_session(
    make: Callable[..., SmbBackend], server: SambaServer
) -> None:
    good = make(SMB_WRITER2)
    d = _unique()
    assert await good.mkdir(d) is True  # a live, authenticated session exists now
    late = make(SMB_WRITER2, password=WRONG_PASSWORD)
    await fails(Unauthenticated, late.exists(d))
    await fails(Unauthenticated, late.mkdir(f"{d}/sneaky"))
    assert not (server.share_path("csi") / d / "sneaky").exists()

    pool = SmbBackendPool(SETTINGS)
    try:
        pooled_good = pool.get(
            HOST, server.port, "csi", Credentials(SMB_WRITER2, server.password(SMB_WRITER2))
        )
        assert await pooled_good.exists(d) is True
        pooled_bad = pool.get(HOST, server.port, "csi", Credentials(SMB_WRITER2, WRONG_PASSWORD))
        assert pooled_bad is not pooled_good
        await fails(Unauthenticated, pooled_bad.exists(d))
        assert WRONG_PASSWORD not in repr(pool.keys)
    finally:
        await pool.aclose()


async def test_read_only_user_cannot_write(make: Callable[..., SmbBackend]) -> None:
    writer, reader = make(SMB_WRITER), make(SMB_READER)
    d = _unique()
    await writer.mkdir(d)
    assert await reader.exists(d) is True
    await fails(PermissionDenied, reader.mkdir(f"{d}/x"))
    await fails(PermissionDenied, reader.remove_tree(d))
    assert await writer.exists(d) is True


async def test_missing_share_is_failed_precondition(make: Callable[..., SmbBackend]) -> None:
    backend = make(share="no-such-share")
    err = await fails(FailedPrecondition, backend.exists("x"))
    assert "share" in str(err)
    await fails(FailedPrecondition, backend.remove_tree("x"))


# --- server faults ---------------------------------------------------------------


async def test_stopped_server_is_unavailable_until_it_is_back(
    make: Callable[..., SmbBackend], server: SambaServer
) -> None:
    backend = make()
    d = _unique()
    await backend.mkdir(d)
    server.stop()
    try:
        await fails(Unavailable, backend.exists(d))
        await fails(Unavailable, backend.mkdir(f"{d}/x"))
        await fails(Unavailable, make().capacity())  # never connected at all
    finally:
        server.start()
    assert await backend.mkdir(f"{d}/x") is True


async def test_reconnects_after_restart_and_crash(
    make: Callable[..., SmbBackend], server: SambaServer
) -> None:
    backend = make()
    d = _unique()
    await backend.mkdir(d)
    server.restart()
    assert await backend.mkdir(f"{d}/after-restart") is True
    server.kill()
    server.start()
    assert await backend.exists(f"{d}/after-restart") is True
    assert await backend.mkdir(f"{d}/after-crash") is True
    assert len(_tcp_to(server.port)) == 1


async def test_hung_server_times_out_with_bounded_threads(
    make: Callable[..., SmbBackend], server: SambaServer
) -> None:
    # op_timeout leaves room for a new session on a loaded machine after aclose.
    settings = SmbSettings(op_timeout=1.0, close_timeout=0.3, max_in_flight=2)
    backend = make(settings=settings)
    d = _unique()
    await backend.mkdir(d)
    server.pause()
    try:
        results = await asyncio.gather(
            *(backend.exists(f"{d}/{i}") for i in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, DeadlineExceeded) for r in results), results
        for r in results:
            assert isinstance(r, BaseException)
            _ERRORS.append(r)
        prefix = f"smb-{backend.key.server}:{backend.key.port}"
        step_threads = [t for t in threading.enumerate() if t.name.startswith(prefix)]
        assert 0 < len(step_threads) <= 2
        started = time.monotonic()
        await backend.aclose()  # must not hang on the hung server
        assert time.monotonic() - started < 2.0
    finally:
        server.resume()
    assert await backend.mkdir(f"{d}/after") is True  # usable again after aclose
    leftovers = [t for t in threading.enumerate() if t.name.startswith("smb-close")]
    assert len(leftovers) <= 1


# --- concurrency and sessions -----------------------------------------------------


async def test_200_concurrent_mkdirs_share_one_connection(
    make: Callable[..., SmbBackend], server: SambaServer, share_dir: Path
) -> None:
    backend = make()
    d = _unique()  # not created first: the parent is raced for too
    results = await asyncio.gather(*(backend.mkdir(f"{d}/c{i:03}") for i in range(200)))
    assert results == [True] * 200
    assert len(list((share_dir / d).iterdir())) == 200
    assert len(_tcp_to(server.port)) == 1


async def test_two_credentials_two_sessions(
    make: Callable[..., SmbBackend], server: SambaServer
) -> None:
    first, second = make(SMB_WRITER), make(SMB_WRITER2)
    await asyncio.gather(first.exists("x"), second.exists("x"), first.exists("y"))
    ours = _tcp_to(server.port)
    assert len(ours) == 2
    clients = {f"ipv4:{c.laddr.ip}:{c.laddr.port}" for c in ours}
    users = sorted(s["username"] for s in server.sessions() if s["client"] in clients)
    assert users == sorted([SMB_WRITER, SMB_WRITER2])


async def test_pool_one_connection_per_credentials(server: SambaServer, share_dir: Path) -> None:
    pool = SmbBackendPool(SETTINGS)
    creds = Credentials(SMB_WRITER, server.password(SMB_WRITER))
    try:
        csi = pool.get(HOST, server.port, "csi", creds)
        assert pool.get(HOST, server.port, "CSI", creds) is csi
        extra = pool.get(HOST, server.port, "extra", creds)
        assert extra is not csi
        assert pool.cached(HOST, server.port, "extra") is extra
        d = _unique()
        assert await csi.mkdir(d) is True
        assert await extra.mkdir(d) is True
        assert (share_dir / d).is_dir()
        assert (server.share_path("extra") / d).is_dir()
        assert len(_tcp_to(server.port)) == 1
        other = pool.get(
            HOST, server.port, "csi", Credentials(SMB_WRITER2, server.password(SMB_WRITER2))
        )
        assert await other.exists(d) is True
        assert len(_tcp_to(server.port)) == 2
        assert len(pool.keys) == 2
        assert all(creds.password not in repr(k) for k in pool.keys)
        await csi.aclose()  # pool-owned: a no-op
        assert await extra.exists(d) is True
    finally:
        await pool.aclose()
    assert _tcp_to(server.port) == []
    assert pool.cached(HOST, server.port, "csi") is None


# --- path defence -----------------------------------------------------------------

BAD_PATHS = [
    "",
    "/abs",
    "..",
    "a/../b",
    "a/..",
    ".",
    "./a",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "\\\\server\\share",
    "a\x00b",
    "a:b",
    "file.txt:stream",
    "C:",
]


@pytest.mark.parametrize("path", BAD_PATHS)
async def test_path_defence(path: str, make: Callable[..., SmbBackend], share_dir: Path) -> None:
    before = sorted(p.name for p in share_dir.iterdir())
    backend = make()
    # A backend that could not even connect: the check happens before any I/O.
    offline = SmbBackend(HOST, free_port(), "csi", "nobody", "x", settings=SETTINGS)
    for target in (backend, offline):
        await fails(InvalidArgument, target.mkdir(path))
        await fails(InvalidArgument, target.exists(path))
        await fails(InvalidArgument, target.remove_tree(path))
        await fails(InvalidArgument, target.rename(path, "ok"))
        await fails(InvalidArgument, target.rename("ok", path, replace=True))
    await offline.aclose()
    assert sorted(p.name for p in share_dir.iterdir()) == before
