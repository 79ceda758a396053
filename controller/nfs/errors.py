"""NFS failures as domain errors: libnfs' errno values and NFS status names.

Errors come back from libnfs as negative errno values (and, for statuses it
has no errno for, a status name in its message) and are mapped once, in
:func:`errno_to_error`, through ``driver.failures``.  A connection that broke
under a call is :class:`ConnectionLost`, which the backend retries once on a
new connection.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from typing import Final

from driver import failures
from driver.errors import DriverError, Unavailable
from driver.failures import Failure

# What libnfs reports beyond the shared errno table: an RPC that failed
# with its socket (EFAULT) or was cancelled (EINTR, context torn down).
_NFS_ERRNO: Final[Mapping[int, Failure]] = {
    **failures.ERRNO,
    errno.EFAULT: Failure.UNREACHABLE,
    errno.EINTR: Failure.UNREACHABLE,
}
# At mount (connect, then look up the export) fewer answers make sense: a
# missing export is a configuration problem (never "volume gone"), and
# anything unexpected means this server is not usable as configured.
# NFSv3 servers (ganesha, knfsd's mountd) answer MNT3ERR_ACCES for a path
# they do not export at all, so a refusal at mount is not told apart from a
# missing export: both are the StorageClass's problem, not the volume's.
_MOUNT_ERRNO: Final[Mapping[int, Failure]] = {
    errno.ENOENT: Failure.SHARE_MISSING,
    errno.EACCES: Failure.SHARE_REFUSED,
    errno.EPERM: Failure.SHARE_REFUSED,
    errno.ETIMEDOUT: Failure.TIMED_OUT,
}
# Answers of a one-step RMDIR that mean "walk the tree instead".
WALK_INSTEAD: Final = frozenset(
    {Failure.NOT_EMPTY, Failure.NOT_A_DIRECTORY, Failure.IS_A_DIRECTORY}
)
# libnfs 4.0 reports an NFS status it has no errno for as ERANGE and names
# the status in its error text ("... failed with NFS4ERR_GRACE(-5)"): that
# name is the only carrier of the status, so it is read from there.
_NFS_STATUS_NAME: Final = re.compile(r"\b(NFS[34]?ERR_[A-Z_]+)\b")
NFS_STATUS: Final[Mapping[str, Failure]] = {
    "NFS4ERR_GRACE": Failure.BUSY,
    "NFS4ERR_DELAY": Failure.BUSY,
    "NFS3ERR_JUKEBOX": Failure.BUSY,
    "NFS4ERR_STALE": Failure.STALE,
    "NFS4ERR_EXPIRED": Failure.STALE,
    "NFS4ERR_STALE_CLIENTID": Failure.STALE,
    "NFS4ERR_STALE_STATEID": Failure.STALE,
    "NFS4ERR_BADHANDLE": Failure.STALE,
    "NFS4ERR_WRONGSEC": Failure.DENIED,
    "NFS4ERR_NAMETOOLONG": Failure.BAD_NAME,
    "NFS3ERR_NAMETOOLONG": Failure.BAD_NAME,
    "NFS4ERR_BADNAME": Failure.BAD_NAME,
    "NFS4ERR_NOTEMPTY": Failure.NOT_EMPTY,
    "NFS3ERR_NOTEMPTY": Failure.NOT_EMPTY,
}

# nfsstat4 (RFC 7530) → errno.  Up to 31 they equal Linux errno values; 63
# and up follow other systems' numbering and must be translated.
_NFS4ERR_ERRNO: Final = {
    1: errno.EPERM,
    2: errno.ENOENT,
    5: errno.EIO,
    6: errno.ENXIO,
    13: errno.EACCES,
    17: errno.EEXIST,
    18: errno.EXDEV,
    20: errno.ENOTDIR,
    21: errno.EISDIR,
    22: errno.EINVAL,
    27: errno.EFBIG,
    28: errno.ENOSPC,
    30: errno.EROFS,
    31: errno.EMLINK,
    63: errno.ENAMETOOLONG,
    66: errno.ENOTEMPTY,
    69: errno.EDQUOT,
    70: errno.ESTALE,
    10001: errno.ESTALE,  # NFS4ERR_BADHANDLE
    10008: errno.EAGAIN,  # NFS4ERR_DELAY (BUSY: retried)
    10011: errno.ESTALE,  # NFS4ERR_EXPIRED
    10013: errno.EAGAIN,  # NFS4ERR_GRACE (BUSY: retried)
    10022: errno.ESTALE,  # NFS4ERR_STALE_CLIENTID
    10023: errno.ESTALE,  # NFS4ERR_STALE_STATEID
}


def nfs4_errno(nfsstat: int) -> int:
    """errno for an nfsstat4 of a raw COMPOUND reply (EIO if unknown)."""
    return _NFS4ERR_ERRNO.get(nfsstat, errno.EIO)


def errno_to_error(err: int, op: str, path: str, detail: str = "") -> DriverError:
    """Map a libnfs result (``-errno`` or ``errno``) to a domain error.

    ``op`` and ``path`` (relative to the export) name what failed; ``detail``
    is libnfs' message.  The tables above decide (``driver.failures``).
    """
    code = abs(err)
    name = errno.errorcode.get(code, f"errno {code}")
    where = f"nfs {op} {path!r}"
    text = f"{detail or os.strerror(code)}; {name}"
    if op == "mount":
        return failures.error(_MOUNT_ERRNO.get(code, Failure.UNREACHABLE), where, text)
    found = _NFS_STATUS_NAME.search(detail)
    failure = NFS_STATUS.get(found.group(1)) if found else None
    if failure is None:
        failure = _NFS_ERRNO.get(code, Failure.UNKNOWN)
    return failures.error(failure, where, text)


class ConnectionLost(Unavailable):
    """The connection broke under a call (not: the server refused a new
    one).  Every backend call is idempotent, so it is retried once on a new
    connection before this reaches the caller."""


def rpc_failure(err: int, op: str, path: str, detail: str) -> DriverError:
    """A callback error: EFAULT/EINTR on an established connection mean the
    RPC died with its socket (libnfs' RPC_STATUS_ERROR / _CANCEL)."""
    if op != "mount" and -abs(err) in (-errno.EFAULT, -errno.EINTR):
        return ConnectionLost(errno_to_error(err, op, path, detail).message)
    return errno_to_error(err, op, path, detail)


def copy_error(exc: DriverError) -> DriverError:
    """A fresh error of the same kind (one exception object per waiter)."""
    return type(exc)(exc.message)
