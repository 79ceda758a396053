"""Small helpers shared by the volume and snapshot halves of the controller."""

from __future__ import annotations

import asyncio
from typing import Any, Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from controller.backend import FileShareBackend
from driver.errors import DriverError, Internal
from driver.log import get_logger
from driver.source import Source

log = get_logger("controller")

Ctx = grpc.aio.ServicerContext[Any, Any]
#: Suffix of an archive being written.
PARTIAL_SUFFIX: Final = ".partial"


def lock_key(source: Source, directory: str) -> str:
    return f"{source.protocol}://{source.host_port}/{source.share.strip('/')}/{directory}"


def same_share(a: Source, b: Source) -> bool:
    return (a.protocol, a.host_port, a.share) == (b.protocol, b.host_port, b.share)


def timestamp(ns: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


async def cleanup(backend: FileShareBackend, path: str) -> None:
    """Remove what a failed job left (best effort; also when cancelled)."""
    try:
        await asyncio.shield(backend.remove_tree(path))
    except DriverError as exc:
        log.warning("could not remove a partial result", path=path, error=exc.message)
    except asyncio.CancelledError:
        log.warning("partial result left behind (cancelled)", path=path)


async def move_into_place(backend: FileShareBackend, work: str, final: str) -> None:
    """Rename a finished temporary ``work`` to ``final``; it must exist."""
    if not await backend.rename(work, final):
        raise Internal(f"{work!r} vanished before it could become {final!r}")
