"""SMB backend pieces that need no server: the error mapping (with real
smbprotocol exception objects), secret hygiene of the mapped errors, and the
path defence."""

from __future__ import annotations

import errno
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from smbprotocol.exceptions import (
    SMB2ErrorResponse,
    SMBAuthenticationError,
    SMBConnectionClosed,
    SMBException,
    SMBOSError,
    SMBResponseException,
)
from smbprotocol.header import NtStatus, SMB2HeaderResponse
from smbprotocol.transport import Tcp

from controller.smb.backend import SmbBackend, check_path
from controller.smb.channel import SmbSettings, password_digest
from controller.smb.errors import detach, map_smb_error
from driver.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DriverError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from tests.servers.host import free_port

UNC = r"\\127.0.0.1\csi\vols\pvc-1"
SECRET = "s3cr3t-Pa55word"


def _response_error(status: int) -> SMBResponseException:
    """What smbprotocol raises from a raw response (e.g. session setup, tree connect)."""
    header = SMB2HeaderResponse()
    header["status"] = status
    header["data"] = SMB2ErrorResponse()
    return SMBResponseException(header)


def _refused_connect() -> ValueError:
    """A real 'Failed to connect' from smbprotocol's transport (a closed loopback port)."""
    try:
        Tcp("127.0.0.1", free_port(), timeout=2).connect()
    except ValueError as exc:
        return exc
    pytest.fail("connecting to a closed port succeeded")


STATUS_CASES = [
    # CSI: secrets not valid for authentication are UNAUTHENTICATED.
    (NtStatus.STATUS_LOGON_FAILURE, Unauthenticated),
    (NtStatus.STATUS_WRONG_PASSWORD, Unauthenticated),
    (NtStatus.STATUS_PASSWORD_EXPIRED, Unauthenticated),
    (NtStatus.STATUS_ACCESS_DENIED, PermissionDenied),
    (NtStatus.STATUS_PRIVILEGE_NOT_HELD, PermissionDenied),
    (NtStatus.STATUS_CANNOT_DELETE, PermissionDenied),
    (0xC0000072, Unauthenticated),  # STATUS_ACCOUNT_DISABLED
    (0xC0000234, Unauthenticated),  # STATUS_ACCOUNT_LOCKED_OUT
    (NtStatus.STATUS_BAD_NETWORK_NAME, FailedPrecondition),
    (NtStatus.STATUS_NOT_FOUND, FailedPrecondition),  # bad share, after smbclient's DFS lookup
    (NtStatus.STATUS_OBJECT_NAME_NOT_FOUND, NotFound),
    (NtStatus.STATUS_OBJECT_PATH_NOT_FOUND, NotFound),
    (NtStatus.STATUS_NO_SUCH_FILE, NotFound),
    (NtStatus.STATUS_OBJECT_NAME_COLLISION, AlreadyExists),
    # One vocabulary with NFS (ENOTDIR, EISDIR): the share's state is wrong.
    (NtStatus.STATUS_NOT_A_DIRECTORY, FailedPrecondition),
    (NtStatus.STATUS_FILE_IS_A_DIRECTORY, FailedPrecondition),
    (NtStatus.STATUS_DISK_FULL, ResourceExhausted),
    (0xC0000044, ResourceExhausted),  # STATUS_QUOTA_EXCEEDED
    (NtStatus.STATUS_OBJECT_NAME_INVALID, InvalidArgument),
    (NtStatus.STATUS_DIRECTORY_NOT_EMPTY, FailedPrecondition),
    (NtStatus.STATUS_IO_TIMEOUT, DeadlineExceeded),
    (NtStatus.STATUS_USER_SESSION_DELETED, Unavailable),
    (NtStatus.STATUS_NETWORK_NAME_DELETED, Unavailable),
    (NtStatus.STATUS_INSUFF_SERVER_RESOURCES, Unavailable),
    (NtStatus.STATUS_SHARING_VIOLATION, Unavailable),
    (NtStatus.STATUS_INTERNAL_ERROR, Internal),
    (NtStatus.STATUS_NOT_SUPPORTED, Internal),
]


@pytest.mark.parametrize(("status", "kind"), STATUS_CASES)
def test_smboserror_by_ntstatus(status: int, kind: type[DriverError]) -> None:
    err = map_smb_error(SMBOSError(status, UNC), "mkdir", "vols/pvc-1")
    assert type(err) is kind
    assert err.message.startswith("SMB mkdir 'vols/pvc-1'")


@pytest.mark.parametrize(("status", "kind"), STATUS_CASES)
def test_response_exception_by_ntstatus(status: int, kind: type[DriverError]) -> None:
    exc = _response_error(status)
    assert exc.status == status
    err = map_smb_error(exc, "stat", "a/b")
    assert type(err) is kind
    assert "'a/b'" in err.message


def test_status_name_is_in_the_message() -> None:
    err = map_smb_error(SMBOSError(NtStatus.STATUS_LOGON_FAILURE, UNC), "stat", "x")
    assert "STATUS_LOGON_FAILURE" in err.message
    err = map_smb_error(SMBOSError(0xC0DEC0DE, UNC), "stat", "x")
    assert isinstance(err, Internal)
    assert "0xc0dec0de" in err.message


def test_connect_failure_is_unavailable() -> None:
    exc = _refused_connect()
    assert isinstance(exc.__cause__, ConnectionRefusedError)
    err = map_smb_error(exc, "mkdir", "v")
    assert isinstance(err, Unavailable)
    assert "Connection refused" in err.message


def test_a_plain_value_error_is_internal() -> None:
    assert isinstance(map_smb_error(ValueError("odd"), "mkdir", "v"), Internal)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (SMBConnectionClosed("SMB socket was closed"), Unavailable),
        (ConnectionResetError(errno.ECONNRESET, "reset"), Unavailable),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), Unavailable),
        (BrokenPipeError(errno.EPIPE, "pipe"), Unavailable),
        (OSError(errno.EHOSTUNREACH, "unreachable"), Unavailable),
        (socket.gaierror(socket.EAI_NONAME, "unknown host"), Unavailable),
        (OSError("no errno"), Unavailable),
        (OSError(errno.ENOSPC, "full"), ResourceExhausted),
        (OSError(errno.EDQUOT, "quota"), ResourceExhausted),
        (PermissionError(errno.EACCES, "denied"), PermissionDenied),
        (OSError(errno.EPERM, "not permitted"), PermissionDenied),
        (FileNotFoundError(errno.ENOENT, "gone"), NotFound),
        (FileExistsError(errno.EEXIST, "there"), AlreadyExists),
        (TimeoutError("timed out"), DeadlineExceeded),
        (SMBAuthenticationError("Failed to authenticate with server"), Unauthenticated),
        (SMBException("Request requires 1 credits but only 0 credits are available"), Internal),
        (RuntimeError("boom"), Internal),
    ],
)
def test_other_failures(exc: BaseException, kind: type[DriverError]) -> None:
    err = map_smb_error(exc, "rename", "a -> b")
    assert type(err) is kind
    assert "rename" in err.message
    assert "a -> b" in err.message


def test_domain_errors_pass_through() -> None:
    original = NotFound("already mapped")
    assert map_smb_error(original, "mkdir", "x") is original


# -- secrets -------------------------------------------------------------------------


@given(secret=st.text(min_size=8).filter(lambda s: s.strip() == s and "mkdir" not in s))
def test_library_text_never_reaches_the_message(secret: str) -> None:
    for exc in (
        RuntimeError(secret),
        SMBException(secret),
        SMBAuthenticationError(secret),
        ValueError(secret),
        KeyError(secret),
        UnicodeEncodeError("utf-16-le", secret, 0, 1, "surrogates not allowed"),
    ):
        err = map_smb_error(exc, "mkdir", "vols/x")
        assert secret not in err.message
        assert secret not in repr(err)


def test_detach_drops_a_cause_that_shows_the_secret() -> None:
    # e.g. encoding a password with a lone surrogate: repr() shows the whole string
    leaky = UnicodeEncodeError("utf-16-le", SECRET, 0, 1, "surrogates not allowed")
    err = detach(leaky, "stat", "x", SECRET)
    assert isinstance(err, Internal)
    assert err.__cause__ is None
    assert err.__suppress_context__


def test_detach_keeps_a_clean_cause_without_frames() -> None:
    def fail(password: str) -> None:  # the password is a local of a failing frame
        raise SMBOSError(NtStatus.STATUS_ACCESS_DENIED, UNC) from _response_error(
            NtStatus.STATUS_ACCESS_DENIED
        )

    try:
        fail(SECRET)
    except SMBOSError as exc:
        caught = exc
    assert caught.__traceback__ is not None
    err = detach(caught, "mkdir", "x", SECRET)
    assert isinstance(err, PermissionDenied)
    # Frames (whose locals hold the password) are gone from the whole chain.
    chain = [caught, caught.__cause__]
    assert all(e is not None and e.__traceback__ is None for e in chain)
    assert err.__cause__ is caught


def test_digest_is_keyed_and_stable() -> None:
    assert password_digest(SECRET) == password_digest(SECRET)
    assert password_digest(SECRET) != password_digest(SECRET + "x")
    assert SECRET not in password_digest(SECRET)


def test_backend_repr_has_no_password() -> None:
    backend = SmbBackend("127.0.0.1", 445, "csi", "user", SECRET, settings=SmbSettings())
    assert SECRET not in repr(backend)
    assert SECRET not in repr(backend.key)
    assert SECRET not in repr(vars(backend))


# -- path defence --------------------------------------------------------------------


@pytest.mark.parametrize("good", ["a", "a/b", "pvc-1/data", "ü ß", "a.b", "...x", "a b/c"])
def test_check_path_accepts(good: str) -> None:
    assert "/".join(check_path(good)) == good


@pytest.mark.parametrize(
    "bad",
    ["", "/a", "a/", "a//b", ".", "..", "a/..", "../a", "a/./b", "a\\b", "a\x00b", "c:x", "a:s"],
)
def test_check_path_refuses(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        check_path(bad)


@given(st.text())
def test_check_path_never_lets_through_traversal(path: str) -> None:
    try:
        parts = check_path(path)
    except InvalidArgument:
        return
    for part in parts:
        assert part not in ("", ".", "..")
        assert not set(part) & {"\\", "\x00", ":", "/"}


@pytest.mark.parametrize(
    ("server", "port", "share"),
    [
        ("", 445, "csi"),
        ("a\\b", 445, "csi"),
        ("srv", 0, "csi"),
        ("srv", 445, "a/b"),
        ("srv", 445, ""),
    ],
)
def test_bad_connection_facts(server: str, port: int, share: str) -> None:
    with pytest.raises(InvalidArgument):
        SmbBackend(server, port, share, "user", SECRET)
