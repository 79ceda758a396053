"""One vocabulary of failures for every adapter (smbprotocol, libnfs, mount, PowerShell).

Each adapter translates its library's failures through a declarative table
into a :class:`Failure`; :func:`error` turns a failure into the domain error
(and so the gRPC code) that every backend and platform gives for it.  The same
situation therefore answers the same code whichever protocol or OS met it, and
``tests/integration/test_conformance.py`` checks that against real servers.

Choices that matter to a CO:

- a missing share or export, or one the server refuses to this client, is
  FAILED_PRECONDITION, never NOT_FOUND: it is a configuration problem, and
  DeleteVolume must not read it as "the volume is already gone";
- a path component that is not a directory, and a directory that is not
  empty, are FAILED_PRECONDITION (the share's state must change first); a
  volume directory that exists as a file is ALREADY_EXISTS, decided by the
  backends where they know the leaf is meant;
- credentials the server rejects are UNAUTHENTICATED (CSI: "the RPC does not
  carry secrets that are valid for authentication"); an identity that may not
  do something is PERMISSION_DENIED;
- "try again" answers (NFSv4 GRACE and DELAY, NFSv3 JUKEBOX) are BUSY: the
  adapter retries them with backoff inside the call's time budget, and what is
  still busy then is UNAVAILABLE.  INTERNAL is kept for what nobody mapped.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Final

from driver.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DriverError,
    FailedPrecondition,
    Failure,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

# ``Failure`` is defined beside the errors that carry one (``driver.errors``,
# which imports nothing of ours); adapters name it from here, with its tables.
__all__ = ["ERRNO", "Failure", "code_of", "error", "failure_of", "from_errno"]


_ERROR_TYPES: Final[Mapping[Failure, type[DriverError]]] = {
    Failure.SHARE_MISSING: FailedPrecondition,
    Failure.SHARE_REFUSED: FailedPrecondition,
    Failure.PATH_MISSING: NotFound,
    Failure.EXISTS: AlreadyExists,
    Failure.NOT_A_DIRECTORY: FailedPrecondition,
    Failure.IS_A_DIRECTORY: FailedPrecondition,
    Failure.NOT_EMPTY: FailedPrecondition,
    Failure.DENIED: PermissionDenied,
    Failure.AUTH_FAILED: Unauthenticated,
    Failure.NO_SPACE: ResourceExhausted,
    Failure.BAD_NAME: InvalidArgument,
    Failure.UNREACHABLE: Unavailable,
    Failure.BUSY: Unavailable,
    Failure.STALE: Unavailable,
    Failure.TIMED_OUT: DeadlineExceeded,
    Failure.UNSUPPORTED: FailedPrecondition,
    Failure.CONFLICT: FailedPrecondition,
    Failure.UNKNOWN: Internal,
}

#: errno values (Linux numbering) as failures: libnfs, mount helpers, sockets.
ERRNO: Final[Mapping[int, Failure]] = {
    errno.ENOENT: Failure.PATH_MISSING,
    errno.EEXIST: Failure.EXISTS,
    errno.ENOTDIR: Failure.NOT_A_DIRECTORY,
    errno.EISDIR: Failure.IS_A_DIRECTORY,
    errno.ENOTEMPTY: Failure.NOT_EMPTY,
    errno.EACCES: Failure.DENIED,
    errno.EPERM: Failure.DENIED,
    errno.EROFS: Failure.DENIED,
    errno.ENOSPC: Failure.NO_SPACE,
    errno.EDQUOT: Failure.NO_SPACE,
    errno.ENAMETOOLONG: Failure.BAD_NAME,
    errno.EINVAL: Failure.BAD_NAME,
    errno.ECONNREFUSED: Failure.UNREACHABLE,
    errno.ECONNRESET: Failure.UNREACHABLE,
    errno.ECONNABORTED: Failure.UNREACHABLE,
    errno.ENOTCONN: Failure.UNREACHABLE,
    errno.EPIPE: Failure.UNREACHABLE,
    errno.ESHUTDOWN: Failure.UNREACHABLE,
    errno.EHOSTUNREACH: Failure.UNREACHABLE,
    errno.ENETUNREACH: Failure.UNREACHABLE,
    errno.EHOSTDOWN: Failure.UNREACHABLE,
    errno.ENETDOWN: Failure.UNREACHABLE,
    errno.EAGAIN: Failure.BUSY,
    errno.ESTALE: Failure.STALE,
    errno.ETIMEDOUT: Failure.TIMED_OUT,
    errno.EOPNOTSUPP: Failure.UNSUPPORTED,
}


def error(failure: Failure, where: str, detail: str = "") -> DriverError:
    """The domain error for ``failure`` met by ``where`` (operation and path).

    The error remembers its failure (``.failure``) so that callers can tell
    a retryable BUSY from a final answer without looking at message text.
    """
    text = f"{where}: {failure.value}"
    if detail:
        text += f" ({detail})"
    exc = _ERROR_TYPES[failure](text)
    exc.failure = failure
    return exc


def from_errno(code: int, where: str, detail: str = "") -> DriverError:
    """:func:`error` for an errno (sign ignored); unknown values are UNKNOWN."""
    number = abs(code)
    name = errno.errorcode.get(number, f"errno {number}")
    failure = ERRNO.get(number, Failure.UNKNOWN)
    return error(failure, where, f"{detail}; {name}" if detail else name)


def failure_of(exc: BaseException) -> Failure | None:
    """The failure a domain error was made from, if it came through here."""
    return exc.failure if isinstance(exc, DriverError) else None


def code_of(failure: Failure) -> str:
    """The gRPC status name a failure ends up as (for docs and tests)."""
    return _ERROR_TYPES[failure].code
