"""The C layouts of libnfs 4.0 (``libnfs13``) that the binding reads and fills.

Taken from ``/usr/include/nfsc/libnfs.h`` and ``libnfs-raw-nfs4.h`` of
Debian's ``libnfs-dev`` 4.0.0 (checked with ``offsetof``/``sizeof`` on
x86_64; ``tests/unit/test_nfs_errors.py`` pins them), and the helpers that
copy a reply out of libnfs' memory before the callback returns.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, Structure, c_char_p, c_int, c_long, c_uint, c_uint32, c_uint64, c_void_p
from dataclasses import dataclass
from typing import Final

from controller.nfs.xdr import NFS4_OK, OP_READLINK


class NfsStat64(Structure):
    """``struct nfs_stat_64`` (136 bytes)."""

    _fields_ = (
        ("nfs_dev", c_uint64),
        ("nfs_ino", c_uint64),
        ("nfs_mode", c_uint64),
        ("nfs_nlink", c_uint64),
        ("nfs_uid", c_uint64),
        ("nfs_gid", c_uint64),
        ("nfs_rdev", c_uint64),
        ("nfs_size", c_uint64),
        ("nfs_blksize", c_uint64),
        ("nfs_blocks", c_uint64),
        ("nfs_atime", c_uint64),
        ("nfs_mtime", c_uint64),
        ("nfs_ctime", c_uint64),
        ("nfs_atime_nsec", c_uint64),
        ("nfs_mtime_nsec", c_uint64),
        ("nfs_ctime_nsec", c_uint64),
        ("nfs_used", c_uint64),
    )


class NfsStatvfs64(Structure):
    """``struct nfs_statvfs_64`` (88 bytes), the result of statvfs64."""

    _fields_ = (
        ("f_bsize", c_uint64),
        ("f_frsize", c_uint64),
        ("f_blocks", c_uint64),
        ("f_bfree", c_uint64),
        ("f_bavail", c_uint64),
        ("f_files", c_uint64),
        ("f_ffree", c_uint64),
        ("f_favail", c_uint64),
        ("f_fsid", c_uint64),
        ("f_flag", c_uint64),
        ("f_namemax", c_uint64),
    )


class Timeval(Structure):
    """``struct timeval`` (glibc, 64-bit: two ``long``)."""

    _fields_ = (("tv_sec", c_long), ("tv_usec", c_long))


class NfsDirent(Structure):
    """``struct nfsdirent`` (160 bytes); ``type`` is an NF3* constant."""


NfsDirent._fields_ = (
    ("next", POINTER(NfsDirent)),
    ("name", c_char_p),
    ("inode", c_uint64),
    ("type", c_uint32),
    ("mode", c_uint32),
    ("size", c_uint64),
    ("atime", Timeval),
    ("mtime", Timeval),
    ("ctime", Timeval),
    ("uid", c_uint32),
    ("gid", c_uint32),
    ("nlink", c_uint32),
    ("dev", c_uint64),
    ("rdev", c_uint64),
    ("blksize", c_uint64),
    ("blocks", c_uint64),
    ("used", c_uint64),
    ("atime_nsec", c_uint32),
    ("mtime_nsec", c_uint32),
    ("ctime_nsec", c_uint32),
)

# enum ftype3 (libnfs-raw-nfs.h); nfsdirent.type uses these for v3 and v4.
NF3REG: Final = 1
NF3DIR: Final = 2
NF3LNK: Final = 5


NF3BLK: Final = 3
NF3CHR: Final = 4
NF3SOCK: Final = 6
NF3FIFO: Final = 7


@dataclass(frozen=True, slots=True)
class DirStat:
    """One entry of :meth:`LibNfs.readdir_stats` (``type`` is an NF3* value)."""

    name: str
    type: int
    mode: int
    size: int
    uid: int
    gid: int
    inode: int
    atime_ns: int
    mtime_ns: int


class NfsUrl(Structure):
    """``struct nfs_url``."""

    _fields_ = (("server", c_char_p), ("path", c_char_p), ("file", c_char_p))


# -- NFSv4 COMPOUND (libnfs-raw-nfs4.h), just enough for SETATTR and READLINK --


class Utf8String(Structure):
    """``utf8string`` / ``utf8str_cs`` / ``component4`` (16 bytes)."""

    _fields_ = (("utf8string_len", c_uint), ("utf8string_val", c_void_p))


class Bitmap4(Structure):
    _fields_ = (("bitmap4_len", c_uint), ("bitmap4_val", POINTER(c_uint32)))


class Attrlist4(Structure):
    _fields_ = (("attrlist4_len", c_uint), ("attrlist4_val", c_void_p))


class Fattr4(Structure):
    _fields_ = (("attrmask", Bitmap4), ("attr_vals", Attrlist4))


class Stateid4(Structure):
    _fields_ = (("seqid", c_uint32), ("other", ctypes.c_char * 12))


class Setattr4Args(Structure):
    _fields_ = (("stateid", Stateid4), ("obj_attributes", Fattr4))


class Lookup4Args(Structure):
    _fields_ = (("objname", Utf8String),)


class NfsArgop4Union(ctypes.Union):
    """The union of ``struct nfs_argop4``: 128 bytes on x86_64 (its size is
    pinned by a test; only the members used here are spelled out)."""

    _fields_ = (
        ("oplookup", Lookup4Args),
        ("opsetattr", Setattr4Args),
        ("_size", c_uint64 * 16),
    )


class NfsArgop4(Structure):
    """``struct nfs_argop4`` (136 bytes, union at offset 8)."""

    _fields_ = (("argop", c_int), ("nfs_argop4_u", NfsArgop4Union))


class ArgArray(Structure):
    """The anonymous ``argarray`` struct inside COMPOUND4args."""

    _fields_ = (("argarray_len", c_uint), ("argarray_val", POINTER(NfsArgop4)))


class Compound4Args(Structure):
    """``struct COMPOUND4args`` (40 bytes, argarray at offset 24)."""

    _fields_ = (("tag", Utf8String), ("minorversion", c_uint32), ("argarray", ArgArray))


def compound_status(data: int) -> int:
    """``COMPOUND4res.status`` (nfsstat4, the first field)."""
    return int(ctypes.c_int32.from_address(data).value)


# Layout of the reply structures (LP64, measured with gcc offsetof/sizeof
# against libnfs-raw-nfs4.h 4.0): COMPOUND4res.resarray at 24 (len u_int)
# and 32 (pointer); sizeof(nfs_resop4) 160 with the union at 8;
# READLINK4res.status at 0 and its linktext4 (len at 0, val at 8) at 8.
RES_ARRAY_LEN_OFFSET: Final = 24
RES_ARRAY_VAL_OFFSET: Final = 32
RESOP4_SIZE: Final = 160
RESOP4_UNION_OFFSET: Final = 8
READLINK4_LINK_OFFSET: Final = 8


def readlink_result(data: int) -> bytes | None:
    """The link text of a PUTROOTFH/LOOKUP.../READLINK reply whose status is
    NFS4_OK; None if the last result is not a READLINK."""
    count = ctypes.c_uint32.from_address(data + RES_ARRAY_LEN_OFFSET).value
    array = ctypes.c_void_p.from_address(data + RES_ARRAY_VAL_OFFSET).value
    if not count or not array:
        return None
    last = array + (count - 1) * RESOP4_SIZE
    if ctypes.c_int32.from_address(last).value != OP_READLINK:
        return None
    result = last + RESOP4_UNION_OFFSET
    if ctypes.c_int32.from_address(result).value != NFS4_OK:
        return None
    link = result + READLINK4_LINK_OFFSET
    length = ctypes.c_uint32.from_address(link).value
    pointer = ctypes.c_void_p.from_address(link + 8).value
    return ctypes.string_at(pointer, length) if pointer and length else b""


def stat_from(data: int) -> NfsStat64:
    """Copies the ``struct nfs_stat_64`` a stat callback points at."""
    return NfsStat64.from_buffer_copy(ctypes.string_at(data, ctypes.sizeof(NfsStat64)))


def statvfs_from(data: int) -> NfsStatvfs64:
    """Copies the ``struct nfs_statvfs_64`` a statvfs64 callback points at."""
    return NfsStatvfs64.from_buffer_copy(ctypes.string_at(data, ctypes.sizeof(NfsStatvfs64)))


def bytes_from(data: int | None, count: int) -> bytes:
    """Copies ``count`` bytes a pread callback points at."""
    return ctypes.string_at(data, count) if data and count > 0 else b""


def text_from(data: int | None) -> str:
    """The C string a readlink callback points at (undecodable bytes kept
    as surrogates, like ``os.readlink``)."""
    return ctypes.string_at(data).decode(errors="surrogateescape") if data else ""


def error_from(data: int | None) -> str:
    """The error string a failed callback points at (may be NULL)."""
    return ctypes.string_at(data).decode(errors="replace") if data else ""
