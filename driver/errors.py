"""Domain errors.

Services raise these; exactly one place (``driver.boundary``) turns them into
gRPC status codes.  Messages must never contain a secret: they are returned to
the caller and logged.  :class:`Failure` names what went wrong in the shared
vocabulary; ``driver.failures`` maps each failure to its error type, so this
module imports nothing of the driver's.
"""

from __future__ import annotations

import enum


class Failure(enum.Enum):
    """What went wrong, in words every adapter shares (mapped in ``driver.failures``)."""

    SHARE_MISSING = "the share or export does not exist on the server"
    SHARE_REFUSED = (
        "the server does not export this path to this client (not exported, or not to this host)"
    )
    PATH_MISSING = "not found"
    EXISTS = "already exists"
    NOT_A_DIRECTORY = "a path component is not a directory"
    IS_A_DIRECTORY = "is a directory"
    NOT_EMPTY = "directory not empty"
    DENIED = "permission denied"
    AUTH_FAILED = "the server rejected the credentials"
    NO_SPACE = "out of space or resources"
    BAD_NAME = "the server refused the name"
    UNREACHABLE = "the server cannot be reached"
    BUSY = "the server asks to try again later"
    STALE = "the server lost the handle (restarted?)"
    TIMED_OUT = "the server did not answer in time"
    UNSUPPORTED = "the server does not support the operation"
    CONFLICT = "conflicts with what is already set up"
    UNKNOWN = "failed"


class DriverError(Exception):
    """Base of every error the driver reports on purpose.

    ``code`` is the name of the gRPC status code (``grpc.StatusCode[code]``);
    the core stays free of grpc imports here so fakes and backends can raise
    these without pulling in the RPC layer.
    """

    code = "INTERNAL"
    #: What went wrong in the shared vocabulary (``driver.failures``), when known.
    failure: Failure | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DriverError):
    code = "INVALID_ARGUMENT"


class NotFound(DriverError):
    code = "NOT_FOUND"


class AlreadyExists(DriverError):
    code = "ALREADY_EXISTS"


class PermissionDenied(DriverError):
    code = "PERMISSION_DENIED"


class Unauthenticated(DriverError):
    code = "UNAUTHENTICATED"


class FailedPrecondition(DriverError):
    code = "FAILED_PRECONDITION"


class Aborted(DriverError):
    code = "ABORTED"


class OutOfRange(DriverError):
    code = "OUT_OF_RANGE"


class Unimplemented(DriverError):
    code = "UNIMPLEMENTED"


class Unavailable(DriverError):
    code = "UNAVAILABLE"


class DeadlineExceeded(DriverError):
    code = "DEADLINE_EXCEEDED"


class ResourceExhausted(DriverError):
    code = "RESOURCE_EXHAUSTED"


class Internal(DriverError):
    code = "INTERNAL"


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to raise for a failed task group: its first domain error,
    else its first exception (nested groups flattened)."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    for exc in leaves:
        if isinstance(exc, DriverError):
            return exc
    return leaves[0] if leaves else Internal("empty error group")
