"""Domain errors.

Services raise these; exactly one place (``driver.boundary``) turns them into
gRPC status codes.  Messages must never contain a secret: they are returned to
the caller and logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from driver.failures import Failure


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
