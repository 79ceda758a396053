"""A thin, typed ctypes binding of the libnfs 4.0 shared library (``libnfs13``).

Only what ``controller.nfs`` needs: a context, its event-loop hooks
(``get_fd`` / ``which_events`` / ``service``) and a few asynchronous
operations.  Signatures and structure layouts are taken from
``/usr/include/nfsc/libnfs.h`` of Debian's ``libnfs-dev`` 4.0.0 (checked with
``offsetof``/``sizeof`` on x86_64; ``tests/unit/test_nfs_errors.py`` pins
them).  Nothing here blocks: every ``*_async`` call only queues a request;
replies arrive through the callback from inside :meth:`LibNfs.service`.

NFS versions: libnfs 4.0 speaks NFSv3 and NFSv4.0 only.  Its COMPOUND
requests always carry ``minorversion = 0`` (there is no API to choose another
minor version; that came with libnfs 6), so NFSv4.1/4.2 are not available
through this library.  ``NFS_V4`` therefore means NFSv4.0.

Not thread safe: one context must only ever be used from one thread (the
asyncio loop's).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_int,
    c_long,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Final

NFS_V3: Final = 3
NFS_V4: Final = 4

# poll(2) event bits, as nfs_which_events() returns and nfs_service() takes.
POLLIN: Final = 0x001
POLLOUT: Final = 0x004
POLLERR: Final = 0x008
POLLHUP: Final = 0x010

#: ``typedef void (*nfs_cb)(int err, struct nfs_context *nfs, void *data,
#: void *private_data);`` -- ``data`` is the result (or the error string when
#: ``err < 0``), valid only during the call.
NfsCallback = CFUNCTYPE(None, c_int, c_void_p, c_void_p, c_void_p)


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


class NfsUrl(Structure):
    """``struct nfs_url``."""

    _fields_ = (("server", c_char_p), ("path", c_char_p), ("file", c_char_p))


class LibNfsMissing(RuntimeError):
    """The libnfs shared library could not be loaded."""


def _load() -> ctypes.CDLL:
    names = [ctypes.util.find_library("nfs"), "libnfs.so.13"]
    for name in names:
        if not name:
            continue
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    msg = "libnfs not found: apt-get install -y libnfs13"
    raise LibNfsMissing(msg)


class LibNfs:
    """The loaded library with argument and result types declared once.

    Contexts and directory handles are plain ``int`` addresses (``c_void_p``
    values); the caller owns their life cycle.
    """

    def __init__(self, cdll: ctypes.CDLL | None = None) -> None:
        lib = cdll if cdll is not None else _load()
        self._lib = lib
        ctx = c_void_p
        sig: dict[str, tuple[object, list[object]]] = {
            "nfs_init_context": (ctx, []),
            "nfs_destroy_context": (None, [ctx]),
            "nfs_get_error": (c_char_p, [ctx]),
            "nfs_get_fd": (c_int, [ctx]),
            "nfs_which_events": (c_int, [ctx]),
            "nfs_service": (c_int, [ctx, c_int]),
            "nfs_queue_length": (c_int, [ctx]),
            "nfs_set_version": (c_int, [ctx, c_int]),
            "nfs_set_timeout": (None, [ctx, c_int]),
            "nfs_set_autoreconnect": (None, [ctx, c_int]),
            "nfs_set_uid": (None, [ctx, c_int]),
            "nfs_set_gid": (None, [ctx, c_int]),
            "nfs_set_tcp_syncnt": (None, [ctx, c_int]),
            "nfs_umask": (c_uint16, [ctx, c_uint16]),
            "nfs_parse_url_dir": (POINTER(NfsUrl), [ctx, c_char_p]),
            "nfs_destroy_url": (None, [POINTER(NfsUrl)]),
            "nfs_mount_async": (c_int, [ctx, c_char_p, c_char_p, NfsCallback, c_void_p]),
            "nfs_mkdir2_async": (c_int, [ctx, c_char_p, c_int, NfsCallback, c_void_p]),
            "nfs_chmod_async": (c_int, [ctx, c_char_p, c_int, NfsCallback, c_void_p]),
            "nfs_rmdir_async": (c_int, [ctx, c_char_p, NfsCallback, c_void_p]),
            "nfs_unlink_async": (c_int, [ctx, c_char_p, NfsCallback, c_void_p]),
            "nfs_rename_async": (c_int, [ctx, c_char_p, c_char_p, NfsCallback, c_void_p]),
            "nfs_stat64_async": (c_int, [ctx, c_char_p, NfsCallback, c_void_p]),
            "nfs_lstat64_async": (c_int, [ctx, c_char_p, NfsCallback, c_void_p]),
            "nfs_opendir_async": (c_int, [ctx, c_char_p, NfsCallback, c_void_p]),
            "nfs_readdir": (POINTER(NfsDirent), [ctx, c_void_p]),
            "nfs_closedir": (None, [ctx, c_void_p]),
            "nfs_statvfs64_async": (c_int, [ctx, c_char_p, NfsCallback, c_void_p]),
        }
        for name, (restype, argtypes) in sig.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes

    # -- context ---------------------------------------------------------

    def init_context(self) -> int:
        ctx: int | None = self._lib.nfs_init_context()
        if not ctx:
            msg = "nfs_init_context failed"
            raise MemoryError(msg)
        return ctx

    def destroy_context(self, ctx: int) -> None:
        """Frees the context; libnfs calls every pending callback first."""
        self._lib.nfs_destroy_context(ctx)

    def get_error(self, ctx: int) -> str:
        raw: bytes | None = self._lib.nfs_get_error(ctx)
        return raw.decode(errors="replace") if raw else ""

    def get_fd(self, ctx: int) -> int:
        return int(self._lib.nfs_get_fd(ctx))

    def which_events(self, ctx: int) -> int:
        return int(self._lib.nfs_which_events(ctx))

    def service(self, ctx: int, revents: int) -> int:
        """0, or -1 when the socket is dead and the context unusable."""
        return int(self._lib.nfs_service(ctx, revents))

    def queue_length(self, ctx: int) -> int:
        return int(self._lib.nfs_queue_length(ctx))

    def set_version(self, ctx: int, version: int) -> int:
        return int(self._lib.nfs_set_version(ctx, version))

    def set_timeout(self, ctx: int, milliseconds: int) -> None:
        self._lib.nfs_set_timeout(ctx, milliseconds)

    def set_autoreconnect(self, ctx: int, retries: int) -> None:
        self._lib.nfs_set_autoreconnect(ctx, retries)

    def set_uid(self, ctx: int, uid: int) -> None:
        self._lib.nfs_set_uid(ctx, uid)

    def set_gid(self, ctx: int, gid: int) -> None:
        self._lib.nfs_set_gid(ctx, gid)

    def set_tcp_syncnt(self, ctx: int, count: int) -> None:
        self._lib.nfs_set_tcp_syncnt(ctx, count)

    def umask(self, ctx: int, mask: int) -> int:
        """Sets the client-side umask applied by mkdir2; returns the old one."""
        return int(self._lib.nfs_umask(ctx, mask))

    def parse_url_dir(self, ctx: int, url: str) -> tuple[str, str]:
        """Parses ``nfs://server/path?arg=value``; the arguments (``version``,
        ``nfsport``, ``mountport``, ``uid``, ...) are applied to ``ctx``.
        Returns (server, path).  This is the only public way in libnfs 4.0 to
        set the NFS and MOUNT ports."""
        parsed = self._lib.nfs_parse_url_dir(ctx, url.encode())
        if not parsed:
            raise ValueError(self.get_error(ctx) or f"bad NFS URL {url!r}")
        try:
            server: bytes = parsed.contents.server or b""
            path: bytes = parsed.contents.path or b""
            return server.decode(), path.decode()
        finally:
            self._lib.nfs_destroy_url(parsed)

    # -- asynchronous operations: 0 = queued, <0 = -errno, cb not called ----

    def mount_async(self, ctx: int, server: str, export: str, cb: object, data: int) -> int:
        return int(self._lib.nfs_mount_async(ctx, server.encode(), export.encode(), cb, data))

    def mkdir2_async(self, ctx: int, path: str, mode: int, cb: object, data: int) -> int:
        return int(self._lib.nfs_mkdir2_async(ctx, path.encode(), mode, cb, data))

    def chmod_async(self, ctx: int, path: str, mode: int, cb: object, data: int) -> int:
        return int(self._lib.nfs_chmod_async(ctx, path.encode(), mode, cb, data))

    def rmdir_async(self, ctx: int, path: str, cb: object, data: int) -> int:
        return int(self._lib.nfs_rmdir_async(ctx, path.encode(), cb, data))

    def unlink_async(self, ctx: int, path: str, cb: object, data: int) -> int:
        return int(self._lib.nfs_unlink_async(ctx, path.encode(), cb, data))

    def rename_async(self, ctx: int, old: str, new: str, cb: object, data: int) -> int:
        return int(self._lib.nfs_rename_async(ctx, old.encode(), new.encode(), cb, data))

    def stat64_async(self, ctx: int, path: str, cb: object, data: int) -> int:
        return int(self._lib.nfs_stat64_async(ctx, path.encode(), cb, data))

    def lstat64_async(self, ctx: int, path: str, cb: object, data: int) -> int:
        return int(self._lib.nfs_lstat64_async(ctx, path.encode(), cb, data))

    def opendir_async(self, ctx: int, path: str, cb: object, data: int) -> int:
        return int(self._lib.nfs_opendir_async(ctx, path.encode(), cb, data))

    def statvfs64_async(self, ctx: int, path: str, cb: object, data: int) -> int:
        return int(self._lib.nfs_statvfs64_async(ctx, path.encode(), cb, data))

    # -- directory handles (never block) ---------------------------------

    def readdir_all(self, ctx: int, nfsdir: int) -> list[tuple[str, int, int]]:
        """All entries of an opened directory as (name, type, mode); no
        network traffic (opendir already read everything)."""
        entries: list[tuple[str, int, int]] = []
        while True:
            ent = self._lib.nfs_readdir(ctx, nfsdir)
            if not ent:
                return entries
            d: NfsDirent = ent.contents
            name: bytes = d.name or b""
            entries.append((name.decode(errors="surrogateescape"), int(d.type), int(d.mode)))

    def closedir(self, ctx: int, nfsdir: int) -> None:
        self._lib.nfs_closedir(ctx, nfsdir)


def stat_from(data: int) -> NfsStat64:
    """Copies the ``struct nfs_stat_64`` a stat callback points at."""
    return NfsStat64.from_buffer_copy(ctypes.string_at(data, ctypes.sizeof(NfsStat64)))


def statvfs_from(data: int) -> NfsStatvfs64:
    """Copies the ``struct nfs_statvfs_64`` a statvfs64 callback points at."""
    return NfsStatvfs64.from_buffer_copy(ctypes.string_at(data, ctypes.sizeof(NfsStatvfs64)))


def error_from(data: int | None) -> str:
    """The error string a failed callback points at (may be NULL)."""
    return ctypes.string_at(data).decode(errors="replace") if data else ""
