"""Mount failures as domain errors, and error texts safe to show: pure."""

from __future__ import annotations

import errno
import re

from driver.errors import (
    DriverError,
    Internal,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

MOUNT_ERROR = re.compile(r"mount error\((\d+)\)")
_EKEYREJECTED = 129  # Linux errno (not in every platform's errno module)
_ENOKEY = 126  # cifs.upcall found no usable Kerberos ticket


def errno_name(code: int | None) -> str:
    return errno.errorcode.get(code or 0, str(code))


def cifs_error(errnum: int, message: str) -> DriverError:
    if errnum == _ENOKEY:
        return Unauthenticated(
            message + " (no usable Kerberos ticket: check the secret's keytab or cache, and "
            "that the node has keyutils and cifs-utils' request-key setup for cifs.upcall)"
        )
    if errnum in (errno.EACCES, errno.EPERM, _EKEYREJECTED):
        return PermissionDenied(message + " (check the node-stage secret)")
    if errnum == errno.ENOENT:
        return NotFound(message)
    if errnum in (
        errno.ECONNREFUSED,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
        errno.ENOTCONN,
        errno.ECONNRESET,
    ):
        return Unavailable(message)
    return Internal(message)


def scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return " ".join(text.split())[-600:]
