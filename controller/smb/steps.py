"""The blocking SMB steps, each registered under a name.

A step is one blocking smbclient call (or a few) that runs in a channel's
threads, in this process or in the worker process.  Steps take plain,
picklable arguments plus smbclient's keyword arguments (credentials and
connection cache, added by the connection at call time), and return plain
values.  The worker's wire carries a step's *name*; the child looks it up in
:data:`STEPS`, so no function is ever pickled.

Every step is idempotent unless a caller says otherwise (``retry=False``):
a missing entry on delete and an existing directory on create are outcomes,
not errors.
"""

from __future__ import annotations

import datetime
import errno
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar

import smbclient
import smbclient._os as smbclient_os
import smbclient.shutil as smbclient_shutil
from smbclient import _io as smbclient_io
from smbclient._io import SMBDirectoryIO, SMBFileTransaction
from smbprotocol.exceptions import SMBOSError
from smbprotocol.file_info import FileDispositionInformation
from smbprotocol.open import CreateOptions, FilePipePrinterAccessMask

from controller.share import FileInfo, FileKind, RemoveResult
from controller.smb.errors import Status, is_missing, ntstatus

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["STEPS", "Entry", "MkdirResult", "Step", "filetime", "unc"]

T = TypeVar("T")

#: Bytes per read/write step (one trip to a worker thread).
IO_CHUNK: Final = 1 << 20
#: Bytes per SMB READ/WRITE request: one credit (64 KiB).  Larger requests
#: take several credits each, and concurrent ones then run the session out
#: of credits (measured against Samba: "Request requires 1 credits but only
#: 0 credits are available"); smbprotocol does not queue for credits.  With
#: at most ``max_in_flight`` requests of one credit each, they never run out.
_PIECE: Final = 64 << 10

# FILE_ATTRIBUTE_* ([MS-FSCC] 2.6)
ATTR_READONLY: Final = 0x1
ATTR_DIRECTORY: Final = 0x10
ATTR_REPARSE_POINT: Final = 0x400


@dataclass(frozen=True, slots=True)
class Step(Generic[T]):
    """A blocking step and the name it travels under.

    ``handle`` tells the worker process which steps open a file (their result
    stays in the child; the parent gets a reference) and which close one.
    """

    name: str
    fn: Callable[..., T]
    handle: Literal["opens", "closes"] | None = None


class MkdirResult(Enum):
    CREATED = "created"
    EXISTED = "existed"
    NOT_A_DIRECTORY = "not a directory"


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    attributes: int

    @property
    def is_dir(self) -> bool:
        return bool(self.attributes & ATTR_DIRECTORY)

    @property
    def is_link(self) -> bool:
        return bool(self.attributes & ATTR_REPARSE_POINT)


def unc(share_unc: str, parts: tuple[str, ...]) -> str:
    return share_unc + "\\" + "\\".join(parts)


def _mkdir(share_unc: str, parts: tuple[str, ...], **kw: Any) -> tuple[MkdirResult, str]:
    target = unc(share_unc, parts)
    try:
        smbclient.mkdir(target, **kw)
    except SMBOSError as exc:
        if exc.errno == errno.EEXIST:
            return _existing(target, "/".join(parts), **kw)
        if not is_missing(exc):
            raise
    else:
        return MkdirResult.CREATED, ""
    # A parent is missing: create from the top down (makedirs).
    for depth in range(1, len(parts) + 1):
        prefix = unc(share_unc, parts[:depth])
        try:
            smbclient.mkdir(prefix, **kw)
        except SMBOSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            result = _existing(prefix, "/".join(parts[:depth]), **kw)
            if result[0] is MkdirResult.NOT_A_DIRECTORY or depth == len(parts):
                return result
    return MkdirResult.CREATED, ""


def _existing(target: str, rel: str, **kw: Any) -> tuple[MkdirResult, str]:
    attributes = int(smbclient.stat(target, **kw).st_file_attributes)
    if attributes & ATTR_DIRECTORY:
        return MkdirResult.EXISTED, rel
    return MkdirResult.NOT_A_DIRECTORY, rel


def _attributes(target: str, **kw: Any) -> int | None:
    """Attributes of ``target`` (not following a reparse point); None if missing."""
    try:
        return int(smbclient.lstat(target, **kw).st_file_attributes)
    except SMBOSError as exc:
        if is_missing(exc):
            return None
        raise


def _list(target: str, **kw: Any) -> list[Entry] | None:
    """Entries of directory ``target``; None if it vanished."""
    try:
        with smbclient.scandir(target, **kw) as entries:
            return [Entry(str(e.name), int(e.smb_info.file_attributes)) for e in entries]
    except SMBOSError as exc:
        if is_missing(exc):
            return None
        raise


def _set_attributes(target: str, attributes: int, **kw: Any) -> None:
    # smbclient has no public "chattr"; this is the helper its own shutil uses.
    smbclient_os._set_basic_information(
        target, file_attributes=attributes, follow_symlinks=False, **kw
    )


def _remove(target: str, directory: bool, **kw: Any) -> bool:
    """Delete one entry (smbclient clears its read-only attribute first)."""
    try:
        if directory:
            smbclient.rmdir(target, **kw)
        else:
            smbclient.remove(target, **kw)
    except SMBOSError as exc:
        if is_missing(exc):
            return False
        raise
    return True


#: Answers of the one-step removal that mean "walk it instead".
_NOT_IN_ONE_STEP: Final = frozenset(
    {
        Status.DIRECTORY_NOT_EMPTY,
        Status.NOT_A_DIRECTORY,  # a file: the walk removes it
        Status.CANNOT_DELETE,  # read-only: the walk clears the attribute first
        Status.ACCESS_DENIED,  # the walk reports what exactly is refused
    }
)


def _remove_empty(target: str, **kw: Any) -> RemoveResult:
    """An empty directory removed in one round trip: one compound of CREATE
    (DELETE access) + SET_INFO(FileDispositionInformation) + CLOSE.

    Not the bare delete-on-close CREATE + CLOSE: Samba (4.17, measured)
    takes FILE_DELETE_ON_CLOSE on a non-empty directory, answers the CLOSE
    with success and keeps the directory, so the caller could not tell.  The
    disposition is refused with STATUS_DIRECTORY_NOT_EMPTY instead.  smbclient's
    own ``rmdir`` sends a fourth request (SET_INFO of the basic attributes).
    """
    raw = SMBDirectoryIO(
        target,
        mode="r",
        share_access="rwd",
        desired_access=FilePipePrinterAccessMask.DELETE,
        create_options=CreateOptions.FILE_DIRECTORY_FILE | CreateOptions.FILE_OPEN_REPARSE_POINT,
        **kw,
    )
    disposition = FileDispositionInformation()
    disposition["delete_pending"] = True
    try:
        with SMBFileTransaction(raw) as transaction:
            smbclient_io.set_info(transaction, disposition)
    except SMBOSError as exc:
        if is_missing(exc):
            return "missing"
        if ntstatus(exc) in _NOT_IN_ONE_STEP:
            return "not_empty"
        raise
    return "removed"


def _rename(src: str, dst: str, **kw: Any) -> None:
    smbclient.rename(src, dst, **kw)


_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_FILETIME_EPOCH: Final = 116_444_736_000_000_000  # 1970-01-01 in 100 ns since 1601


def _ns(when: datetime.datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return (when - _EPOCH) // datetime.timedelta(microseconds=1) * 1000


def filetime(ns: int | None) -> int:
    """FILETIME for SET_INFO; 0 means "leave unchanged"."""
    return 0 if ns is None else ns // 100 + _FILETIME_EPOCH


def _kind(attributes: int) -> FileKind:
    if attributes & ATTR_REPARSE_POINT:
        return "symlink"
    if attributes & ATTR_DIRECTORY:
        return "dir"
    return "file"


def _file_info(attributes: int, size: int, mtime_ns: int, atime_ns: int, file_id: int) -> FileInfo:
    kind = _kind(attributes)
    return FileInfo(
        kind=kind,
        size=size if kind == "file" else 0,
        mtime_ns=mtime_ns,
        atime_ns=atime_ns,
        read_only=bool(attributes & ATTR_READONLY),
        file_id=file_id,
    )


def _lstat(target: str, **kw: Any) -> FileInfo | None:
    try:
        st = smbclient.lstat(target, **kw)
    except SMBOSError as exc:
        if is_missing(exc):
            return None
        raise
    return _file_info(
        int(st.st_file_attributes),
        int(st.st_size),
        int(st.st_mtime_ns),
        int(st.st_atime_ns),
        int(st.st_ino),
    )


def _list_info(target: str, **kw: Any) -> list[tuple[str, FileInfo]]:
    with smbclient.scandir(target, **kw) as entries:
        out: list[tuple[str, FileInfo]] = []
        for e in entries:
            info = e.smb_info
            out.append(
                (
                    str(e.name),
                    _file_info(
                        int(info.file_attributes),
                        int(info.end_of_file),
                        _ns(info.last_write_time),
                        _ns(info.last_access_time),
                        int(info.file_id),
                    ),
                )
            )
        return out


def _open(target: str, mode: str, **kw: Any) -> Any:
    # Others may read meanwhile (a pod reading the volume being snapshotted).
    return smbclient.open_file(target, mode=mode, buffering=0, share_access="r", **kw)


def _read(handle: Any, size: int, **_kw: Any) -> bytes:
    """Up to ``size`` bytes in READs of one credit each (see ``_PIECE``)."""
    parts: list[bytes] = []
    left = size
    while left > 0:
        data = handle.read(min(left, _PIECE))
        if not data:
            break
        parts.append(bytes(data))
        left -= len(data)
    return b"".join(parts)


def _write(handle: Any, data: bytes, **_kw: Any) -> None:
    view = memoryview(data)
    while view:
        written = handle.write(view[:_PIECE])
        if not written:
            msg = "the server accepted no bytes"
            raise OSError(errno.EIO, msg)
        view = view[written:]


def _close(handle: Any, **_kw: Any) -> None:
    handle.close()


def _times(target: str, atime: int, mtime: int, attributes: int, **kw: Any) -> None:
    smbclient_os._set_basic_information(
        target,
        last_access_time=atime,
        last_write_time=mtime,
        file_attributes=attributes,
        follow_symlinks=False,
        **kw,
    )


def _copy(src: str, dst: str, **kw: Any) -> None:
    try:
        # FSCTL_SRV_COPYCHUNK: the server copies; no data crosses the wire.
        smbclient_os.copyfile(src, dst, **kw)
    except SMBOSError as exc:
        if ntstatus(exc) != Status.NOT_SUPPORTED:
            raise
        with (
            smbclient.open_file(src, mode="rb", share_access="r", **kw) as fin,
            smbclient.open_file(dst, mode="wb", **kw) as fout,
        ):
            smbclient_shutil.copyfileobj(fin, fout, IO_CHUNK)


def _capacity(target: str, **kw: Any) -> tuple[int, int]:
    result = smbclient.stat_volume(target, **kw)
    return int(result.total_size), int(result.caller_available_size)


MKDIR: Final = Step("mkdir", _mkdir)
ATTRIBUTES: Final = Step("attributes", _attributes)
LIST: Final = Step("list", _list)
SET_ATTRIBUTES: Final = Step("set-attributes", _set_attributes)
REMOVE: Final = Step("remove", _remove)
REMOVE_EMPTY: Final = Step("remove-empty", _remove_empty)
RENAME: Final = Step("rename", _rename)
LSTAT: Final = Step("lstat", _lstat)
LIST_INFO: Final = Step("list-info", _list_info)
OPEN: Final = Step("open", _open, handle="opens")
READ: Final = Step("read", _read)
WRITE: Final = Step("write", _write)
CLOSE: Final = Step("close", _close, handle="closes")
TIMES: Final = Step("times", _times)
COPY: Final = Step("copy", _copy)
CAPACITY: Final = Step("capacity", _capacity)

#: Every step by its name: what the worker process looks a name up in.
STEPS: Final[dict[str, Step[Any]]] = {
    step.name: step
    for step in (
        MKDIR,
        ATTRIBUTES,
        LIST,
        SET_ATTRIBUTES,
        REMOVE,
        REMOVE_EMPTY,
        RENAME,
        LSTAT,
        LIST_INFO,
        OPEN,
        READ,
        WRITE,
        CLOSE,
        TIMES,
        COPY,
        CAPACITY,
    )
}
