"""Secret stripping for anything that leaves the process as text.

A field is secret when the CSI spec marks it with the ``csi_secret`` option
(every ``secrets`` map), or when it is a map entry whose key looks like a
credential (``password``, ``token``...).  :func:`redact` renders a request for
a log line without those values; :func:`secret_values` collects them so that
error texts can be scrubbed by :func:`scrub` before they are returned or logged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from driver.csi import csi_pb2

REDACTED = "***"
_SECRET_KEY = re.compile(r"pass|secret|token|cred|krb5|ccache|keytab|private|apikey|api-key", re.I)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def _is_secret_field(fd: FieldDescriptor) -> bool:
    opts = fd.GetOptions()
    return bool(opts.HasExtension(csi_pb2.csi_secret) and opts.Extensions[csi_pb2.csi_secret])


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _scalar(fd: FieldDescriptor, value: Any) -> Any:
    if isinstance(value, Message):
        return redact(value)
    if fd.type == FieldDescriptor.TYPE_ENUM and fd.enum_type is not None:
        named = fd.enum_type.values_by_number.get(value)
        return named.name if named else value
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def redact(message: Message) -> dict[str, Any]:
    """A dict of the set fields of ``message`` with every secret replaced."""
    out: dict[str, Any] = {}
    for fd, value in message.ListFields():
        if _is_secret_field(fd):
            out[fd.name] = dict.fromkeys(value, REDACTED) if _is_map(fd) else REDACTED
        elif _is_map(fd):
            value_fd = fd.message_type.fields_by_name["value"]  # type: ignore[union-attr]
            out[fd.name] = {
                k: REDACTED if is_secret_key(str(k)) else _scalar(value_fd, v)
                for k, v in value.items()
            }
        elif fd.is_repeated:
            out[fd.name] = [_scalar(fd, v) for v in value]
        else:
            out[fd.name] = _scalar(fd, value)
    return out


def secret_values(message: Message) -> set[str]:
    """Every secret string carried by ``message`` (for scrubbing texts)."""
    return {v for v in _walk_secrets(message) if v}


def _walk_secrets(message: Message) -> Iterator[str]:
    for fd, value in message.ListFields():
        if _is_map(fd):
            secret = _is_secret_field(fd)
            for k, v in value.items():
                if isinstance(v, Message):
                    yield from _walk_secrets(v)
                elif secret or is_secret_key(str(k)):
                    yield str(v)
        elif _is_secret_field(fd) and isinstance(value, str):
            yield value
        elif fd.message_type is not None:
            for item in value if fd.is_repeated else [value]:
                yield from _walk_secrets(item)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of a secret in ``text`` (longest first)."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= 3:  # a 1-2 char "secret" would shred any message
            text = text.replace(secret, REDACTED)
    return text
