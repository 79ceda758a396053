"""A thin, typed ctypes binding of the libnfs 4.0 shared library (``libnfs13``).

Only what ``controller.nfs.context`` needs: a context, its event-loop hooks
(``get_fd`` / ``which_events`` / ``service``) and the asynchronous
operations the backend uses (directories, files by handle, symlinks,
attributes).  Signatures and structure layouts are taken from
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
import errno
from collections.abc import Callable, Iterator
from ctypes import CFUNCTYPE, POINTER, c_char_p, c_int, c_uint16, c_uint32, c_uint64, c_void_p
from typing import Final

from controller.nfs.structs import (
    Compound4Args,
    DirStat,
    NfsArgop4,
    NfsDirent,
    NfsUrl,
    Timeval,
)
from controller.nfs.xdr import OP_LOOKUP, OP_PUTROOTFH, OP_READLINK, OP_SETATTR, encode_fattr4

#: ``rpc_cb`` status values (libnfs-raw.h).
RPC_STATUS_SUCCESS: Final = 0
RPC_STATUS_ERROR: Final = 1
RPC_STATUS_CANCEL: Final = 2
RPC_STATUS_TIMEOUT: Final = 3

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

#: ``typedef void (*rpc_cb)(struct rpc_context *rpc, int status, void *data,
#: void *private_data);`` -- for raw RPCs; ``data`` is the decoded reply
#: (``COMPOUND4res *`` for NFSv4) or the error string.
RpcCallback = CFUNCTYPE(None, c_void_p, c_int, c_void_p, c_void_p)


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
            "nfs_open_async": (c_int, [ctx, c_char_p, c_int, NfsCallback, c_void_p]),
            "nfs_create_async": (c_int, [ctx, c_char_p, c_int, c_int, NfsCallback, c_void_p]),
            "nfs_close_async": (c_int, [ctx, c_void_p, NfsCallback, c_void_p]),
            "nfs_fsync_async": (c_int, [ctx, c_void_p, NfsCallback, c_void_p]),
            "nfs_pread_async": (
                c_int,
                [ctx, c_void_p, c_uint64, c_uint64, NfsCallback, c_void_p],
            ),
            "nfs_pwrite_async": (
                c_int,
                [ctx, c_void_p, c_uint64, c_uint64, c_void_p, NfsCallback, c_void_p],
            ),
            "nfs_symlink_async": (c_int, [ctx, c_char_p, c_char_p, NfsCallback, c_void_p]),
            "nfs_readlink_async": (c_int, [ctx, c_char_p, NfsCallback, c_void_p]),
            "nfs_lutimes_async": (
                c_int,
                [ctx, c_char_p, POINTER(Timeval), NfsCallback, c_void_p],
            ),
            "nfs_lchown_async": (c_int, [ctx, c_char_p, c_int, c_int, NfsCallback, c_void_p]),
            "nfs_get_readmax": (c_uint64, [ctx]),
            "nfs_get_writemax": (c_uint64, [ctx]),
            "nfs_get_rpc_context": (c_void_p, [ctx]),
            "rpc_nfs4_compound_async": (
                c_int,
                [c_void_p, RpcCallback, POINTER(Compound4Args), c_void_p],
            ),
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
        return int(
            self._lib.nfs_mkdir2_async(ctx, path.encode(errors="surrogateescape"), mode, cb, data)
        )

    def chmod_async(self, ctx: int, path: str, mode: int, cb: object, data: int) -> int:
        return int(
            self._lib.nfs_chmod_async(ctx, path.encode(errors="surrogateescape"), mode, cb, data)
        )

    def rmdir_async(self, ctx: int, path: str, cb: object, data: int) -> int:
        return int(self._lib.nfs_rmdir_async(ctx, path.encode(errors="surrogateescape"), cb, data))

    def unlink_async(self, ctx: int, path: str, cb: object, data: int) -> int:
        return int(self._lib.nfs_unlink_async(ctx, path.encode(errors="surrogateescape"), cb, data))

    def rename_async(self, ctx: int, old: str, new: str, cb: object, data: int) -> int:
        return int(
            self._lib.nfs_rename_async(
                ctx,
                old.encode(errors="surrogateescape"),
                new.encode(errors="surrogateescape"),
                cb,
                data,
            )
        )

    def stat64_async(self, ctx: int, path: str, cb: object, data: int) -> int:
        return int(self._lib.nfs_stat64_async(ctx, path.encode(errors="surrogateescape"), cb, data))

    def lstat64_async(self, ctx: int, path: str, cb: object, data: int) -> int:
        return int(
            self._lib.nfs_lstat64_async(ctx, path.encode(errors="surrogateescape"), cb, data)
        )

    def opendir_async(self, ctx: int, path: str, cb: object, data: int) -> int:
        return int(
            self._lib.nfs_opendir_async(ctx, path.encode(errors="surrogateescape"), cb, data)
        )

    def statvfs64_async(self, ctx: int, path: str, cb: object, data: int) -> int:
        return int(
            self._lib.nfs_statvfs64_async(ctx, path.encode(errors="surrogateescape"), cb, data)
        )

    # -- files (``fh`` is the ``struct nfsfh *`` an open/create reply gave) --

    def open_async(self, ctx: int, path: str, flags: int, cb: object, data: int) -> int:
        """Reply data: the ``struct nfsfh *``; close it with close_async."""
        return int(
            self._lib.nfs_open_async(ctx, path.encode(errors="surrogateescape"), flags, cb, data)
        )

    def create_async(  # noqa: PLR0917 - mirrors the C signature
        self, ctx: int, path: str, flags: int, mode: int, cb: object, data: int
    ) -> int:
        """Create (``O_TRUNC``, ``O_EXCL``, ``O_NOFOLLOW`` allowed) and open for
        writing; reply data: the ``struct nfsfh *``."""
        return int(
            self._lib.nfs_create_async(
                ctx, path.encode(errors="surrogateescape"), flags, mode, cb, data
            )
        )

    def close_async(self, ctx: int, fh: int, cb: object, data: int) -> int:
        """Frees ``fh`` (also when the reply is an error)."""
        return int(self._lib.nfs_close_async(ctx, fh, cb, data))

    def fsync_async(self, ctx: int, fh: int, cb: object, data: int) -> int:
        return int(self._lib.nfs_fsync_async(ctx, fh, cb, data))

    def pread_async(  # noqa: PLR0917 - mirrors the C signature
        self, ctx: int, fh: int, offset: int, count: int, cb: object, data: int
    ) -> int:
        """Reply: status = bytes read, data = the bytes (valid during the callback)."""
        return int(self._lib.nfs_pread_async(ctx, fh, offset, count, cb, data))

    def pwrite_async(  # noqa: PLR0917 - mirrors the C signature
        self,
        ctx: int,
        fh: int,
        offset: int,
        buf: ctypes.Array[ctypes.c_char],
        cb: object,
        data: int,
    ) -> int:
        """Reply: status = bytes written.  ``buf`` must stay alive until the
        reply (the caller keeps it with the pending call)."""
        return int(
            self._lib.nfs_pwrite_async(ctx, fh, offset, len(buf), ctypes.addressof(buf), cb, data)
        )

    def symlink_async(self, ctx: int, target: bytes, path: bytes, cb: object, data: int) -> int:
        """``target`` and ``path`` must stay alive until the reply: libnfs
        4.0's NFSv4 symlink keeps the target pointer and encodes it only
        after looking the parent up (measured: garbage in the link when the
        buffer went away).  The caller keeps them with the pending call."""
        return int(self._lib.nfs_symlink_async(ctx, target, path, cb, data))

    def readlink_async(self, ctx: int, path: str, cb: object, data: int) -> int:
        """Reply data: the target as a C string (valid during the callback)."""
        return int(
            self._lib.nfs_readlink_async(ctx, path.encode(errors="surrogateescape"), cb, data)
        )

    def lutimes_async(  # noqa: PLR0917 - mirrors the C signature
        self, ctx: int, path: str, atime_ns: int, mtime_ns: int, cb: object, data: int
    ) -> int:
        """utimes without following a final symlink; microsecond precision
        (``struct timeval``).  The times are encoded before this returns."""
        times = (Timeval * 2)()
        for slot, ns in ((0, atime_ns), (1, mtime_ns)):
            seconds, rest = divmod(ns, 1_000_000_000)
            times[slot].tv_sec = seconds
            times[slot].tv_usec = rest // 1000
        return int(
            self._lib.nfs_lutimes_async(ctx, path.encode(errors="surrogateescape"), times, cb, data)
        )

    def lchown_async(  # noqa: PLR0917 - mirrors the C signature
        self, ctx: int, path: str, uid: int, gid: int, cb: object, data: int
    ) -> int:
        return int(
            self._lib.nfs_lchown_async(
                ctx, path.encode(errors="surrogateescape"), uid, gid, cb, data
            )
        )

    def readmax(self, ctx: int) -> int:
        """Largest READ the server takes (0 before the mount)."""
        return int(self._lib.nfs_get_readmax(ctx))

    def writemax(self, ctx: int) -> int:
        """Largest WRITE the server takes (0 before the mount)."""
        return int(self._lib.nfs_get_writemax(ctx))

    def nfs4_setattr_mode_async(
        self, ctx: int, components: list[str], mode: int, cb: object, data: int
    ) -> int:
        """NFSv4 only: SETATTR(mode), see :meth:`nfs4_setattr_async`."""
        mask, values = encode_fattr4(mode=mode)
        return self.nfs4_setattr_async(ctx, components, mask, values, cb, data)

    def nfs4_setattr_async(  # noqa: PLR0917 - the compound's parts, in their order
        self,
        ctx: int,
        components: list[str],
        mask: tuple[int, int],
        values: bytes,
        cb: object,
        data: int,
    ) -> int:
        """NFSv4 only: COMPOUND { PUTROOTFH; LOOKUP c for c in components;
        SETATTR(mask, values) } on the context's connection (see
        :func:`encode_fattr4`).  ``cb`` is an :data:`RpcCallback`.  The
        arguments are encoded before this returns, so the buffers built here
        may go away afterwards."""
        keep: list[object] = []

        def setattr_op(last: NfsArgop4) -> None:
            last.argop = OP_SETATTR
            words = (c_uint32 * 2)(*mask)
            value = ctypes.create_string_buffer(values, max(len(values), 1))
            keep.extend((words, value))
            attrs = last.nfs_argop4_u.opsetattr.obj_attributes
            attrs.attrmask.bitmap4_len = 2
            attrs.attrmask.bitmap4_val = ctypes.cast(words, POINTER(c_uint32))
            attrs.attr_vals.attrlist4_len = len(values)
            attrs.attr_vals.attrlist4_val = ctypes.addressof(value)

        return self._nfs4_path_compound(ctx, components, setattr_op, cb, data)

    def nfs4_readlink_async(self, ctx: int, components: list[str], cb: object, data: int) -> int:
        """NFSv4 only: COMPOUND { PUTROOTFH; LOOKUP...; READLINK }.  Read the
        reply with :func:`readlink_result`.

        Why not nfs_readlink_async: libnfs 4.0 hands the XDR-decoded link
        text to the callback as a C string, but that buffer is not
        NUL-terminated (measured: bytes of garbage after the target)."""

        def readlink_op(last: NfsArgop4) -> None:
            last.argop = OP_READLINK

        return self._nfs4_path_compound(ctx, components, readlink_op, cb, data)

    def _nfs4_path_compound(
        self,
        ctx: int,
        components: list[str],
        last_op: Callable[[NfsArgop4], None],
        cb: object,
        data: int,
    ) -> int:
        rpc = self._lib.nfs_get_rpc_context(ctx)
        if not rpc:
            return -errno.ENOTCONN
        ops = (NfsArgop4 * (len(components) + 2))()
        ops[0].argop = OP_PUTROOTFH
        keep: list[object] = []
        for i, name in enumerate(components, start=1):
            encoded = name.encode(errors="surrogateescape")
            raw = ctypes.create_string_buffer(encoded, len(encoded))
            keep.append(raw)
            ops[i].argop = OP_LOOKUP
            ops[i].nfs_argop4_u.oplookup.objname.utf8string_len = len(raw)
            ops[i].nfs_argop4_u.oplookup.objname.utf8string_val = ctypes.addressof(raw)
        last_op(ops[len(components) + 1])
        args = Compound4Args()
        args.minorversion = 0
        args.argarray.argarray_len = len(ops)
        args.argarray.argarray_val = ctypes.cast(ops, POINTER(NfsArgop4))
        rc = int(self._lib.rpc_nfs4_compound_async(rpc, cb, ctypes.byref(args), data))
        del keep
        return rc

    # -- directory handles (never block) ---------------------------------

    def readdir_all(self, ctx: int, nfsdir: int) -> list[tuple[str, int, int]]:
        """All entries of an opened directory as (name, type, mode); no
        network traffic (opendir already read everything)."""
        return [(name, int(d.type), int(d.mode)) for name, d in self._dirents(ctx, nfsdir)]

    def readdir_stats(self, ctx: int, nfsdir: int) -> list[DirStat]:
        """All entries of an opened directory with their attributes (no
        network traffic: opendir already read everything)."""
        return [
            DirStat(
                name=name,
                type=int(d.type),
                mode=int(d.mode) & 0o7777,
                size=int(d.size),
                uid=int(d.uid),
                gid=int(d.gid),
                inode=int(d.inode),
                atime_ns=int(d.atime.tv_sec) * 1_000_000_000 + int(d.atime_nsec),
                mtime_ns=int(d.mtime.tv_sec) * 1_000_000_000 + int(d.mtime_nsec),
            )
            for name, d in self._dirents(ctx, nfsdir)
        ]

    def _dirents(self, ctx: int, nfsdir: int) -> Iterator[tuple[str, NfsDirent]]:
        while ent := self._lib.nfs_readdir(ctx, nfsdir):
            d: NfsDirent = ent.contents
            name: bytes = d.name or b""
            yield name.decode(errors="surrogateescape"), d

    def closedir(self, ctx: int, nfsdir: int) -> None:
        self._lib.nfs_closedir(ctx, nfsdir)
