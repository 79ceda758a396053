"""Mount failures as domain errors, and error texts safe to show: pure."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from typing import Final

from driver import failures
from driver.errors import (
    DriverError,
    FailedPrecondition,
    Internal,
    Unauthenticated,
    Unavailable,
)
from driver.failures import Failure
from driver.kerberos_reasons import kerberos_reason

MOUNT_ERROR = re.compile(r"mount error\((\d+)\)")
_EKEYREJECTED = 129  # Linux errno values (not in every platform's errno module)
_ENOKEY = 126  # cifs.upcall found no usable Kerberos ticket
_EKEYEXPIRED = 127

# mount.cifs reports the kernel's errno as "mount error(N)".  On the node a
# missing share or directory cannot be told apart (both ENOENT): the volume
# is not there, which CSI's NodeStageVolume answers NOT_FOUND.
CIFS_ERRNO: Final[Mapping[int, Failure]] = {
    errno.EACCES: Failure.DENIED,
    errno.EPERM: Failure.DENIED,
    _EKEYREJECTED: Failure.AUTH_FAILED,
    _ENOKEY: Failure.AUTH_FAILED,
    _EKEYEXPIRED: Failure.AUTH_FAILED,
    errno.ENOENT: Failure.PATH_MISSING,
    errno.ENOTDIR: Failure.NOT_A_DIRECTORY,
    errno.ECONNREFUSED: Failure.UNREACHABLE,
    errno.EHOSTDOWN: Failure.UNREACHABLE,
    errno.EHOSTUNREACH: Failure.UNREACHABLE,
    errno.ENETUNREACH: Failure.UNREACHABLE,
    errno.ETIMEDOUT: Failure.UNREACHABLE,
    errno.ENOTCONN: Failure.UNREACHABLE,
    errno.ECONNRESET: Failure.UNREACHABLE,
    errno.EAGAIN: Failure.BUSY,
}
# mount.nfs exits 32 for every failure and says what happened only in words
# (its own phrase or the strerror text of the errno it met): those words are
# its one report of the cause, so they are looked up here, first match wins.
NFS_MOUNT_TEXT: Final[tuple[tuple[str, Failure], ...]] = (
    ("access denied by server", Failure.DENIED),
    (os.strerror(errno.EACCES), Failure.DENIED),
    (os.strerror(errno.EPERM), Failure.DENIED),
    (os.strerror(errno.ENOENT), Failure.PATH_MISSING),
    (os.strerror(errno.ENOTDIR), Failure.NOT_A_DIRECTORY),
    (os.strerror(errno.ECONNREFUSED), Failure.UNREACHABLE),
    (os.strerror(errno.ETIMEDOUT), Failure.UNREACHABLE),
    (os.strerror(errno.EHOSTUNREACH), Failure.UNREACHABLE),
    (os.strerror(errno.ENETUNREACH), Failure.UNREACHABLE),
    (os.strerror(errno.ESTALE), Failure.STALE),
    ("version or transport protocol is not supported", Failure.UNSUPPORTED),
    (os.strerror(errno.EPROTONOSUPPORT), Failure.UNSUPPORTED),
)


def errno_name(code: int | None) -> str:
    return errno.errorcode.get(code or 0, str(code))


def cifs_error(errnum: int, message: str) -> DriverError:
    failure = CIFS_ERRNO.get(errnum, Failure.UNKNOWN)
    if errnum == _ENOKEY:
        hint = (
            "no usable Kerberos ticket: check the secret's keytab or cache, and that the node "
            "has keyutils and cifs-utils' request-key setup for cifs.upcall"
        )
    else:
        hint = "check the node-stage secret" if failure in _CREDENTIAL_FAILURES else ""
    return failures.error(failure, message, hint)


def nfs_mount_error(output: str, message: str) -> DriverError:
    for text, failure in NFS_MOUNT_TEXT:
        if text in output:
            return failures.error(failure, message)
    return failures.error(Failure.UNKNOWN, message)


_CREDENTIAL_FAILURES: Final = frozenset({Failure.DENIED, Failure.AUTH_FAILED})


def scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return " ".join(text.split())[-600:]


def kdc_error(tool: str, returncode: int, output: str, principal: str) -> DriverError:
    """A failed kinit/kvno as a domain error naming the KDC's reason in our
    own words (``driver.kerberos_reasons``); the tool's text is never quoted."""
    reason = kerberos_reason(output)
    where = f"Kerberos: {tool} for {principal} failed"
    if reason is None:
        return Internal(
            f"{where} (exit {returncode}, for a reason the driver does not know; "
            f"run {tool} by hand on the node, or see the KDC's log)"
        )
    message = f"{where}: {reason.said}"
    if reason.failure is Failure.AUTH_FAILED:
        return Unauthenticated(message + " (check the keytab or credential cache in the secret)")
    if reason.failure is Failure.UNREACHABLE:
        return Unavailable(message + " (set the secret's kdc key or the chart's krb5 values)")
    if reason.failure is Failure.CONFLICT:
        return FailedPrecondition(
            message + " (the file server has no cifs/<name> or nfs/<name> service principal "
            "under the name in source: use the name it is registered with in the directory)"
        )
    return Internal(message)
