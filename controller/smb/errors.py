"""SMB failures as domain errors: the NTSTATUS tables, the mapping, the scrubbing.

Errors are mapped once, by :func:`map_smb_error`, to ``driver.errors``.  A
missing share is ``FailedPrecondition``, not ``NotFound``: it is a
configuration problem of the StorageClass/secret, and a caller must never read
it as "the volume is already gone" (DeleteVolume treats NotFound as success).
Messages carry the operation, the share-relative path and the NT status name,
never the password; :func:`detach` keeps the original exception as
``__cause__`` only with its traceback stripped (frames hold the password as a
local) and only if no text of it contains the password.
"""

from __future__ import annotations

import errno
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


_DENIED: Final = frozenset(
    {
        Status.ACCESS_DENIED,
        Status.PRIVILEGE_NOT_HELD,
        Status.WRONG_PASSWORD,
        Status.LOGON_FAILURE,
        Status.ACCOUNT_RESTRICTION,
        Status.INVALID_LOGON_HOURS,
        Status.INVALID_WORKSTATION,
        Status.PASSWORD_EXPIRED,
        Status.ACCOUNT_DISABLED,
        Status.ACCOUNT_LOCKED_OUT,
        Status.PASSWORD_MUST_CHANGE,
        Status.NETWORK_ACCESS_DENIED,
        Status.MEDIA_WRITE_PROTECTED,
        Status.CANNOT_DELETE,
    }
)
_SHARE_MISSING: Final = frozenset({Status.BAD_NETWORK_NAME, Status.NOT_FOUND})
_PATH_MISSING: Final = frozenset(
    {Status.OBJECT_NAME_NOT_FOUND, Status.OBJECT_PATH_NOT_FOUND, Status.NO_SUCH_FILE}
)
_INVALID: Final = frozenset(
    {
        Status.OBJECT_NAME_INVALID,
        Status.OBJECT_PATH_INVALID,
        Status.OBJECT_PATH_SYNTAX_BAD,
        Status.NAME_TOO_LONG,
        Status.INVALID_PARAMETER,
    }
)
_EXHAUSTED: Final = frozenset({Status.DISK_FULL, Status.QUOTA_EXCEEDED})
_UNAVAILABLE: Final = frozenset(
    {
        Status.USER_SESSION_DELETED,
        Status.NETWORK_NAME_DELETED,
        Status.INSUFF_SERVER_RESOURCES,
        Status.INSUFFICIENT_RESOURCES,
        Status.SERVER_UNAVAILABLE,
        Status.REQUEST_NOT_ACCEPTED,
        Status.SHARING_VIOLATION,
        Status.DELETE_PENDING,
    }
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
    name = _status_name(status)
    if status in _DENIED:
        return PermissionDenied(f"{where}: permission denied ({name})")
    if status in _SHARE_MISSING:
        return FailedPrecondition(f"{where}: the share does not exist on the server ({name})")
    if status in _PATH_MISSING:
        return NotFound(f"{where}: not found ({name})")
    if status == Status.OBJECT_NAME_COLLISION:
        return AlreadyExists(f"{where}: already exists ({name})")
    if status in _EXHAUSTED:
        return ResourceExhausted(f"{where}: no space left ({name})")
    if status in _INVALID:
        return InvalidArgument(f"{where}: the server refused the name ({name})")
    if status in (Status.NOT_A_DIRECTORY, Status.FILE_IS_A_DIRECTORY):
        return AlreadyExists(f"{where}: exists with another file type ({name})")
    if status == Status.DIRECTORY_NOT_EMPTY:
        return FailedPrecondition(f"{where}: directory not empty ({name})")
    if status == Status.IO_TIMEOUT:
        return DeadlineExceeded(f"{where}: the server timed out ({name})")
    if status in _UNAVAILABLE:
        return Unavailable(f"{where}: temporarily unavailable ({name})")
    return Internal(f"{where} failed ({name})")


def _map_errno(err_no: int, where: str) -> DriverError:
    code = errno.errorcode.get(err_no, str(err_no))
    if err_no in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"{where}: no space left ({code})")
    if err_no in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"{where}: permission denied ({code})")
    if err_no == errno.ENOENT:
        return NotFound(f"{where}: not found ({code})")
    if err_no == errno.EEXIST:
        return AlreadyExists(f"{where}: already exists ({code})")
    return Unavailable(f"{where}: network error ({code})")


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
        return Unavailable(f"{where}: the SMB connection was closed")
    kerberos = _kerberos_reason(exc)
    if kerberos:
        # The KDC's or GSSAPI's reason (no key material is ever in it).
        if any(s in kerberos.lower() for s in ("contact any kdc", "cannot find kdc")):
            return Unavailable(f"{where}: Kerberos: no KDC answers: {kerberos}")
        return Unauthenticated(f"{where}: Kerberos authentication failed: {kerberos}")
    if isinstance(exc, SMBAuthenticationError):
        return PermissionDenied(f"{where}: authentication failed")
    if _is_connect_failure(exc):
        return Unavailable(f"{where}: cannot connect to the SMB server ({exc.__cause__})")
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded(f"{where}: timed out")
    err_no = exc.errno if isinstance(exc, OSError) else None
    if err_no is not None and not isinstance(exc, SMBException):
        return _map_errno(err_no, where)
    if isinstance(exc, OSError):
        return Unavailable(f"{where}: network error ({type(exc).__name__})")
    return Internal(f"{where} failed ({type(exc).__name__})")


_KERBEROS_HINTS = ("kerberos", "krb5", "gss", "kdc", "preauthentication", "keytab", "ticket")


def _kerberos_reason(exc: BaseException) -> str:
    """The text of a Kerberos logon failure (the Kerberos/GSSAPI libraries'
    own errors, or smbprotocol's logon error that quotes one); '' otherwise."""
    chain = _exception_chain(exc)
    from_library = type(exc).__module__.split(".")[0] in ("krb5", "gssapi", "spnego")
    texts = [str(e) for e in chain]
    if not from_library and not (
        isinstance(exc, SMBAuthenticationError)
        and any(h in t.lower() for t in texts for h in _KERBEROS_HINTS)
    ):
        return ""
    text = " ".join(texts[0].removeprefix("Failed to authenticate with server: ").split())
    return text[-400:] or type(exc).__name__


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
