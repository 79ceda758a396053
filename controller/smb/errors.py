"""SMB failures as domain errors: the NTSTATUS tables, the mapping, the scrubbing.

Errors are mapped once, by :func:`map_smb_error`, through the :data:`NTSTATUS`
table into the shared failure vocabulary (``driver.failures``): the same
situation gives the same domain error as on NFS.  A missing share is
SHARE_MISSING (FAILED_PRECONDITION), never "not found": a configuration
problem of the StorageClass/secret must not read as "the volume is gone".
Messages carry the operation, the share-relative path and the NT status name,
never the password; :func:`detach` keeps the original exception as
``__cause__`` only with its traceback stripped (frames hold the password as a
local) and only if no text of it contains the password.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Final

# smbprotocol ships no type information (no py.typed): these modules are Any to
# mypy.  Every value that leaves them is converted to a typed one in this package.
from smbprotocol.exceptions import (
    SMBAuthenticationError,
    SMBConnectionClosed,
    SMBException,
    SMBOSError,
    SMBResponseException,
)
from smbprotocol.header import NtStatus

from driver import failures
from driver.errors import DriverError
from driver.failures import Failure
from driver.kerberos_reasons import kerberos_reason

__all__ = ["Status", "detach", "is_missing", "map_smb_error", "ntstatus"]


class Status:
    """NTSTATUS values ([MS-ERREF] 2.3.1); smbprotocol's NtStatus lacks some."""

    ACCESS_DENIED: Final = 0xC0000022
    PRIVILEGE_NOT_HELD: Final = 0xC0000061
    WRONG_PASSWORD: Final = 0xC000006A
    LOGON_FAILURE: Final = 0xC000006D
    ACCOUNT_RESTRICTION: Final = 0xC000006E
    INVALID_LOGON_HOURS: Final = 0xC000006F
    INVALID_WORKSTATION: Final = 0xC0000070
    PASSWORD_EXPIRED: Final = 0xC0000071
    ACCOUNT_DISABLED: Final = 0xC0000072
    ACCOUNT_LOCKED_OUT: Final = 0xC0000234
    PASSWORD_MUST_CHANGE: Final = 0xC0000224
    NETWORK_ACCESS_DENIED: Final = 0xC00000CA
    MEDIA_WRITE_PROTECTED: Final = 0xC00000A2
    CANNOT_DELETE: Final = 0xC0000121
    USER_SESSION_DELETED: Final = 0xC0000203
    NETWORK_SESSION_EXPIRED: Final = 0xC000035C
    NETWORK_NAME_DELETED: Final = 0xC00000C9
    BAD_NETWORK_NAME: Final = 0xC00000CC
    NOT_FOUND: Final = 0xC0000225
    NO_SUCH_FILE: Final = 0xC000000F
    OBJECT_NAME_NOT_FOUND: Final = 0xC0000034
    OBJECT_PATH_NOT_FOUND: Final = 0xC000003A
    OBJECT_NAME_COLLISION: Final = 0xC0000035
    OBJECT_NAME_INVALID: Final = 0xC0000033
    OBJECT_PATH_INVALID: Final = 0xC0000039
    OBJECT_PATH_SYNTAX_BAD: Final = 0xC000003B
    NAME_TOO_LONG: Final = 0xC0000106
    INVALID_PARAMETER: Final = 0xC000000D
    DIRECTORY_NOT_EMPTY: Final = 0xC0000101
    NOT_A_DIRECTORY: Final = 0xC0000103
    FILE_IS_A_DIRECTORY: Final = 0xC00000BA
    SHARING_VIOLATION: Final = 0xC0000043
    DELETE_PENDING: Final = 0xC0000056
    DISK_FULL: Final = 0xC000007F
    QUOTA_EXCEEDED: Final = 0xC0000044
    INSUFF_SERVER_RESOURCES: Final = 0xC0000205
    INSUFFICIENT_RESOURCES: Final = 0xC000009A
    IO_TIMEOUT: Final = 0xC00000B5
    SERVER_UNAVAILABLE: Final = 0xC0000466
    REQUEST_NOT_ACCEPTED: Final = 0xC00000D0
    NOT_SUPPORTED: Final = int(NtStatus.STATUS_NOT_SUPPORTED)


#: NT status → failure ([MS-ERREF] 2.3.1); everything else is UNKNOWN.
NTSTATUS: Final[Mapping[int, Failure]] = {
    Status.ACCESS_DENIED: Failure.DENIED,
    Status.PRIVILEGE_NOT_HELD: Failure.DENIED,
    Status.NETWORK_ACCESS_DENIED: Failure.DENIED,
    Status.MEDIA_WRITE_PROTECTED: Failure.DENIED,
    Status.CANNOT_DELETE: Failure.DENIED,
    Status.WRONG_PASSWORD: Failure.AUTH_FAILED,
    Status.LOGON_FAILURE: Failure.AUTH_FAILED,
    Status.ACCOUNT_RESTRICTION: Failure.AUTH_FAILED,
    Status.INVALID_LOGON_HOURS: Failure.AUTH_FAILED,
    Status.INVALID_WORKSTATION: Failure.AUTH_FAILED,
    Status.PASSWORD_EXPIRED: Failure.AUTH_FAILED,
    Status.ACCOUNT_DISABLED: Failure.AUTH_FAILED,
    Status.ACCOUNT_LOCKED_OUT: Failure.AUTH_FAILED,
    Status.PASSWORD_MUST_CHANGE: Failure.AUTH_FAILED,
    Status.BAD_NETWORK_NAME: Failure.SHARE_MISSING,
    Status.NOT_FOUND: Failure.SHARE_MISSING,
    Status.OBJECT_NAME_NOT_FOUND: Failure.PATH_MISSING,
    Status.OBJECT_PATH_NOT_FOUND: Failure.PATH_MISSING,
    Status.NO_SUCH_FILE: Failure.PATH_MISSING,
    Status.OBJECT_NAME_COLLISION: Failure.EXISTS,
    Status.NOT_A_DIRECTORY: Failure.NOT_A_DIRECTORY,
    Status.FILE_IS_A_DIRECTORY: Failure.IS_A_DIRECTORY,
    Status.DIRECTORY_NOT_EMPTY: Failure.NOT_EMPTY,
    Status.DISK_FULL: Failure.NO_SPACE,
    Status.QUOTA_EXCEEDED: Failure.NO_SPACE,
    Status.OBJECT_NAME_INVALID: Failure.BAD_NAME,
    Status.OBJECT_PATH_INVALID: Failure.BAD_NAME,
    Status.OBJECT_PATH_SYNTAX_BAD: Failure.BAD_NAME,
    Status.NAME_TOO_LONG: Failure.BAD_NAME,
    Status.INVALID_PARAMETER: Failure.BAD_NAME,
    Status.IO_TIMEOUT: Failure.TIMED_OUT,
    Status.USER_SESSION_DELETED: Failure.UNREACHABLE,
    Status.NETWORK_NAME_DELETED: Failure.UNREACHABLE,
    Status.SERVER_UNAVAILABLE: Failure.UNREACHABLE,
    Status.INSUFF_SERVER_RESOURCES: Failure.BUSY,
    Status.INSUFFICIENT_RESOURCES: Failure.BUSY,
    Status.REQUEST_NOT_ACCEPTED: Failure.BUSY,
    Status.SHARING_VIOLATION: Failure.BUSY,
    Status.DELETE_PENDING: Failure.BUSY,
}
_PATH_MISSING: Final = frozenset(
    status for status, failure in NTSTATUS.items() if failure is Failure.PATH_MISSING
)

_STATUS_NAMES: Final[dict[int, str]] = {
    int(value): str(name) for name, value in vars(NtStatus).items() if name.startswith("STATUS_")
}


def ntstatus(exc: BaseException) -> int | None:
    """The NT status an smbprotocol exception carries, if any."""
    if isinstance(exc, SMBOSError):
        return int(exc.ntstatus)
    if isinstance(exc, SMBResponseException):
        return int(exc.status)
    return None


def _status_name(status: int) -> str:
    return _STATUS_NAMES.get(status, f"NTSTATUS 0x{status:08x}")


def is_missing(exc: BaseException) -> bool:
    """The path (not the share) does not exist."""
    status = ntstatus(exc)
    if status is not None:
        return status in _PATH_MISSING
    return isinstance(exc, FileNotFoundError)


def _is_connect_failure(exc: BaseException) -> bool:
    # smbprotocol's transport raises ValueError("Failed to connect to ...") from the OSError.
    return isinstance(exc, ValueError) and isinstance(exc.__cause__, OSError)


def _map_status(status: int, where: str) -> DriverError:
    return failures.error(NTSTATUS.get(status, Failure.UNKNOWN), where, _status_name(status))


def _map_errno(err_no: int, where: str) -> DriverError:
    # A socket error, or one smbprotocol's os-like layer raised: errno table,
    # and what it does not know is a network problem.
    code = errno.errorcode.get(err_no, str(err_no))
    return failures.error(failures.ERRNO.get(err_no, Failure.UNREACHABLE), where, code)


def map_smb_error(exc: BaseException, op: str, path: str) -> DriverError:
    """Translate an smbprotocol/socket failure of ``op`` on ``path`` to a domain error.

    The message is built from the operation, the share-relative path and the
    NT status or errno name only; the exception's own text is used only for
    connection failures (host, port and the socket error).
    """
    if isinstance(exc, DriverError):
        return exc
    where = f"SMB {op} {path!r}"
    status = ntstatus(exc)
    if status is not None and status != 0:
        return _map_status(status, where)
    if isinstance(exc, SMBConnectionClosed):
        return failures.error(Failure.UNREACHABLE, where, "the SMB connection was closed")
    kerberos = _kerberos_reason(exc)
    if kerberos is not None:
        # The KDC's or GSSAPI's reason, as one of our own phrases: the
        # library's text itself never reaches the message.
        failure, said = kerberos
        return failures.error(failure, where, f"Kerberos: {said}")
    if isinstance(exc, SMBAuthenticationError):
        return failures.error(Failure.AUTH_FAILED, where)
    if _is_connect_failure(exc):
        return failures.error(Failure.UNREACHABLE, where, str(exc.__cause__))
    if isinstance(exc, TimeoutError):
        return failures.error(Failure.TIMED_OUT, where)
    err_no = exc.errno if isinstance(exc, OSError) else None
    if err_no is not None and not isinstance(exc, SMBException):
        return _map_errno(err_no, where)
    if isinstance(exc, OSError):
        return failures.error(Failure.UNREACHABLE, where, type(exc).__name__)
    return failures.error(Failure.UNKNOWN, where, type(exc).__name__)


_KERBEROS_HINTS = ("kerberos", "krb5", "gss", "kdc", "preauthentication", "keytab", "ticket")
_UNKNOWN_KERBEROS = "logon failed (no reason the driver knows; see the KDC's log)"


def _kerberos_reason(exc: BaseException) -> tuple[Failure, str] | None:
    """The failure and our words for a Kerberos logon failure (the
    Kerberos/GSSAPI libraries' own errors, or smbprotocol's logon error that
    quotes one, matched against ``driver.kerberos_reasons``); None otherwise."""
    chain = _exception_chain(exc)
    from_library = type(exc).__module__.split(".")[0] in ("krb5", "gssapi", "spnego")
    texts = [str(e) for e in chain]
    if not from_library and not (
        isinstance(exc, SMBAuthenticationError)
        and any(h in t.lower() for t in texts for h in _KERBEROS_HINTS)
    ):
        return None
    reason = kerberos_reason(" ".join(texts))
    if reason is None:
        return Failure.AUTH_FAILED, _UNKNOWN_KERBEROS
    return reason.failure, reason.said


def _exception_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def detach(exc: BaseException, op: str, path: str, secret: str) -> DriverError:
    """Map ``exc``; keep it as ``__cause__`` only if it is clean of ``secret``.

    Tracebacks are cut from the whole chain: the frames of smbprotocol (and of
    our step functions) hold the password as a local, and some loggers render
    frame locals.
    """
    mapped = map_smb_error(exc, op, path)
    chain = _exception_chain(exc)
    clean = all(secret not in str(e) and secret not in repr(e) for e in chain)
    for e in chain:
        e.__traceback__ = None
    if mapped is not exc:
        mapped.__cause__ = exc if clean else None
        mapped.__suppress_context__ = True
    return mapped
