"""NFS backend pieces that need no server: errno mapping, path defence and
the ctypes layouts (pinned to libnfs-dev 4.0's headers on x86_64)."""

from __future__ import annotations

import ctypes
import errno
import platform

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.nfs import libnfs, structs
from controller.nfs.backend import NfsBackend, check_share_path
from controller.nfs.errors import ConnectionLost, errno_to_error, nfs4_errno, rpc_failure
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
    Unavailable,
    first_error,
)
from driver.failures import Failure

# -- errno → domain error ---------------------------------------------------------

OP_CASES = [
    (errno.ENOENT, NotFound),
    (errno.EEXIST, AlreadyExists),
    (errno.EACCES, PermissionDenied),
    (errno.EPERM, PermissionDenied),
    (errno.EROFS, PermissionDenied),
    (errno.ENOSPC, ResourceExhausted),
    (errno.EDQUOT, ResourceExhausted),
    (errno.ETIMEDOUT, DeadlineExceeded),
    (errno.ECONNREFUSED, Unavailable),
    (errno.ECONNRESET, Unavailable),
    (errno.EPIPE, Unavailable),
    (errno.ENOTCONN, Unavailable),
    (errno.ESTALE, Unavailable),
    (errno.EAGAIN, Unavailable),
    (errno.EFAULT, Unavailable),
    (errno.EINTR, Unavailable),
    (errno.EINVAL, InvalidArgument),
    (errno.ENAMETOOLONG, InvalidArgument),
    (errno.ENOTDIR, FailedPrecondition),
    (errno.ENOTEMPTY, FailedPrecondition),
    (errno.EISDIR, FailedPrecondition),
    (errno.EIO, Internal),
    (errno.EXDEV, Internal),
    (9999, Internal),
]


@pytest.mark.parametrize(("code", "expected"), OP_CASES)
@pytest.mark.parametrize("sign", [-1, 1])
def test_errno_mapping(code: int, expected: type[DriverError], sign: int) -> None:
    err = errno_to_error(sign * code, "mkdir", "vols/pvc-1", "detail from libnfs")
    assert type(err) is expected
    assert "mkdir" in err.message
    assert "'vols/pvc-1'" in err.message
    assert "detail from libnfs" in err.message
    assert err.code == expected.code


def test_errno_message_without_detail_uses_strerror() -> None:
    err = errno_to_error(-errno.ENOSPC, "mkdir", "a", "")
    assert "No space left on device" in err.message
    assert "ENOSPC" in err.message


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        # A missing export is a configuration problem, as a missing SMB share
        # is: never NOT_FOUND, which DeleteVolume would read as "gone".
        (errno.ENOENT, FailedPrecondition),
        (errno.EACCES, FailedPrecondition),  # v3 MNT3ERR_ACCES: also "not exported"
        (errno.EPERM, FailedPrecondition),
        (errno.ETIMEDOUT, DeadlineExceeded),
        (errno.ECONNREFUSED, Unavailable),
        (errno.EIO, Unavailable),
        (errno.EFAULT, Unavailable),
        (errno.ERANGE, Unavailable),  # e.g. NFS4ERR_MINOR_VERS_MISMATCH
        (errno.EINVAL, Unavailable),
    ],
)
def test_mount_errno_mapping(code: int, expected: type[DriverError]) -> None:
    assert type(errno_to_error(-code, "mount", "/export")) is expected


@pytest.mark.parametrize(
    ("detail", "expected", "failure"),
    [
        # What libnfs 4.0 really says (seen against nfs-ganesha in grace).
        ("NFS4: (path /d1) failed with NFS4ERR_GRACE(-5)", Unavailable, Failure.BUSY),
        ("NFS4: (path /) failed with NFS4ERR_DELAY(-11)", Unavailable, Failure.BUSY),
        ("NFS3: MKDIR of /a failed with NFS3ERR_JUKEBOX(-11)", Unavailable, Failure.BUSY),
        ("NFS4: (path /) failed with NFS4ERR_WRONGSEC(-1)", PermissionDenied, Failure.DENIED),
        ("some other text", Internal, Failure.UNKNOWN),
    ],
)
def test_nfs_status_names_in_libnfs_errors(
    detail: str, expected: type[DriverError], failure: Failure
) -> None:
    err = errno_to_error(-errno.ERANGE, "create", "d1/f", detail)
    assert type(err) is expected
    assert err.failure is failure
    assert detail in err.message


def test_rpc_failure_marks_connection_loss_but_not_at_mount() -> None:
    assert type(rpc_failure(-errno.EFAULT, "mkdir", "a", "RPC ERROR")) is ConnectionLost
    assert type(rpc_failure(-errno.EINTR, "lstat", "a", "cancelled")) is ConnectionLost
    assert isinstance(ConnectionLost("x"), Unavailable)
    assert type(rpc_failure(-errno.EFAULT, "mount", "/e", "refused")) is Unavailable
    assert type(rpc_failure(-errno.ENOENT, "lstat", "a", "")) is NotFound


@pytest.mark.parametrize(
    ("nfsstat", "code"),
    [
        (1, errno.EPERM),
        (2, errno.ENOENT),
        (13, errno.EACCES),
        (21, errno.EISDIR),
        (28, errno.ENOSPC),
        (69, errno.EDQUOT),
        (70, errno.ESTALE),
        (10008, errno.EAGAIN),  # NFS4ERR_DELAY
        (10013, errno.EAGAIN),  # NFS4ERR_GRACE
        (10022, errno.ESTALE),  # NFS4ERR_STALE_CLIENTID
        (10021, errno.EIO),  # NFS4ERR_MINOR_VERS_MISMATCH
        (0, errno.EIO),
        (63, errno.ENAMETOOLONG),
        (66, errno.ENOTEMPTY),
        (7, errno.EIO),
    ],
)
def test_nfs4_errno(nfsstat: int, code: int) -> None:
    assert nfs4_errno(nfsstat) == code


def test_first_error_prefers_domain_errors() -> None:
    boom = RuntimeError("boom")
    denied = PermissionDenied("no")
    group = BaseExceptionGroup("g", [boom, ExceptionGroup("inner", [denied])])
    assert first_error(group) is denied
    assert first_error(BaseExceptionGroup("g", [boom])) is boom


# -- path defence -----------------------------------------------------------------

BAD = ["", "/", "/abs", "..", ".", "a/..", "../a", "a/../b", "a//b", "a/", "a/./b", "a\\b", "a\x00"]
GOOD = ["a", "a/b", "pvc-1/sub dir", "a.b/..c/c..", "ünïcode/名前", "a:b"]


@pytest.mark.parametrize("path", BAD)
def test_check_share_path_rejects(path: str) -> None:
    with pytest.raises(InvalidArgument):
        check_share_path(path)


@pytest.mark.parametrize("path", GOOD)
def test_check_share_path_accepts(path: str) -> None:
    assert check_share_path(path) == path


def test_check_share_path_rejects_non_str() -> None:
    with pytest.raises(InvalidArgument):
        check_share_path(b"a")  # type: ignore[arg-type]


@given(st.lists(st.text(min_size=0, max_size=8), min_size=1, max_size=5))
def test_check_share_path_property(parts: list[str]) -> None:
    path = "/".join(parts)
    bad = any(p in ("", ".", "..") for p in path.split("/")) or "\x00" in path or "\\" in path
    if bad:
        with pytest.raises(InvalidArgument):
            check_share_path(path)
    else:
        assert check_share_path(path) == path


# -- constructor checks (no connection is made) --------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"version": "2"},
        {"version": "4.3"},
        {"export": "relative"},
        {"timeout": 0},
    ],
)
def test_backend_rejects_bad_config(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "server": "127.0.0.1",
        "port": None,
        "export": "/e",
        "version": "4",
        "timeout": 1.0,
    }
    args.update(kwargs)
    with pytest.raises(InvalidArgument):
        NfsBackend(**args)  # type: ignore[arg-type]


# -- ctypes layouts (sizes and offsets measured with gcc against the headers) --------

x86_64 = pytest.mark.skipif(platform.machine() != "x86_64", reason="layouts pinned on x86_64")


@x86_64
@pytest.mark.parametrize(
    ("struct", "size"),
    [
        (structs.NfsStat64, 136),
        (structs.NfsStatvfs64, 88),
        (structs.NfsDirent, 160),
        (structs.NfsUrl, 24),
        (structs.NfsArgop4, 136),
        (structs.Compound4Args, 40),
        (structs.Setattr4Args, 48),
        (structs.Fattr4, 32),
        (structs.Stateid4, 16),
        (structs.Lookup4Args, 16),
        (structs.Utf8String, 16),
    ],
)
def test_struct_sizes(struct: type[ctypes.Structure], size: int) -> None:
    assert ctypes.sizeof(struct) == size


@x86_64
def test_struct_offsets() -> None:
    assert structs.NfsStat64.nfs_mode.offset == 16
    assert structs.NfsStat64.nfs_used.offset == 128
    assert structs.NfsStatvfs64.f_bavail.offset == 32
    assert structs.NfsStatvfs64.f_namemax.offset == 80
    offsets = {
        "name": 8,
        "type": 24,
        "mode": 28,
        "size": 32,
        "atime": 40,
        "uid": 88,
        "nlink": 96,
        "dev": 104,
        "used": 136,
        "atime_nsec": 144,
        "ctime_nsec": 152,
    }
    for field, offset in offsets.items():
        assert getattr(structs.NfsDirent, field).offset == offset, field
    assert structs.NfsArgop4.nfs_argop4_u.offset == 8
    assert structs.Compound4Args.minorversion.offset == 16
    assert structs.Compound4Args.argarray.offset == 24
    assert structs.Setattr4Args.obj_attributes.offset == 16
    assert structs.Fattr4.attr_vals.offset == 16


def test_poll_bits_match_linux() -> None:
    import select

    assert libnfs.POLLIN == select.POLLIN
    assert libnfs.POLLOUT == select.POLLOUT
    assert libnfs.POLLERR == select.POLLERR
    assert libnfs.POLLHUP == select.POLLHUP


def test_compound_status_reads_first_int() -> None:
    buf = (ctypes.c_int32 * 2)(10021, 0)
    assert structs.compound_status(ctypes.addressof(buf)) == 10021
