"""What a snapshot archive records beside the bytes: its facts and each member's.

The archive starts with a PAX global header carrying the snapshot's facts
(``CSISMBNFS.*``: format version, source volume ID, name, creation time),
readable from the first compressed bytes alone (:func:`read_meta`).  Each
member keeps its mode, owner and nanosecond ``mtime``/``atime`` (PAX
records), so what the target protocol can keep is restored exactly:
:func:`tarinfo_for` writes them, :func:`member_info` reads them back.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Mapping
from typing import Final

from controller.share import FileInfo, FileKind, FileShareBackend
from controller.tree import Node
from driver.errors import FailedPrecondition

FORMAT_VERSION: Final = "1"
META_PREFIX: Final = "CSISMBNFS."
#: Compressed bytes read to find the archive's global header.
META_READ: Final = 64 << 10

#: The tar member types a volume may hold, as file kinds.
KINDS: Final[Mapping[bytes, FileKind]] = {
    tarfile.DIRTYPE: "dir",
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.SYMTYPE: "symlink",
}


def ns_text(ns: int) -> str:
    """Nanoseconds since the epoch as a PAX time (``seconds.nanoseconds``)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return f"{seconds}.{nanos:09d}"


def parse_ns(text: str | None) -> int | None:
    """A PAX time as nanoseconds; None when absent or malformed."""
    if not text:
        return None
    whole, _, frac = text.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        return None
    return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])


def tarinfo_for(node: Node, size: int) -> tarfile.TarInfo:
    """The tar header of a walked entry (``size``: the bytes that follow)."""
    info = node.info
    ti = tarfile.TarInfo(node.rel or ".")
    if info.kind == "dir":
        ti.type = tarfile.DIRTYPE
        default = 0o755
    elif info.kind == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = node.target or ""
        default = 0o777
    else:
        ti.type = tarfile.REGTYPE
        ti.size = size
        default = 0o444 if info.read_only else 0o644
    ti.mode = info.mode if info.mode is not None else default
    if info.uid is not None and info.gid is not None:
        ti.uid, ti.gid = info.uid, info.gid
    ti.uname = ti.gname = ""
    pax: dict[str, str] = {}
    if info.mtime_ns is not None and info.mtime_ns >= 0:
        ti.mtime = info.mtime_ns // 1_000_000_000
        pax["mtime"] = ns_text(info.mtime_ns)
    if info.atime_ns is not None and info.atime_ns >= 0:
        pax["atime"] = ns_text(info.atime_ns)
    ti.pax_headers = pax
    return ti


def member_info(member: tarfile.TarInfo, kind: FileKind) -> FileInfo:
    """The attributes to restore for ``member`` (the reverse of :func:`tarinfo_for`)."""
    mtime = parse_ns(member.pax_headers.get("mtime"))
    if mtime is None and member.mtime >= 0:
        mtime = int(member.mtime) * 1_000_000_000
    mode = member.mode & 0o7777
    return FileInfo(
        kind=kind,
        size=member.size if kind == "file" else 0,
        mtime_ns=mtime,
        atime_ns=parse_ns(member.pax_headers.get("atime")),
        mode=mode,
        uid=member.uid,
        gid=member.gid,
        read_only=kind == "file" and not mode & 0o200,
    )


async def read_meta(backend: FileShareBackend, archive: str) -> dict[str, str]:
    """The ``CSISMBNFS.*`` facts of an archive (keys without the prefix);
    reads only its first compressed bytes.  FailedPrecondition if it is not
    a gzip stream; ``{}`` for a tar.gz without them."""
    reader = await backend.open_read(archive, size_hint=META_READ)
    try:
        raw = b""
        while len(raw) < META_READ and (data := await reader.read(META_READ - len(raw))):
            raw += data
    finally:
        await reader.aclose()
    try:
        plain = zlib.decompressobj(wbits=31).decompress(raw, META_READ)
    except zlib.error as exc:
        raise FailedPrecondition(f"snapshot archive {archive!r} is damaged: {exc}") from None
    return {
        key[len(META_PREFIX) :]: value
        for key, value in global_header(plain).items()
        if key.startswith(META_PREFIX)
    }


def global_header(plain: bytes) -> dict[str, str]:
    """The records of a PAX global header at the start of ``plain`` (an
    uncompressed tar prefix); ``{}`` if there is none."""
    block = tarfile.BLOCKSIZE
    if len(plain) < block:
        return {}
    try:
        head = tarfile.TarInfo.frombuf(plain[:block], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return {}
    if head.type != tarfile.XGLTYPE:
        return {}
    body = plain[block : block + head.size]
    records: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        length_text, sep, _ = body[pos : pos + 20].partition(b" ")
        if not sep or not length_text.isdigit():
            break
        length = int(length_text)
        record = body[pos : pos + length]
        if length <= len(length_text) + 1 or len(record) != length or not record.endswith(b"\n"):
            break
        key, eq, value = record[len(length_text) + 1 : -1].partition(b"=")
        if not eq:
            break
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def meta_for(*, source_volume_id: str, name: str, created_ns: int) -> dict[str, str]:
    return {
        META_PREFIX + "format": FORMAT_VERSION,
        META_PREFIX + "source": source_volume_id,
        META_PREFIX + "name": name,
        META_PREFIX + "created": ns_text(created_ns),
    }


def created_ns(meta: Mapping[str, str]) -> int | None:
    return parse_ns(meta.get("created"))
