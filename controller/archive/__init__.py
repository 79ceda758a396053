"""Snapshot archives: a volume streamed into a tar.gz on the share and back.

``create`` writes one (:func:`create_archive`), ``extract`` reads one back
(:func:`extract_archive`), ``meta`` holds what the archive records besides
the bytes (the snapshot's facts in a PAX global header, each member's
attributes), and ``bridge`` lets the blocking ``tarfile``/``zlib`` thread
reach the share through the event loop.  Loaded on the first snapshot,
restore or clone only.
"""

from controller.archive.create import create_archive
from controller.archive.extract import extract_archive
from controller.archive.meta import (
    FORMAT_VERSION,
    META_PREFIX,
    created_ns,
    global_header,
    meta_for,
    read_meta,
)

__all__ = [
    "FORMAT_VERSION",
    "META_PREFIX",
    "create_archive",
    "created_ns",
    "extract_archive",
    "global_header",
    "meta_for",
    "read_meta",
]
