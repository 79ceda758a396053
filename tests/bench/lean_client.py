"""A lean gRPC client for the benchmarks: unary calls over HTTP/2 on a Unix socket.

Why not grpcio's client: on these machines a grpcio unary round trip costs
about 0.5 ms even against an empty server, most of it in the client's own
thread hand-offs, which is more than a raw NFSv3 mkdir on loopback.  A
benchmark that measures the driver must not be dominated by its instrument;
in a cluster the caller is csi-provisioner (Go).  This client writes the two
request frames itself and reads frames on one asyncio task, so its cost per
call is a few tens of microseconds.  The benchmarks report the grpcio client
too, so both views stay visible.

It speaks just enough HTTP/2 (RFC 9113) for gRPC unary calls with prior
knowledge (no TLS, no upgrade): SETTINGS and PING are acknowledged, flow
control is honoured on the send side and kept wide open on the receive side,
and response headers go through a real HPACK decoder (the server uses the
dynamic table and Huffman coding).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import unquote

import grpc
import hpack
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST, _SETTINGS, _PING, _GOAWAY, _WINDOW, _CONT = 0, 1, 3, 4, 6, 7, 8, 9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65_535
_MAX_FRAME = 16_384  # the server's default SETTINGS_MAX_FRAME_SIZE; we never ask for more


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", stream)
        + payload
    )


def _literal(name: bytes, value: bytes, name_index: int = 0) -> bytes:
    """One HPACK "literal without indexing" field: keeps no state in the server's table."""
    out = bytearray()
    if name_index:
        out += _int(name_index, 4, 0x00)
    else:
        out += b"\x00" + _int(len(name), 7, 0x00) + name
    return bytes(out + _int(len(value), 7, 0x00) + value)


def _int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


class LeanRpcError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass
class _Stream:
    done: asyncio.Future[None]
    data: bytearray = field(default_factory=bytearray)
    trailers: dict[str, str] = field(default_factory=dict)


class LeanChannel:
    """One HTTP/2 connection; any number of concurrent unary calls on it."""

    def __init__(self, path: str) -> None:
        self._path = path.removeprefix("unix://")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._decoder = hpack.Decoder()
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._send_window = (
            _DEFAULT_WINDOW  # the connection's; stream windows start at the server's setting
        )
        self._stream_initial = _DEFAULT_WINDOW
        self._window_open = asyncio.Event()
        self._failure: BaseException | None = None

    async def __aenter__(self) -> LeanChannel:
        self._reader, self._writer = await asyncio.open_unix_connection(self._path)
        settings = struct.pack(">HI", 0x2, 0) + struct.pack(">HI", 0x4, _MAX_WINDOW)
        self._writer.write(
            _PREFACE
            + _frame(_SETTINGS, 0, 0, settings)
            + _frame(_WINDOW, 0, 0, struct.pack(">I", _MAX_WINDOW - _DEFAULT_WINDOW))
        )
        self._task = asyncio.create_task(self._read_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            with contextlib.suppress(ConnectionError):
                self._writer.write(_frame(_GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._task

    async def unary(self, method: str, request: Message, response_type: type[M]) -> M:
        """Call ``/package.Service/Method``; raise LeanRpcError on a non-OK status."""
        if self._failure is not None:
            raise ConnectionError("the connection failed") from self._failure
        assert self._writer is not None
        body = request.SerializeToString()
        message = b"\x00" + struct.pack(">I", len(body)) + body
        if len(message) > self._stream_initial:
            raise ValueError("request larger than the server's stream window (not needed here)")
        while self._send_window < len(message):
            self._window_open.clear()
            await self._window_open.wait()
        self._send_window -= len(message)
        sid = self._next_id
        self._next_id += 2
        stream = _Stream(asyncio.get_running_loop().create_future())
        self._streams[sid] = stream
        block = (
            b"\x83\x86"  # :method POST, :scheme http (static table)
            + _literal(b"", method.encode(), name_index=4)  # :path
            + _literal(b"", b"localhost", name_index=1)  # :authority
            + _literal(b"", b"application/grpc", name_index=31)  # content-type
            + _literal(b"te", b"trailers")
        )
        frames = [_frame(_HEADERS, _END_HEADERS, sid, block)]
        for start in range(0, len(message), _MAX_FRAME):
            last = start + _MAX_FRAME >= len(message)
            frames.append(
                _frame(_DATA, _END_STREAM if last else 0, sid, message[start : start + _MAX_FRAME])
            )
        self._writer.write(b"".join(frames))
        try:
            await stream.done
        finally:
            self._streams.pop(sid, None)
        status = int(stream.trailers.get("grpc-status", "2"))
        if status != 0:
            raise LeanRpcError(
                _CODES.get(status, grpc.StatusCode.UNKNOWN),
                unquote(stream.trailers.get("grpc-message", "")),
            )
        data = bytes(stream.data)
        if len(data) < 5 or data[0] != 0:
            raise LeanRpcError(grpc.StatusCode.INTERNAL, "malformed or compressed response message")
        (length,) = struct.unpack(">I", data[1:5])
        return response_type.FromString(data[5 : 5 + length])

    # -- the reading side ------------------------------------------------------

    async def _read_loop(self) -> None:
        assert self._reader is not None
        assert self._writer is not None
        block = bytearray()
        block_stream, block_flags = 0, 0
        received = 0
        try:
            while True:
                head = await self._reader.readexactly(9)
                length = int.from_bytes(head[:3], "big")
                kind, flags = head[3], head[4]
                sid = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                payload = await self._reader.readexactly(length) if length else b""
                if kind in (_DATA, _HEADERS) and flags & _PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                if kind == _DATA:
                    received += length
                    if received > _MAX_WINDOW // 2:  # keep the receive window wide open
                        self._writer.write(_frame(_WINDOW, 0, 0, struct.pack(">I", received)))
                        received = 0
                    stream = self._streams.get(sid)
                    if stream is not None:
                        stream.data += payload
                        if flags & _END_STREAM:
                            self._finish(sid)
                elif kind in (_HEADERS, _CONT):
                    if kind == _HEADERS:
                        if flags & _PRIORITY:
                            payload = payload[5:]
                        block, block_stream, block_flags = bytearray(payload), sid, flags
                    else:
                        block += payload
                    if flags & _END_HEADERS:
                        headers = dict(
                            self._decoder.decode(bytes(block))
                        )  # always: the table is shared
                        stream = self._streams.get(block_stream)
                        if stream is not None and "grpc-status" in headers:
                            stream.trailers = headers
                        if block_flags & _END_STREAM:
                            self._finish(block_stream)
                elif kind == _SETTINGS and not flags & _ACK:
                    for i in range(0, len(payload), 6):
                        key, value = struct.unpack(">HI", payload[i : i + 6])
                        if key == 0x4:
                            self._stream_initial = value
                    self._writer.write(_frame(_SETTINGS, _ACK, 0))
                elif kind == _PING and not flags & _ACK:
                    self._writer.write(_frame(_PING, _ACK, 0, payload))
                elif kind == _WINDOW and sid == 0:
                    self._send_window += int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                    self._window_open.set()
                elif kind == _RST:
                    self._fail_stream(
                        sid, f"stream reset, HTTP/2 error {int.from_bytes(payload, 'big')}"
                    )
                elif kind == _GOAWAY:
                    raise ConnectionError("the server sent GOAWAY")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self._failure = exc
            for sid in list(self._streams):
                self._fail_stream(sid, f"connection lost: {exc}")

    def _finish(self, sid: int) -> None:
        stream = self._streams.get(sid)
        if stream is not None and not stream.done.done():
            stream.done.set_result(None)

    def _fail_stream(self, sid: int, why: str) -> None:
        stream = self._streams.get(sid)
        if stream is not None and not stream.done.done():
            stream.trailers = {"grpc-status": "14", "grpc-message": why}
            stream.done.set_result(None)


# grpc.StatusCode values are (number, name) tuples; index the codes by number.
_CODES = {code.value[0]: code for code in grpc.StatusCode}
