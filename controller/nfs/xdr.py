"""NFSv4 values and the XDR encoding of SETATTR attributes: pure, no ctypes.

Why raw COMPOUNDs at all: libnfs 4.0's nfs_chmod_async()/nfs_lchmod_async()
on NFSv4 send an OPEN to get a stateid, and OPEN of a directory fails with
NFS4ERR_ISDIR (measured against nfs-ganesha); its utimes/chown do the same.
Attributes are set with a raw PUTROOTFH + LOOKUP... + SETATTR compound instead
(anonymous stateid), whose attribute values are encoded here (RFC 7530).
LOOKUP does not follow a symlink in the last component, so this also reaches a
symlink itself.
"""

from __future__ import annotations

from typing import Final

OP_LOOKUP: Final = 15
OP_PUTROOTFH: Final = 24
OP_READLINK: Final = 27
OP_SETATTR: Final = 34
FATTR4_MODE: Final = 33
FATTR4_OWNER: Final = 36
FATTR4_OWNER_GROUP: Final = 37
FATTR4_TIME_ACCESS_SET: Final = 48
FATTR4_TIME_MODIFY_SET: Final = 54
SET_TO_CLIENT_TIME4: Final = 1
NFS4_OK: Final = 0
NFS4ERR_BADOWNER: Final = 10039


def _xdr_string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(4, "big") + raw + b"\0" * (-len(raw) % 4)


def _xdr_settime(ns: int) -> bytes:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return (
        SET_TO_CLIENT_TIME4.to_bytes(4, "big")
        + seconds.to_bytes(8, "big", signed=True)
        + nanos.to_bytes(4, "big")
    )


def encode_fattr4(
    *,
    mode: int | None = None,
    owner: str | None = None,
    group: str | None = None,
    atime_ns: int | None = None,
    mtime_ns: int | None = None,
) -> tuple[tuple[int, int], bytes]:
    """The attribute mask (two words) and XDR values of a SETATTR ``fattr4``.

    Values go in the order of their attribute numbers (RFC 7530 5.x); all
    the attributes used here live in the second mask word."""
    mask = 0
    values = b""
    if mode is not None:
        mask |= 1 << (FATTR4_MODE - 32)
        values += (mode & 0o7777).to_bytes(4, "big")
    if owner is not None:
        mask |= 1 << (FATTR4_OWNER - 32)
        values += _xdr_string(owner)
    if group is not None:
        mask |= 1 << (FATTR4_OWNER_GROUP - 32)
        values += _xdr_string(group)
    if atime_ns is not None:
        mask |= 1 << (FATTR4_TIME_ACCESS_SET - 32)
        values += _xdr_settime(atime_ns)
    if mtime_ns is not None:
        mask |= 1 << (FATTR4_TIME_MODIFY_SET - 32)
        values += _xdr_settime(mtime_ns)
    return (0, mask), values
